"""The ``microcode`` subcommand through a tiny argparse driver."""

import json

import pytest

from harness.microcode.cpio import INTEL_PATH, find_cpio_data
from harness.microcode.intel import build_update, parse_intel

from mc_helpers import run_cli


@pytest.fixture
def files(tmp_path):
    a = build_update(0x906EA, 0x22, 0xF0, "2024-11-17")
    b = build_update(0x906EA, 0x02, 0xF4, "2024-12-01", ext_sigs=[(0x906EB, 0x02)])
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "06-9e-0a").write_bytes(a + b)
    (tmp_path / "d" / ".hidden").write_bytes(b"junk")
    (tmp_path / "bad.bin").write_bytes(a[:-4] + b"\0\0\0\1")
    return tmp_path, a, b


def test_list_json(files, capsys):
    tmp, a, b = files
    assert run_cli("list", "--json", tmp / "d") == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(set(r) == {"signature", "pf_mask", "revision", "date", "size", "file"} for r in rows)
    got = {(r["signature"], r["pf_mask"], r["revision"], r["date"], r["size"]) for r in rows}
    want = {(s, p, u.revision, u.date, u.total_size)
            for u in parse_intel(a + b).updates for s, p in u.signatures}
    assert got == want and len(rows) == 3
    assert {r["file"] for r in rows} == {str(tmp / "d" / "06-9e-0a")}


def test_list_text_and_damaged_file(files, capsys):
    tmp, a, b = files
    assert run_cli("list", tmp / "bad.bin") == 1
    err = capsys.readouterr().err
    assert "checksum" in err and "offset 0x10" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ("list", "/nonexistent/x"),
    ("select", "--signature", "0xzz", "/dev/null"),
    ("select", "--signature", "0x906ea", "--platform-id", "9", "PLACEHOLDER"),
    ("find", "/nonexistent/img", INTEL_PATH),
])
def test_bad_input_exit_2_one_line(files, capsys, argv):
    tmp, _, _ = files
    argv = [str(tmp / "d") if x == "PLACEHOLDER" else x for x in argv]
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("microcode: ")


def test_select(files, capsys):
    tmp, a, b = files
    assert run_cli("select", "--signature", "0x906ea", "--platform-id", "1", "--json", tmp / "d") == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["revision"] == parse_intel(b).updates[0].revision
    assert run_cli("select", "--signature", "0x906ea", "--platform-id", "5", "--json", tmp / "d") == 0
    assert json.loads(capsys.readouterr().out)[0]["revision"] == parse_intel(a).updates[0].revision
    assert run_cli("select", "--signature", "0x906ea", "--platform-id", "1",
                   "--revision", "0xf4", tmp / "d") == 1


def test_pack_early_and_find(files, capsys, tmp_path):
    tmp, a, b = files
    out = tmp_path / "early.cpio"
    assert run_cli("pack-early", "--out", out, "--signature", "0x906ea,0x20", tmp / "d") == 0
    hit = find_cpio_data(out.read_bytes(), INTEL_PATH)
    assert [u.raw for u in parse_intel(hit.data).updates] == [a]
    assert run_cli("pack-early", "--out", out, tmp / "d") == 2          # no overwrite
    assert run_cli("pack-early", "--overwrite", "--out", out, tmp / "d") == 0
    capsys.readouterr()
    assert run_cli("find", out, INTEL_PATH) == 0
    text = capsys.readouterr().out
    assert f"size {len(find_cpio_data(out.read_bytes(), INTEL_PATH).data)}" in text
    assert run_cli("find", out, "kernel/x86/microcode/AuthenticAMD.bin") == 1


def test_microcode_without_subcommand(capsys):
    assert run_cli() == 2


def test_select_kernel_generations(tmp_path, capsys):
    """6.1's scan_microcode keeps the extended-table-only pick (rev 5), 6.7+ loads 7."""
    a = build_update(0x906EB, 0x02, 5, ext_sigs=[(0x906EB, 0x02), (0x906EA, 0x02)])
    b = build_update(0x906EA, 0x02, 7)
    f = tmp_path / "blob"
    f.write_bytes(a + b)
    for kernel, want in (("6.1", 5), ("6.7", 7)):
        assert run_cli("select", "--kernel", kernel, "--signature", "0x906ea",
                       "--platform-id", "1", "--json", f) == 0
        assert json.loads(capsys.readouterr().out)[0]["revision"] == want


def test_select_late_min_req_ver(tmp_path, capsys):
    f = tmp_path / "blob"
    f.write_bytes(build_update(0x906EA, 0x02, 0x20, reserved=(0, 0x10, 0)))
    base = ("select", "--late", "--kernel", "6.7", "--signature", "0x906ea", "--platform-id", "1",
            "--revision", "0x8", "--json", f)
    assert run_cli(*base) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)[0]["minrev_safe"] is False and "min_req_ver 0x10" in out.err
    assert run_cli(*base[:-2], "--force-minrev", "--json", f) == 1
    assert json.loads(capsys.readouterr().out) == []
    assert run_cli(*base[:-3], "0x10", "--force-minrev", "--json", f) == 0
    assert json.loads(capsys.readouterr().out)[0]["minrev_safe"] is True


def _dir_names(d):
    return sorted(p.name for p in d.iterdir())


def test_pack_early_writes_nothing_from_damaged_input(files, tmp_path, capsys):
    tmp, a, b = files
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "early.cpio"
    assert run_cli("pack-early", "--out", out, tmp / "d", tmp / "bad.bin") == 1
    assert _dir_names(out_dir) == []                         # no file, no temporary left
    assert "not written" in capsys.readouterr().err
    assert run_cli("pack-early", "--ignore-broken", "--out", out, tmp / "d", tmp / "bad.bin") == 0
    assert _dir_names(out_dir) == ["early.cpio"]


def test_write_to_all_or_nothing_and_overwrite(files, tmp_path, capsys):
    tmp, a, b = files
    out = tmp_path / "bundle.bin"
    assert run_cli("list", "-w", out, tmp / "bad.bin") == 1 and not out.exists()
    assert run_cli("list", "-w", out, "-s", "0x906ea,0x20", tmp / "d") == 0
    assert out.read_bytes() == a
    assert run_cli("list", "-w", out, tmp / "d") == 2                  # exists
    assert out.read_bytes() == a
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    assert run_cli("list", "-w", link, "--overwrite", "-s", "0x906eb", tmp / "d") == 0
    assert not link.is_symlink() and link.read_bytes() == b and target.read_bytes() == b"keep"
    capsys.readouterr()


def test_conflict_aborts_unless_loose_checks(tmp_path, capsys):
    f = tmp_path / "dup"
    f.write_bytes(build_update(0x906EA, 0x22, 0xF0, seed=1) + build_update(0x906EA, 0x22, 0xF0, seed=2))
    out = tmp_path / "x.bin"
    assert run_cli("list", "-w", out, f) == 1 and not out.exists()
    assert "different contents" in capsys.readouterr().err
    assert run_cli("list", "--no-strict-checks", "-w", out, f) == 0 and out.exists()


@pytest.mark.parametrize("argv, word", [
    (("list", "-s", "0x906ea,"), "-s"),
    (("list", "-s", "0x906ea,,zz:1"), "-s"),
    (("list", "--date-before", "2024-13"), "--date-before"),
    (("list", "-S", "0x906ea,1,2,3"), "--scan-system"),
    (("pack-early", "--out", "PLACEHOLDER", "-s", "bogus"), "-s"),
])
def test_bad_selection_options_one_line(files, tmp_path, capsys, argv, word):
    tmp, _, _ = files
    argv = [str(tmp_path / "o") if x == "PLACEHOLDER" else x for x in argv]
    assert run_cli(*argv, tmp / "d") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("microcode: ") and word in err[0]


def test_cli_constants_are_the_modules():
    from harness.microcode import amd, cli, select
    assert (cli.INTEL, cli.AMD, cli.AMD_MAGIC) == (select.INTEL, select.AMD, amd.CONTAINER_MAGIC_BYTES)


def test_microcode_command_imports_only_microcode_modules():
    """python -m harness microcode list: no scenario, QEMU, model or dataclasses import."""
    import subprocess
    import sys
    code = ("import sys, runpy; sys.argv = ['harness', 'microcode', 'list', '/dev/null']\n"
            "try:\n    runpy.run_module('harness', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)))")
    mods = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split()
    ours = [m for m in mods if m.startswith("harness")]
    assert all(m.startswith("harness.microcode") or m in ("harness", "harness.__main__")
               for m in ours), ours
    for heavy in ("dataclasses", "harness.cli", "yaml", "harness.microcode.amd", "datetime"):
        assert heavy not in mods
