"""Agreement with iucode_tool (the oracle) on generated files.

Skipped (with a reason) when iucode_tool is not installed.
"""

import json
import random
import re

import pytest

from harness.microcode.amd import build_container, build_patch, conventional_equiv_id
from harness.microcode.cpio import build_early_cpio
from harness.microcode.intel import (
    EXT_HEADER_SIZE, HEADER_SIZE, build_update, parse_intel, recompute_checksums,
)
from harness.microcode.iucode import select_updates

from mc_helpers import get_u32, put_u32, run_cli

LINE = re.compile(r"^\s+(?:\d{3}/\d{3}:)?\s*sig (0x[0-9a-f]+), pf_mask (0x[0-9a-f]+), "
                  r"(\S+), rev (0x[0-9a-f]+)(?:, size (\d+))?", re.M)


def oracle_rows(text, with_size=True):
    rows = []
    for m in LINE.finditer(text):
        sig, pf, date, rev, size = m.groups()
        row = (int(sig, 16), int(pf, 16), int(rev, 16), date)
        rows.append(row + ((int(size),) if with_size else ()))
    return rows


def random_set(seed, n=24):
    """Updates with unique revisions (no oracle conflicts), mixed pf/ext/datasize-0."""
    rng = random.Random(seed)
    sigs = [0x906EA, 0x906EB, 0x806EC, 0x50654, 0x506E3, 0x6F2]
    revs = rng.sample(range(1, 0x7FFFFFFF), n)
    out = []
    for i in range(n):
        sig = rng.choice(sigs)
        pf = rng.choice([0x01, 0x02, 0x22, 0x87, 0xFF, 0x10])
        date = f"{rng.randint(2005, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        kind = rng.random()
        if kind < 0.15:
            raw = build_update(sig, pf, revs[i], date, datasize_zero=True)
        elif kind < 0.45:
            ext = [(rng.choice(sigs), rng.choice([0x01, 0x02, 0x80])) for _ in range(rng.randint(1, 4))]
            raw = build_update(sig, pf, revs[i], date, ext_sigs=ext, total_size=rng.choice([1024, 2048]))
        else:
            raw = build_update(sig, pf, revs[i], date, total_size=1024 * rng.randint(1, 4))
        out.append(raw)
    return out


@pytest.fixture(params=[1, 2, 3, 4, 5])
def generated(request, tmp_path):
    ups = random_set(request.param)
    paths = []
    for k in range(3):               # three files, one update stream split across them
        p = tmp_path / f"f{k}.bin"
        p.write_bytes(b"".join(ups[k::3]))
        paths.append(p)
    return paths


def test_list_json_matches_iucode_L(generated, iucode, capsys):
    assert run_cli("list", "--json", *generated) == 0
    ours = {(r["signature"], r["pf_mask"], r["revision"], r["date"])
            for r in json.loads(capsys.readouterr().out)}
    theirs = set(oracle_rows(iucode("-tb", "-L", *generated).stdout, with_size=False))
    assert ours == theirs and ours


def test_list_latest_matches_iucode_l(generated, iucode, capsys):
    assert run_cli("list", "--latest", "--json", *generated) == 0
    ours = [(r["signature"], r["pf_mask"], r["revision"], r["date"], r["size"])
            for r in json.loads(capsys.readouterr().out)]
    theirs = oracle_rows(iucode("-tb", "-l", *generated).stdout)
    assert ours == theirs and ours


def test_select_matches_iucode_filter(generated, iucode, capsys):
    """For a CPU with one platform bit, Linux's pick is the newest of what
    ``iucode_tool -s SIG`` keeps for that platform (all revisions here are positive; a
    pair iucode_tool drops is covered by a kept one with a revision at least as high)."""
    checked = 0
    for sig in (0x906EA, 0x906EB, 0x806EC, 0x50654, 0x506E3, 0x6F2, 0x12345):
        rows = oracle_rows(iucode("-tb", "-l", "-s", f"{sig:#x}", *generated).stdout)
        assert all(r[0] == sig for r in rows)
        for pid in range(8):
            revs = [r[2] for r in rows if r[1] & (1 << pid)]
            rc = run_cli("select", "--kernel", "6.7", "--json", "--signature", hex(sig), "--platform-id", pid, *generated)
            out = json.loads(capsys.readouterr().out)
            if not revs:
                assert rc == 1 and out == []
                continue
            assert rc == 0 and out[0]["revision"] == max(revs)
            checked += 1
    assert checked


def test_earlyfw_byte_identical(generated, iucode, tmp_path):
    ups = [u for p in generated for u in parse_intel(p.read_bytes()).updates]
    for filters in (None, ["0x906ea"], ["0x806ec,0x02", "0x6f2"]):
        args = [a for spec in (filters or []) for a in ("-s", spec)]
        ref = tmp_path / f"ref{len(args)}.cpio"
        iucode("-tb", *args, f"--write-earlyfw={ref}", *generated)
        sel = select_updates(ups, filters)
        assert not sel.conflicts
        if not sel.updates:
            continue
        ours = build_early_cpio(b"".join(u.raw for u in sel.updates))
        assert ours == ref.read_bytes()
        # and the -w bundle equals our packed GenuineIntel.bin
        w = tmp_path / f"w{len(args)}.bin"
        iucode("-tb", *args, "-w", w, *generated)
        assert w.read_bytes() == b"".join(u.raw for u in sel.updates)


def test_cli_pack_early_identical(generated, iucode, tmp_path):
    ref, ours = tmp_path / "ref.cpio", tmp_path / "ours.cpio"
    iucode("-tb", f"--write-earlyfw={ref}", *generated)
    assert run_cli("pack-early", "--out", ours, *generated) == 0
    assert ours.read_bytes() == ref.read_bytes()


def test_recovery_scan_of_combined_cpio(iucode, tmp_path):
    ups = random_set(9, n=8)
    intel = b"".join(u.raw for u in select_updates(parse_intel(b"".join(ups)).updates).updates)
    eid = conventional_equiv_id(0x00A00F11)
    amd = build_container([(0x00A00F11, eid)], [build_patch(0x0A0011D5, eid)])
    img = tmp_path / "early.cpio"
    img.write_bytes(build_early_cpio(intel, amd))
    theirs = sorted(oracle_rows(iucode("-tr", "-l", img).stdout))
    ours = sorted((s, p, u.revision, u.date, u.total_size)
                  for e in select_updates(parse_intel(intel).updates).entries
                  for u, s, p in [(e.update, e.cpuid, e.pfm)])
    assert theirs == ours


def _corruptions():
    base = build_update(0x906EA, 0x22, 0xF0, "2024-11-17", ext_sigs=[(0x906EB, 0x02)])
    t = HEADER_SIZE + get_u32(base, 28)
    return {
        "good": (base, True),
        "checksum": (put_u32(base, 16, get_u32(base, 16) + 1), False),
        "header-version": (recompute_checksums(put_u32(base, 0, 2)), False),
        # Linux requires loader revision 1; iucode_tool 2.3.1 does not check it
        "loader-revision": (recompute_checksums(put_u32(base, 20, 2)), False, True),
        "date": (build_update(0x906EA, 0x22, 0xF0, 0x13452024), False),
        "not-kib": (build_update(0x906EA, 0x22, 0xF0, total_size=1028), False),
        "ext-table-checksum": (put_u32(base, t + 8, 1), False),
        "ext-entry-checksum": (put_u32(put_u32(base, t + EXT_HEADER_SIZE + 8, get_u32(base, t + EXT_HEADER_SIZE + 8) + 1),
                                       t + 12, get_u32(base, t + 12) - 1), False),
        "truncated": (base[:-4], False),
        "trailing": (base + b"\0" * 16, False),
        "pf-reserved": (build_update(0x906EA, 0x122, 0xF0), True),
        "datasize0": (build_update(0x6F2, 0x20, 0x5C, datasize_zero=True), True),
        "reserved-words": (build_update(0x906EA, 0x22, 0xF0, reserved=(0x14, 0xEA, 7)), True),
    }


@pytest.mark.parametrize("name", list(_corruptions()))
def test_verdicts_agree(name, iucode, tmp_path):
    raw, valid, *oracle_valid = _corruptions()[name]
    oracle_valid = oracle_valid[0] if oracle_valid else valid
    p = tmp_path / name
    p.write_bytes(raw)
    res = parse_intel(raw)
    oracle = iucode("-tb", "-l", p, check=False)
    assert res.ok == valid
    assert (oracle.returncode == 0) == oracle_valid, oracle.stderr


def test_conflict_agrees(iucode, tmp_path):
    a = build_update(0x906EA, 0x22, 0xF0, seed=1)
    b = build_update(0x906EA, 0x22, 0xF0, seed=2)
    p = tmp_path / "dup"
    p.write_bytes(a + b)
    assert iucode("-tb", "-l", p, check=False).returncode != 0
    assert select_updates(parse_intel(a + b).updates).conflicts
