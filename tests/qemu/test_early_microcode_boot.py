"""A real guest booted from a combined initrd (early-microcode cpio + the normal
initramfs): Linux still boots, the microcode file is where the kernel looks for it, and
because every QEMU guest reports the hypervisor bit the early loader stays disabled, so
every CPU keeps QEMU's default ``ucode-rev`` (microcode-facts.md §3.3, §7). The model
(tests/model/test_microcode_model.py::test_kvm64_machine_matches_what_qemu_reports)
predicts the same values for this machine.

One VM boot (~10-20 s under TCG)."""
import pytest

from harness import hw
from harness.machine import MachineConfig
from harness.microcode.cpio import INTEL_PATH, build_early_cpio, find_cpio_data
from harness.microcode.intel import build_update, parse_intel
from harness.model.cpu import cpuid_signature
from harness.qemu.backend import QemuBackend

pytestmark = pytest.mark.vm

# QEMU's kvm64 model: vendor GenuineIntel, family 15 model 6 stepping 1, so Linux would
# look for GenuineIntel.bin if its loader were enabled, and QEMU's default ucode-rev is
# the Intel one (revision 1 in the high dword).
CPU_MODEL = "kvm64"
SIGNATURE = cpuid_signature(15, 6, 1)
QEMU_DEFAULT = hw.QEMU_UCODE_REV_INTEL_DEFAULT


def test_early_microcode_initrd_boots_and_changes_nothing(tmp_path):
    assert SIGNATURE == 0xF61
    # a valid update that would be newer than anything QEMU reports, for every
    # platform id (pf mask 0xff): only the hypervisor bit keeps it from being loaded
    updates = [build_update(SIGNATURE, 0xFF, 0x7E, date="2024-05-01"),
               build_update(SIGNATURE, 0xFF, 0x7F, date="2024-06-01")]
    genuine_intel = b"".join(updates)
    assert parse_intel(genuine_intel).ok
    early = build_early_cpio(genuine_intel)

    backend = QemuBackend(early_cpio=early)
    try:
        backend.start(MachineConfig(cpu_model=CPU_MODEL, cpus=2, maxcpus=2), tmp_path,
                      paused=True)
        # the initrd QEMU was given starts with our archive, and the kernel's scan finds
        # the microcode in it (then the compressed main initramfs follows)
        initrd = backend.vm.initrd.read_bytes()
        assert initrd.startswith(early)
        assert initrd[len(early):len(early) + 2] == b"\x1f\x8b"
        found = find_cpio_data(initrd, INTEL_PATH)
        assert found is not None and found.data == genuine_intel
        assert found.offset % 16 == 0
        parsed = parse_intel(found.data)
        assert parsed.ok and [u.raw for u in parsed.updates] == updates
        assert [u.revision for u in parsed.updates] == [0x7E, 0x7F]

        backend.boot()
        assert backend.guest("echo alive")["output"].strip() == "alive"

        snap = backend.snapshot()
        assert len(snap.cpus) == 2
        for c in snap.cpus:
            assert c.online is True, c
            assert c.signature == SIGNATURE, c
            assert c.ucode_rev == QEMU_DEFAULT, c                # QOM ucode-rev
            assert c.guest_ucode_rev == QEMU_DEFAULT >> 32, c     # /proc/cpuinfo: 0x1
            assert c.guest_ucode_rev not in (0x7E, 0x7F)          # nothing was loaded
        cpuinfo = backend.guest("grep -m1 '^microcode' /proc/cpuinfo")["output"]
        assert cpuinfo.split(":")[1].strip() == "0x1", cpuinfo
        flags = backend.guest("grep -m1 '^flags' /proc/cpuinfo")["output"]
        assert " hypervisor" in flags, flags                       # why Linux loaded nothing
    finally:
        backend.close()
