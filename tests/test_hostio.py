"""File hashes, cache locks and apt's error line are one implementation (harness/hostio.py)
for the named builds, the firmware identities and the guest image."""
import subprocess

import pytest

from harness import builds, firmware, hostio
from harness.qemu.image import apt, build


def test_one_implementation_each():
    assert builds.sha256_file is firmware.sha256_file is hostio.sha256_file
    assert builds.last_line is apt.last_line is hostio.last_line
    assert build.exclusive_lock is builds._lock is hostio.exclusive_lock
    from harness import source_build
    from harness.qemu.image import kernel
    assert source_build.run_logged is kernel.run_logged is hostio.run_logged


def test_last_line_skips_notices():
    proc = subprocess.CompletedProcess([], 100, "", "Reading lists\nbroken thing\nN: a notice\n")
    assert hostio.last_line(proc) == "broken thing"


def test_lock_creates_its_file(tmp_path):
    with hostio.exclusive_lock(tmp_path / "a" / ".lock"):
        assert (tmp_path / "a" / ".lock").exists()


def test_a_tool_that_cannot_run_is_one_line(tmp_path):
    import pytest
    from harness.errors import HarnessError
    with pytest.raises(HarnessError) as e:
        hostio.run_tool(["no-such-tool-here", "x"], 5, ": install it")
    assert str(e.value) == "no-such-tool-here not found: install it"
    with pytest.raises(HarnessError) as e:
        hostio.run_tool(["/bin/sleep", "5"], 0.2, "", log=tmp_path / "log")
    assert str(e.value) == f"sleep did not finish within 0 s (log: {tmp_path / 'log'})"
    assert hostio.run_tool(["true"], 5, "").returncode == 0


def test_run_logged_keeps_all_output_and_hands_each_line_on(tmp_path):
    from harness.hostio import run_logged
    log = tmp_path / "build.log"
    seen = []
    run_logged(["sh", "-c", "echo '[1/2] cc a.c'; echo '[2/2] ld x'"], tmp_path, None, log,
               seen.append, 30, "ninja")
    assert seen == [b"[1/2] cc a.c\n", b"[2/2] ld x\n"]
    assert log.read_text() == "[1/2] cc a.c\n[2/2] ld x\n"


def test_run_logged_failure_is_one_line_with_the_errors_and_the_log(tmp_path):
    from harness.errors import HarnessError
    from harness.hostio import run_logged
    log = tmp_path / "build.log"
    with pytest.raises(HarnessError) as e:
        run_logged(["sh", "-c", "echo 'a.c:1: error: boom'; echo done; exit 3"], tmp_path,
                   None, log, lambda raw: None, 30, "kernel: make")
    assert str(e.value) == (f"kernel: make failed (exit 3): a.c:1: error: boom "
                            f"(log: {log})")


def test_replace_dir_swaps_in_the_new_tree_and_drops_the_old(tmp_path):
    from harness.hostio import replace_dir
    out, stage = tmp_path / "image", tmp_path / ".stage"
    out.mkdir()
    (out / "old").write_text("old")
    stage.mkdir()
    (stage / "new").write_text("new")
    replace_dir(stage, out)
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image"]    # nothing left over
    fresh = tmp_path / ".stage2"
    fresh.mkdir()
    replace_dir(fresh, tmp_path / "first")           # no old tree: a plain rename
    assert (tmp_path / "first").is_dir() and not fresh.exists()
