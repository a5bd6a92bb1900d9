"""Verdicts on a slow host, made slow on purpose: QEMU is stopped (SIGSTOP) two thirds
of the time and continued (SIGCONT) one third, so the guest runs about three times
slower than on a quiet machine. A slow healthy boot is never the expected hang; the two
boot hangs are still proven, by their evidence. And a QEMU killed from outside is never
the expected crash.

Each boots real VMs on the system's QEMU and OVMF (the builds the expectations name
are checked through the known-bugs table), one at a time.
"""
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from harness import scenario
from harness.qemu.throttle import STOP, Throttle
from harness.runner import run_scenario
from harness.session import Options, make_backend, resolve_target

pytestmark = pytest.mark.vm

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def run(scn, tmp_path, throttle=True, during=None):
    target = resolve_target(Options(accel="tcg"))
    backend = make_backend("qemu", target, "tcg")
    th = Throttle(backend) if throttle else None
    if th:
        th.start()
    if during:
        threading.Thread(target=during, args=(backend,), daemon=True).start()
    try:
        r = run_scenario(scn, backend, "tcg", run_dir=tmp_path, trace_path=tmp_path /
                         "trace.jsonl", qemu_version=target.qemu_version,
                         firmware_edk2=target.firmware_edk2)
    finally:
        if th:
            th.done()
    if th:
        print(f"\nQEMU stopped {th.stopped:.0f} of {th.total:.0f} s; {r.reason}")
        assert th.total > 0 and th.stopped >= 0.6 * th.total - STOP   # about 3x slower
    return r


def test_a_slow_healthy_boot_is_never_the_expected_hang(tmp_path):
    scn = scenario.load(SCENARIOS / "tseg-1m-ovmf-hang.yaml")
    healthy = replace(scn, machine=replace(scn.machine, tseg_mbytes=8))
    r = run(healthy, tmp_path)
    assert r.expectation.outcome == "hang"        # the expectation is the bug's
    assert r.outcome.kind != "hang", r.reason
    assert not r.met
    assert r.outcome.kind in ("pass", "error")
    if r.outcome.kind == "error":
        assert "still progressing" in r.reason


@pytest.mark.parametrize("name,evidence", [("tseg-1m-ovmf-hang", "reset-loop"),
                                           ("coldplug-sparse-boot-hang", "stall")])
def test_the_boot_hangs_are_proven_on_a_slow_host(tmp_path, name, evidence):
    scn = scenario.load(SCENARIOS / f"{name}.yaml")
    r = run(scn, tmp_path)
    assert r.expectation.bug, "these hangs are known bugs of the system's builds"
    assert r.met, r.reason
    assert r.outcome.signature["evidence"] == evidence
    assert "no progress" in r.outcome.message or "reset the machine" in \
        r.outcome.message


def test_a_qemu_killed_from_outside_is_not_the_expected_crash(tmp_path):
    """coldplug-unplug-reset expects QEMU 7.2 to die of its heap corruption (or pass on
    later builds): a SIGKILL from outside after boot is neither."""
    scn = scenario.load(SCENARIOS / "coldplug-unplug-reset.yaml")

    def kill_after_boot(backend):
        while not getattr(backend, "booted", False):
            time.sleep(0.05)
        os.kill(backend.vm.proc.pid, signal.SIGKILL)

    r = run(scn, tmp_path, throttle=False, during=kill_after_boot)
    assert r.outcome.kind == "crash"
    assert r.outcome.signal == "SIGKILL"
    assert not r.met, r.reason
