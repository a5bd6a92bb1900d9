"""HMP ``info registers -a`` parser: committed real captures and a live VM (``vm``)."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness.qemu.hmp_diag import info_registers, parse_info_registers, summary
from harness.qemu.process import spawn

DATA = Path(__file__).resolve().parents[1] / "data"
QEMU = shutil.which("qemu-system-x86_64")
OVMF_SMM_CODE = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


def test_fixture_reset_state_32bit_layout():
    # QEMU 7.2, -S, 2 boot CPUs + 1 cold-plugged: all at the reset vector
    cpus = parse_info_registers((DATA / "info_registers_reset_3cpu.txt").read_text())
    assert [c["index"] for c in cpus] == [0, 1, 2]
    for c in cpus:
        assert c["cs"] == 0xF000 and c["cs_base"] == 0xFFFF0000 and c["eip"] == 0xFFF0
        assert c["in_smm"] is False and c["long_mode"] is False
        assert c["regs"]["efl"] == 2 and c["regs"]["cr0"] == 0x60000010
    # the BSP runs, the APs wait for INIT-SIPI halted
    assert [c["halted"] for c in cpus] == [False, True, True]
    assert cpus[2]["regs"]["edx"] == 0x00060FB1      # CPUID signature at reset


def test_fixture_in_smm_64bit_layout():
    cpus = parse_info_registers((DATA / "info_registers_in_smm_3cpu.txt").read_text())
    assert [c["index"] for c in cpus] == [0, 1, 2]
    assert all(c["in_smm"] and not c["halted"] and c["long_mode"] for c in cpus)
    assert cpus[0]["cs"] == 0x38 and cpus[0]["eip"] == 0x1FFD79E5
    assert cpus[1]["eip"] == cpus[2]["eip"] == 0x1FFD4F21
    assert cpus[0]["regs"]["rbx"] == 0x38 and cpus[0]["regs"]["r8"] is not None
    assert "cpu0 SMM=1 HLT=0 CS:IP=0038:1ffd79e5" in summary(cpus)


def test_parse_small_text_and_edge_cases():
    text = (
        "CPU#0\n"
        "EAX=00000000 EBX=00000000 ECX=00000000 EDX=00000000\n"
        "EIP=0000000c EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1\n"
        "CS =9f00 0009f000 0000ffff 00009b00\n"
        "FCW=037f FSW=0000 [ST=0] FTW=00 MXCSR=00001f80\n"
        "CPU#3\n"
        "RIP=000000001ffd79e5 RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=1 HLT=0\n"
        "R8 =00000000000000af\n"
        "CS =0038 0000000000000000 ffffffff 00af9a00 DPL=0 CS64 [-R-]\n"
        "GDT=     000000001e5e0000 00000047\n"
    )
    a, b = parse_info_registers(text)
    assert (a["index"], a["cs"], a["eip"], a["halted"], a["in_smm"]) == (0, 0x9F00, 0xC, True, False)
    assert "st" not in a["regs"] and a["regs"]["fcw"] == 0x37F
    assert (b["index"], b["cs"], b["eip"], b["in_smm"], b["halted"]) == (3, 0x38, 0x1FFD79E5, True, False)
    assert b["regs"]["r8"] == 0xAF and b["regs"]["gdt_base"] == 0x1E5E0000
    assert b["regs"]["cs_dpl"] == 0
    assert parse_info_registers("") == []
    # one CPU without a CPU# header (plain `info registers` of older QEMU)
    (only,) = parse_info_registers(text.split("CPU#3\n")[1])
    assert only["index"] == 0 and only["in_smm"]


@pytest.mark.vm
@pytest.mark.skipif(not (QEMU and os.path.exists(OVMF_SMM_CODE)), reason="no QEMU/OVMF")
def test_live_info_registers(tmp_path):
    from qemu.qmp.legacy import QEMUMonitorProtocol
    vars_fd = tmp_path / "vars.fd"
    shutil.copyfile(OVMF_VARS, vars_fd)
    sock = tmp_path / "qmp.sock"
    log = open(tmp_path / "qemu.log", "wb")
    proc = spawn(
        [QEMU, "-machine", "q35,smm=on", "-accel", "tcg",
         "-global", "driver=cfi.pflash01,property=secure,value=on",
         "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_SMM_CODE}",
         "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}",
         "-cpu", "qemu64", "-smp", "2,maxcpus=4", "-m", "512", "-vga", "none",
         "-display", "none", "-serial", "none", "-net", "none", "-no-reboot",
         "-qmp", f"unix:{sock},server=on,wait=off"],
        stdout=log, stderr=subprocess.STDOUT)
    qmp = None
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert proc.poll() is None, (tmp_path / "qemu.log").read_text()
            assert time.monotonic() < deadline, "no QMP socket"
            time.sleep(0.1)
        qmp = QEMUMonitorProtocol(str(sock))
        qmp.connect()
        qmp.settimeout(30)
        cpus = info_registers(qmp)                 # right at start: reset state or early SEC
        assert [c["index"] for c in cpus] == [0, 1]
        assert all(c["cs"] is not None and c["eip"] is not None for c in cpus)
        # OVMF reaches DXE (both CPUs in long mode, the AP parked halted)
        deadline = time.monotonic() + 90
        while True:
            cpus = info_registers(qmp)
            if all(c["long_mode"] for c in cpus) and cpus[1]["halted"] and not any(
                    c["in_smm"] for c in cpus):
                break
            assert time.monotonic() < deadline, summary(cpus)
            time.sleep(0.5)
        assert cpus[1]["cs"] == 0x38 and cpus[1]["regs"]["cr0"] & 0x80000001 == 0x80000001
        assert all(c["a20"] == 1 and c["cpl"] == 0 for c in cpus)
    finally:
        if qmp is not None:
            try:
                qmp.close()
            except Exception:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        log.close()
