"""The harness's ``microcode list`` against iucode_tool itself, line for line.

Two inputs: generated files (every option combination below, several files so group
numbers and ``--downgrade`` matter) and Debian's intel-microcode package, fetched once
through the package registry into the harness cache (``harness.microcode.corpus``).
Skipped only when iucode_tool is not installed (scripts/setup.sh installs it).
"""

import subprocess
import sys

import pytest

from harness.microcode.corpus import fetch_intel_corpus

from mc_helpers import IUCODE
from test_oracle import random_set

HARNESS = [sys.executable, "-m", "harness", "microcode", "list"]

pytestmark = pytest.mark.skipif(IUCODE is None, reason="iucode_tool is not installed "
                                "(Debian package iucode-tool; scripts/setup.sh installs it)")


def both(args, files):
    """(harness, iucode_tool) stdout and exit status; ``-L`` is the harness's default."""
    ours = subprocess.run(HARNESS + [a for a in args if a != "-L"] + [str(f) for f in files],
                          capture_output=True, text=True, timeout=120)
    theirs = subprocess.run([IUCODE, "-tb", *args, *map(str, files)], capture_output=True,
                            text=True, timeout=120)
    return ours, theirs


def assert_same(args, files):
    ours, theirs = both(args, files)
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.splitlines() == theirs.stdout.splitlines()
    return ours.stdout


CASES = [
    ["-L"], ["-l"], ["-l", "--downgrade"],
    ["-s", "0x906ea"], ["-s", "0x906ea,0x02"], ["-s", "!0x906ea"], ["-s", "!"],
    ["-s", "!", "-s", "0x806ec"], ["-s", "0x906ea", "-s", "!0x906ea,0x20"],
    ["-s", "!0x906eb", "-s", "0x906eb,0x22"], ["-s", "0x906ea,,gt:0x40000000"],
    ["-s", "0x50654,,lt:0x40000000", "-s", "0x6f2,0x80"], ["-s", "0x906eb,0x01,eq:0x3ad1d6da"],
    ["--date-after=2015-01-01"], ["--date-before=2016-06-30"],
    ["--date-after=2010-01-01", "--date-before=2020-01-01"],
    ["--date-after=2015-01-01", "--loose-date-filtering"],
    ["--date-before=2012-01-01", "--loose-date-filtering", "-s", "!0x506e3"],
    ["--date-after=2018-01-01", "--loose-date-filtering", "--downgrade"],
]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    files = []
    for seed in (100, 104):
        ups = random_set(seed, n=30)
        for k in range(3):
            p = d / f"s{seed}_{k}.bin"
            p.write_bytes(b"".join(ups[k::3]))
            files.append(p)
    return files


@pytest.mark.parametrize("args", CASES, ids=" ".join)
def test_generated_files_line_for_line(generated, args):
    for files in (generated[:3], generated[3:]):
        a = args if args[0] in ("-L", "-l") else ["-l", *args]
        assert_same(a, files)


def test_write_to_identical_to_iucode_w(generated, tmp_path):
    for args in ([], ["-s", "0x906ea"], ["--date-after=2015-01-01"], ["--downgrade"]):
        ours, theirs = tmp_path / "ours.bin", tmp_path / "theirs.bin"
        for p in (ours, theirs):
            p.unlink(missing_ok=True)
        subprocess.run(HARNESS + args + ["-w", str(ours), *map(str, generated[:3])], check=True,
                       capture_output=True)
        subprocess.run([IUCODE, "-tb", *args, "-w", str(theirs), *map(str, generated[:3])],
                       check=True, capture_output=True)
        assert ours.read_bytes() == theirs.read_bytes()


def test_scan_system_is_iucode_fast_scan(generated):
    """-S for a given CPU = iucode_tool's fast scan: every stepping of its family/model;
    with pf and revision, narrowed like -s SIG,PF,gt:REV for each stepping."""
    ours = subprocess.run(HARNESS + ["--scan-system=0x906eb", *map(str, generated[:3])],
                          capture_output=True, text=True, check=True).stdout
    steps = [a for s in range(0x906E0, 0x906F0) for a in ("-s", hex(s))]
    assert ours == subprocess.run([IUCODE, "-tb", "-l", *steps, *map(str, generated[:3])],
                                  capture_output=True, text=True, check=True).stdout
    ours = subprocess.run(HARNESS + ["-S", "0x906eb,0x02,0x30000000", *map(str, generated[:3])],
                          capture_output=True, text=True, check=True).stdout
    steps = [a for s in range(0x906E0, 0x906F0) for a in ("-s", f"{s:#x},0x02,gt:0x30000000")]
    assert ours == subprocess.run([IUCODE, "-tb", "-l", *steps, *map(str, generated[:3])],
                                  capture_output=True, text=True, check=True).stdout


# --- Debian's intel-microcode --------------------------------------------------------

@pytest.fixture(scope="module")
def debian():
    """The package's intel-ucode files, sorted (iucode_tool numbers bundles in the
    order given; a directory's order would be readdir's)."""
    return sorted(p for p in fetch_intel_corpus().iterdir() if p.is_file())


DEBIAN_CASES = [
    ["-L"], ["-l"],
    ["-s", "0x906ea"], ["-s", "0x806f8,0x10"], ["-s", "!0x906ea"], ["-s", "!", "-s", "0x50657"],
    ["-s", "0x806f6,,gt:0x2b000000"], ["-s", "0x806f6,0x10,lt:0x2c000411"],
    ["-S", "0x806f6"],
    ["-s", "0x806f8", "-s", "!0x806f8,0x10"],
    ["--date-after=2023-01-01"], ["--date-before=2020-01-01"],
    ["--date-after=2019-01-01", "--date-before=2022-01-01"],
    ["--date-before=2020-01-01", "--loose-date-filtering"],
    ["--date-after=2024-06-01", "--loose-date-filtering", "-s", "!0x806f8"],
]


def scan_as_select(args):
    """iucode_tool's -S scans the host: for the oracle, spell a given CPU's scan as -s."""
    if args[0] != "-S":
        return args
    sig = int(args[1], 16)
    return [a for s in range(sig & ~0xF, (sig & ~0xF) + 16) for a in ("-s", hex(s))]


@pytest.mark.parametrize("args", DEBIAN_CASES, ids=" ".join)
def test_debian_corpus_line_for_line(debian, args):
    a = args if args[0] in ("-L", "-l") else ["-l", *args]
    if args[0] == "-S":
        ours = subprocess.run(HARNESS + args + [str(f) for f in debian], capture_output=True,
                              text=True, check=True).stdout
        theirs = subprocess.run([IUCODE, "-l", *scan_as_select(args), *map(str, debian)],
                                capture_output=True, text=True, check=True).stdout
        assert ours.splitlines() == theirs.splitlines() and "sig 0x" in ours
        return
    out = assert_same(a, debian)
    assert "sig 0x" in out or args[:2] == ["-s", "!"]


def test_debian_corpus_bundle_identical(debian, tmp_path):
    ours, theirs = tmp_path / "ours.bin", tmp_path / "theirs.bin"
    subprocess.run(HARNESS + ["-w", str(ours), *map(str, debian)], check=True, capture_output=True)
    subprocess.run([IUCODE, "-w", str(theirs), *map(str, debian)], check=True, capture_output=True)
    assert ours.read_bytes() == theirs.read_bytes()


def test_debian_concatenation_mapped(debian, tmp_path):
    """The 21 MB concatenation (parsed in place through a map) lists and writes alike."""
    from harness.microcode.corpus import CONCATENATED
    blob = debian[0].parent.parent.parent.parent / CONCATENATED
    assert blob.stat().st_size > (1 << 20)
    assert_same(["-L"], [blob])
    assert_same(["-l", "-s", "!0x806f8"], [blob])
    ours, theirs = tmp_path / "ours.bin", tmp_path / "theirs.bin"
    subprocess.run(HARNESS + ["-w", str(ours), str(blob)], check=True, capture_output=True)
    subprocess.run([IUCODE, "-w", str(theirs), str(blob)], check=True, capture_output=True)
    assert ours.read_bytes() == theirs.read_bytes()
