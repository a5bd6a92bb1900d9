"""Microcode in the model (harness.model.microcode): the WRMSR 0x79 rules of the two
platforms, Linux's early loader (hypervisor bit), and hot-added CPUs."""
from dataclasses import replace
from pathlib import Path

import pytest

from harness import hw
from harness.checks import CheckContext, microcode_uniform
from harness.errors import ConfigError
from harness.machine import CpuPlug, MachineConfig
from harness.microcode.cpio import build_early_cpio
from harness.microcode.intel import build_update, parse_intel
from harness.microcode.select import pack_intel
from harness.model.backend import ModelBackend
from harness.model.cpu import KVM, TCG, Cpu, Memory, cpuid_signature
from harness.model.microcode import (INTEL, AMD, LinuxLoader, MicrocodeState, apply_update,
                                     identity, loader_disabled, revision_of)

from model_helpers import FIRMWARE

SKL = cpuid_signature(6, 94, 3)           # QEMU's Skylake-Client: 0x506E3
KVM64 = cpuid_signature(15, 6, 1)         # QEMU's kvm64 (Intel vendor): 0xF61
INTEL_DEFAULT = hw.QEMU_UCODE_REV_INTEL_DEFAULT   # revision 1 in the high dword
NEW_REV = 0xF0


def state(sig=SKL, pf_id=1, rev=None):
    return MicrocodeState(INTEL, sig, pf_id, rev)


def good(sig=SKL, pf=0x02, rev=NEW_REV, **kw):
    return build_update(sig, pf, rev, **kw)


def uniform(snapshot):
    return microcode_uniform(CheckContext(snapshot), None)


def model(platform=None, sem="kvm", *, early=None, hypervisor=None, cpus=2, maxcpus=3,
          cpu_model="Skylake-Client", platform_id=1, boot=True, coldplug=(), **cfg):
    b = ModelBackend(sem, FIRMWARE, microcode_platform=platform, early_microcode=early,
                     hypervisor_bit=hypervisor, platform_id=platform_id)
    b.start(MachineConfig(cpu_model=cpu_model, cpus=cpus, maxcpus=maxcpus, **cfg),
            Path("/nonexistent-run-dir"), paused=True)
    for plug in coldplug:
        b.coldplug(plug)
    if boot:
        b.boot()
    return b


# --- identity ---------------------------------------------------------------------------

def test_identity_of_models_and_props():
    assert identity("qemu64") == (AMD, 0x60FB1, 0x01000065)
    assert identity("kvm64") == (INTEL, KVM64, INTEL_DEFAULT)
    assert identity("Skylake-Client") == (INTEL, 0x506E3, INTEL_DEFAULT)
    # QEMU's vendor/family/model/stepping CPU properties; the default ucode-rev follows
    # the effective vendor (x86_cpu_realizefn)
    assert identity("qemu64", {"vendor": "GenuineIntel", "family": 6, "model": "0x8f",
                               "stepping": 8}) == (INTEL, 0x806F8, INTEL_DEFAULT)
    assert identity("no-such-model") == (None, None, None)
    assert state().revision == 1 and revision_of(AMD, 0x01000065) == 0x01000065


# --- WRMSR 0x79 --------------------------------------------------------------------------

def test_qemu_platform_ignores_a_valid_newer_update():
    s = state()
    r = apply_update(s, good(), "qemu")
    assert not r.applied and "ignored" in r.reason
    assert s.ucode_rev == INTEL_DEFAULT
    # the same through the CPU's MSR interface with the default (qemu) semantics
    c = Cpu(0, 0, 0, TCG, Memory(), ucode_rev=INTEL_DEFAULT, signature=SKL, vendor=INTEL,
            platform_id=1)
    c.wrmsr(hw.MSR_IA32_BIOS_UPDT_TRIG, good())
    assert c.rdmsr(hw.MSR_IA32_BIOS_SIGN_ID) == INTEL_DEFAULT and c.msr_writes == 1


def test_hardware_applies_a_valid_matching_newer_update():
    s = state()
    r = apply_update(s, good(), "hardware")
    assert r.applied, r.reason
    assert s.ucode_rev == NEW_REV << 32 and s.revision == NEW_REV
    assert r.old_rev == INTEL_DEFAULT and r.new_rev == NEW_REV << 32
    # a later, newer one again; the MSR path with an address (update data in memory)
    mem = Memory()
    c = Cpu(0, 0, 0, replace(KVM, wrmsr_ucode="hardware"), mem, ucode_rev=s.ucode_rev,
            signature=SKL, vendor=INTEL, platform_id=1)
    mem.ucode[0x7F030] = good(rev=NEW_REV + 1)
    assert c.wrmsr(hw.MSR_IA32_BIOS_UPDT_TRIG, 0x7F030).applied
    assert c.rdmsr(hw.MSR_IA32_BIOS_SIGN_ID) == (NEW_REV + 1) << 32
    c.reset()                                   # RESET loses the update
    assert c.ucode_rev == NEW_REV << 32


def test_hardware_matches_extended_signatures_and_pf_zero():
    s = state(pf_id=5)
    upd = good(sig=0x506E2, pf=0x01, ext_sigs=[(0x506E2, 0x01), (SKL, 0x20)])
    assert apply_update(s, upd, "hardware").applied
    # family 6 model < 5 CPUs have no MSR 0x17: pf 0 matches an update with pf 0 only
    old = MicrocodeState(INTEL, cpuid_signature(6, 1, 9), 3)
    assert not apply_update(old, good(sig=old.signature, pf=0x08), "hardware").applied
    assert apply_update(old, good(sig=old.signature, pf=0), "hardware").applied


@pytest.mark.parametrize("bad, why", [
    (lambda: good()[:100] + bytes([good()[100] ^ 1]) + good()[101:], "checksum"),
    (lambda: good(sig=SKL + 1), "does not match"),
    (lambda: good(pf=0x04), "does not match"),                 # CPU is platform 1 (0x02)
    (lambda: good(rev=1), "not newer"),                        # equal to the running 1
    (lambda: good(rev=0), "not newer"),                        # a downgrade
    (lambda: good()[:500], "invalid"),                          # truncated
])
def test_hardware_refuses(bad, why):
    s = state()
    r = apply_update(s, bad(), "hardware")
    assert not r.applied and why in r.reason, r.reason
    assert s.ucode_rev == INTEL_DEFAULT


def test_hardware_refuses_a_bad_extended_entry_checksum():
    upd = bytearray(good(sig=0x506E2, ext_sigs=[(SKL, 0x02)]))
    upd[-1] ^= 0x40                                             # last entry's checksum
    s = state()
    assert not apply_update(s, bytes(upd), "hardware").applied
    assert s.ucode_rev == INTEL_DEFAULT


# --- the Linux early loader --------------------------------------------------------------

def test_loader_rules():
    assert loader_disabled(state(), hypervisor=True) == "hypervisor bit set"
    assert loader_disabled(state(), hypervisor=False) is None
    assert loader_disabled(MicrocodeState(INTEL, KVM64, 0), hypervisor=False) is None
    assert loader_disabled(MicrocodeState(AMD, 0x60FB1), hypervisor=False) == \
        "AMD family < 0x10"                                       # qemu64
    assert loader_disabled(MicrocodeState(INTEL, cpuid_signature(5, 2, 1)), False) == \
        "Intel family < 6"


def test_default_machine_is_unchanged():
    """No microcode options: qemu semantics, QEMU's default ucode-rev, nothing loads."""
    b = model(sem="tcg", cpu_model="qemu64")
    s = b.snapshot()
    assert {c.ucode_rev for c in s.cpus} == {0x01000065}
    assert {c.guest_ucode_rev for c in s.cpus} == {0x01000065}
    assert {c.signature for c in s.cpus} == {0x60FB1}
    assert b.sem.wrmsr_ucode == "qemu" and b.m.hypervisor_bit
    assert b.m.guest.ucode.disabled == "AMD family < 0x10"


def test_hypervisor_bit_disables_early_loading():
    early = build_early_cpio(pack_intel(parse_intel(good()).updates))
    b = model("hardware", early=early)           # hypervisor bit: on (any QEMU guest)
    s = b.snapshot()
    assert b.m.guest.ucode.disabled == "hypervisor bit set"
    assert [c.ucode_rev for c in s.cpus] == [INTEL_DEFAULT] * 2
    assert [c.guest_ucode_rev for c in s.cpus] == [1, 1]
    assert b.m.guest.ucode.log == []             # not even a WRMSR


def test_hardware_without_hypervisor_bit_loads_early_and_on_hotplug():
    early = build_early_cpio(pack_intel([*parse_intel(good(rev=0xE0) + good()).updates]))
    # the hypervisor bit off through QEMU's CPU property
    b = model("hardware", early=early, cpu_props={"hypervisor": "off"})
    assert b.m.hypervisor_bit is False
    s = b.snapshot()
    assert [c.ucode_rev for c in s.cpus] == [NEW_REV << 32] * 2      # highest one wins
    assert [c.guest_ucode_rev for c in s.cpus] == [NEW_REV] * 2
    assert uniform(s).passed
    assert b.m.guest.ucode.patch.revision == NEW_REV
    # hot-add: the new CPU powers on at the default revision ...
    b.hotplug(CpuPlug(2))
    s = b.snapshot()
    assert s.cpus[2].ucode_rev == INTEL_DEFAULT and s.cpus[2].guest_ucode_rev is None
    assert not uniform(s).passed and uniform(s).cpus == [2]
    # ... and gets the cached patch when the OS onlines it
    b.online(2)
    s = b.snapshot()
    assert s.cpus[2].ucode_rev == NEW_REV << 32 and s.cpus[2].guest_ucode_rev == NEW_REV
    assert uniform(s).passed, uniform(s).line()
    # RESET: revisions drop back to power-on and the reboot loads them again
    b.reset()
    assert [c.ucode_rev for c in b.snapshot().cpus] == [NEW_REV << 32] * 3


def test_raw_genuineintel_bin_and_props_platform_id():
    """early_microcode can be a raw GenuineIntel.bin; a CPU of another platform (prop
    ``platform-id``) does not match the cached patch and keeps its revision."""
    b = model("hardware", early=good(), hypervisor=False)
    assert [c.ucode_rev for c in b.snapshot().cpus] == [NEW_REV << 32] * 2
    b.hotplug(CpuPlug(2, props={"platform-id": 3}))
    b.online(2)
    s = b.snapshot()
    assert s.cpus[2].ucode_rev == INTEL_DEFAULT and not uniform(s).passed


def test_one_bad_record_disables_the_scan():
    blob = good() + b"\0" * 16                   # trailing bytes: Linux loads nothing
    b = model("hardware", early=build_early_cpio(blob), hypervisor=False)
    assert [c.ucode_rev for c in b.snapshot().cpus] == [INTEL_DEFAULT] * 2
    assert b.m.guest.ucode.patch is None


def test_qemu_platform_without_hypervisor_bit_loads_nothing():
    b = model("qemu", early=build_early_cpio(good()), hypervisor=False)
    assert b.m.guest.ucode.disabled is None
    assert [r.applied if r else None for _, r in b.m.guest.ucode.log] == [None]  # ignored
    assert [c.ucode_rev for c in b.snapshot().cpus] == [INTEL_DEFAULT] * 2
    assert b.m.guest.ucode.patch is None          # nothing loaded, nothing cached


def test_qemu_platform_coldplugged_cpu_with_other_ucode_rev_is_not_uniform():
    b = model("qemu", early=build_early_cpio(good()), hypervisor=False,
              coldplug=[CpuPlug(2, props={"ucode-rev": 0x2A << 32})])
    s = b.snapshot()
    assert [c.ucode_rev for c in s.cpus] == [INTEL_DEFAULT] * 2 + [0x2A << 32]
    assert [c.guest_ucode_rev for c in s.cpus] == [1, 1, 0x2A]
    r = uniform(s)
    assert not r.passed and r.cpus == [2]


def test_kvm64_machine_matches_what_qemu_reports():
    """The model's view of the VM test's machine (kvm64, hypervisor bit on)."""
    b = model(sem="tcg", cpu_model="kvm64", maxcpus=2,
              early=build_early_cpio(good(sig=KVM64, pf=0x01)))
    s = b.snapshot()
    assert [(c.signature, c.ucode_rev, c.guest_ucode_rev) for c in s.cpus] == \
        [(KVM64, INTEL_DEFAULT, 1)] * 2


def test_bad_platform_name():
    with pytest.raises(ConfigError):
        ModelBackend("tcg", FIRMWARE, microcode_platform="kvm")


def test_loader_standalone():
    ld = LinuxLoader(good(), hypervisor=False)
    bsp = Cpu(0, 0, 0, replace(TCG, wrmsr_ucode="hardware"), Memory(),
              ucode_rev=INTEL_DEFAULT, signature=SKL, vendor=INTEL, platform_id=1)
    assert ld.boot_bsp(bsp).revision == NEW_REV and bsp.ucode_rev == NEW_REV << 32


def test_guest_loader_uses_linux_61_scan_rule():
    """Debian 12's 6.1 scan_microcode compares later updates with the first pick's primary
    signature: an update matching only through its extended table (rev 5) keeps a later
    primary match (rev 7) out, so every CPU reports 5 (6.7+ would load 7)."""
    other = SKL + 1
    a = build_update(other, 0x02, 5, ext_sigs=[(other, 0x02), (SKL, 0x02)])
    b7 = build_update(SKL, 0x02, 7)
    b = model("hardware", early=build_early_cpio(a + b7), hypervisor=False)
    assert [c.ucode_rev for c in b.snapshot().cpus] == [5 << 32] * 2


def test_guest_view_fields_of_the_snapshot():
    """What the guest reads: MSR 0x8B raw, its vendor; sysfs only while Linux's loader is
    enabled (hypervisor bit clear), never for a CPU the guest does not run."""
    b = model("qemu", early=build_early_cpio(good()), coldplug=[CpuPlug(2, props={"ucode-rev": 0x2A << 32})])
    s = b.snapshot()
    assert [(c.guest_msr_ucode, c.guest_ucode_rev, c.guest_ucode_sysfs, c.vendor) for c in s.cpus] \
        == [(INTEL_DEFAULT, 1, None, INTEL)] * 2 + [(0x2A << 32, 0x2A, None, INTEL)]
    b = model("hardware", early=build_early_cpio(good()), hypervisor=False)
    assert [(c.guest_msr_ucode, c.guest_ucode_sysfs) for c in b.snapshot().cpus] == \
        [(NEW_REV << 32, NEW_REV)] * 2
    b = model("qemu", boot=False)
    assert [(c.guest_msr_ucode, c.vendor) for c in b.snapshot().cpus] == [(None, None)] * 2
