"""File hashes, cache locks and apt's error line are one implementation (harness/hostio.py)
for the named builds, the firmware identities and the guest image."""
import subprocess

from harness import builds, firmware, hostio
from harness.qemu.image import apt, build


def test_one_implementation_each():
    assert builds.sha256_file is firmware.sha256_file is hostio.sha256_file
    assert builds.last_line is apt.last_line is hostio.last_line
    assert build.exclusive_lock is builds._lock is hostio.exclusive_lock


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
