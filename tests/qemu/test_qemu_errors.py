"""The real backend with bad input and interruptions: one clear error line, no QEMU left.

These boot (or try to boot) real QEMU; the behaviour checks of booted machines are the
scenarios in scenarios/, which the test command runs on QEMU and on the model.
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.vm


def harness(*args, env=None, timeout=120):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=timeout)


def qemu_pids(marker):
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*{marker}"], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def one_error_line(r):
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_wrong_qemu_path(tmp_path):
    r = harness("probe", "--qemu", "/nonexistent/qemu", "--run-dir", str(tmp_path))
    assert one_error_line(r) == ("error: --qemu /nonexistent/qemu: not a QEMU binary "
                                 "(no such file)")


def test_missing_firmware_file(tmp_path):
    r = harness("probe", "--ovmf-code", "/nonexistent/OVMF_CODE.fd", "--run-dir",
                str(tmp_path))
    assert one_error_line(r) == "error: firmware code file not found: /nonexistent/OVMF_CODE.fd"


def test_bad_topology(tmp_path):
    r = harness("probe", "--smp", "4", "--maxcpus", "2", "--run-dir", str(tmp_path))
    assert one_error_line(r) == "error: --smp 4 + --coldplug 0 exceeds --maxcpus 2"


def test_qemu_refusing_to_start_gives_its_message(tmp_path):
    r = harness("probe", "--smp", "1", "--cpu", "no-such-model", "--run-dir", str(tmp_path))
    line = one_error_line(r)
    assert line.startswith("error: qemu-system-x86_64: unable to find CPU model "), line
    assert "no-such-model" in line
    assert (tmp_path / "qemu-stderr.log").read_text().strip().endswith(line[len("error: "):])
    assert not qemu_pids(tmp_path)


def test_guest_that_never_boots_is_a_bounded_hang(tmp_path):
    # firmware made of zeros: the CPU never reaches the guest agent
    code = tmp_path / "ZERO_CODE.fd"
    code.write_bytes(bytes(4 << 20))
    varsf = tmp_path / "ZERO_VARS.fd"
    varsf.write_bytes(bytes(540672))
    t0 = time.monotonic()
    r = harness("probe", "--smp", "1", "--ovmf-code", str(code), "--ovmf-vars", str(varsf),
                "--run-dir", str(tmp_path / "run"),
                env={"SMM_HARNESS_BOOT_TIMEOUT": "8"})
    assert time.monotonic() - t0 < 60
    line = one_error_line(r)
    # bounded either way: a hang where the samples prove one, else (a flash of zeros gives
    # the evidence monitor nothing to hold on to) "still progressing", never a clock's hang
    assert re.match(r"error: (hang|still progressing at the deadline): guest did not boot "
                    r"to its agent within 8 s", line), line
    if line.startswith("error: hang"):
        diag = tmp_path / "run" / "hang" / "diagnosis.json"
        assert diag.exists() and (tmp_path / "run" / "hang" / "info-registers.txt").exists()
    assert not qemu_pids(tmp_path)


def _start_then_signal(argv, trace_dir, sig):
    """Start a harness run, send ``sig`` once its QEMU runs; (rc, stdout, stderr)."""
    # As from a terminal: a CI runner that starts jobs in the background hands them
    # SIGINT ignored (POSIX shells do that for `&`), and Python then keeps it ignored.
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    trace = trace_dir / "boot-2-of-4-qemu-tcg" / "trace.jsonl"
    # bounded, but generous: under `-n 2` the other worker boots VMs on the same 2 cores
    deadline = time.monotonic() + 180
    while not (trace.exists() and qemu_pids(trace_dir)) and time.monotonic() < deadline:
        if p.poll() is not None:
            break
        time.sleep(0.1)
    if not qemu_pids(trace_dir):
        p.kill()
        out, err = p.communicate(timeout=30)
        raise AssertionError(f"QEMU did not start (harness rc {p.returncode}): "
                             f"{out[-800:]} {err[-500:]}")
    time.sleep(1.0)
    p.send_signal(sig)
    out, err = p.communicate(timeout=30)
    return p.returncode, out, err


def _assert_interrupted_trace_kept(trace_dir):
    assert not qemu_pids(trace_dir)
    run = trace_dir / "boot-2-of-4-qemu-tcg"
    lines = (run / "trace.jsonl").read_text().splitlines()
    assert '"type": "header"' in lines[0]
    assert '"type": "end"' in lines[-1] and "run interrupted" in lines[-1]
    assert (run / "qmp.log").exists() and (run / "console.log").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killed_run_leaves_no_qemu_and_keeps_its_trace(tmp_path, sig):
    trace_dir = tmp_path / "traces"
    rc, out, err = _start_then_signal(
        [sys.executable, "-m", "harness", "run", "scenarios/boot-2-of-4.yaml",
         "--accel", "tcg", "--trace-dir", str(trace_dir)], trace_dir, sig)
    assert rc == 130, (out, err)
    assert "Traceback" not in err
    _assert_interrupted_trace_kept(trace_dir)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killed_pytest_run_leaves_no_qemu_and_keeps_its_trace(tmp_path, sig):
    trace_dir = tmp_path / "traces"
    rc, out, err = _start_then_signal(
        [sys.executable, "-m", "pytest", "scenarios/boot-2-of-4.yaml", "--backend", "qemu",
         "--accel", "tcg", "--trace-dir", str(trace_dir), "-p", "no:cacheprovider", "-p", "no:xdist", "-q"],
        trace_dir, sig)
    assert rc == pytest.ExitCode.INTERRUPTED, (out, err)
    assert re.search(r"!{5} (KeyboardInterrupt|harness.qemu.process.Terminated: "
                     r"terminated by signal 15) !{5}", out), out
    _assert_interrupted_trace_kept(trace_dir)


def test_qemu_killed_under_the_harness_is_an_error_not_a_hang(tmp_path):
    from harness.machine import MachineConfig
    from harness.qemu.backend import QemuBackend
    from harness.errors import QemuError
    b = QemuBackend()
    try:
        b.start(MachineConfig(cpus=1, maxcpus=1), tmp_path, paused=True)
        b.vm.proc.kill()
        b.vm.proc.wait(10)
        with pytest.raises(QemuError, match="QEMU (exited|killed by SIGKILL)"):
            b.wait(0.1)
    finally:
        b.close()
    assert not qemu_pids(tmp_path)


def test_long_run_directory_still_gets_qmp_and_console(tmp_path):
    """UNIX socket paths are limited to 108 bytes; run directories are not."""
    from harness import firmware
    from harness.machine import MachineConfig
    from harness.qemu import process
    from harness.qemu.vm import QemuVM
    run_dir = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(run_dir / "qmp.sock")) > 108
    profile, images = firmware.resolve("ovmf-smm")
    vm = QemuVM(binary=process.resolve_binary(), machine=MachineConfig(), firmware=images,
                profile=profile, run_dir=run_dir, accel="tcg")
    try:
        vm.launch()
        assert vm.qmp.cmd("query-status")["status"] == "prelaunch"
        assert vm.console is not None
        sock_dir = vm.sock_dir
    finally:
        vm.shutdown()
    assert not sock_dir.exists()
    assert (run_dir / "qmp.log").exists() and not qemu_pids(run_dir)
