"""Where the boot-to-shell time goes: sample the boot CPU's state over HMP every 50 ms
from `cont` until the guest agent answers, and sum the samples by phase.

Phases, from what one ``info registers`` shows of CPU 0:
- ``sec_pei``: 32-bit flat code (OVMF SEC and PEI, including the LZMA decompression of
  the DXE firmware volume);
- ``smm``: SMM (OVMF's SMM setup, relocation, every variable-service SMI);
- ``dxe_bds_efistub``: 64-bit, identity-mapped, not SMM: OVMF DXE and BDS, the kernel's
  EFI stub and its decompressor (Debian's kernel is XZ: its dictionary-copy loop is where
  most samples of this phase land), which keep the firmware's GDT and page tables;
- ``linux``: RIP in the kernel's upper half or CPL 3 (kernel init, /init, the agent).

The sampling stops the vCPUs briefly (a few ms per sample), so the total is a little
higher than ``boot_to_shell_s`` of the boot section.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

SAMPLE_EVERY = 0.05
KERNEL_HALF = 0xFFFF_8000_0000_0000


def classify(cpu) -> str:
    if cpu["in_smm"]:
        return "smm"
    if not cpu["long_mode"]:
        return "sec_pei"
    if (cpu["eip"] or 0) >= KERNEL_HALF or cpu["cpl"] == 3:
        return "linux"
    return "dxe_bds_efistub"


def one_boot(deadline_s=60.0):
    from harness.machine import MachineConfig
    from harness.qemu.agent import GuestAgent
    from harness.qemu.backend import QemuBackend
    from harness.qemu.hmp_diag import parse_info_registers
    b = QemuBackend()
    phases = {"sec_pei": 0, "smm": 0, "dxe_bds_efistub": 0, "linux": 0}
    first = {}
    with tempfile.TemporaryDirectory() as d:
        try:
            b.start(MachineConfig(cpus=2, maxcpus=4), Path(d), paused=True)
            agent = GuestAgent(b.vm.console)
            t0 = time.monotonic()
            b.vm.qmp.cmd("cont")
            while time.monotonic() - t0 < deadline_s:
                cpu = parse_info_registers(b.vm.qmp.hmp("info registers"))[0]
                phase = classify(cpu)
                phases[phase] += 1
                first.setdefault(phase, round(time.monotonic() - t0, 2))
                try:            # the banner ends the boot; the wait doubles as the period
                    agent.wait_ready(SAMPLE_EVERY)
                    break
                except Exception:
                    continue
            total = time.monotonic() - t0
        finally:
            b.close()
    n = sum(phases.values()) or 1
    return {"total_s": round(total, 2), "first_seen_s": first,
            "seconds": {k: round(total * v / n, 2) for k, v in phases.items()}}


def run(runs=1):
    boots = [one_boot() for _ in range(runs)]
    keys = boots[0]["seconds"].keys()
    return {"runs": runs, "sample_every_s": SAMPLE_EVERY,
            "median_total_s": round(statistics.median(b["total_s"] for b in boots), 2),
            "median_seconds": {k: round(statistics.median(b["seconds"][k] for b in boots), 2)
                               for k in keys},
            "first_seen_s": boots[0]["first_seen_s"]}


if __name__ == "__main__":
    import json
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1), indent=2))
