"""CPU semantics (facts §4)."""
from dataclasses import replace

import pytest

from harness import hw
from harness.model.cpu import (HALT, KVM, QEMU64_SIGNATURE, STEP, TCG, Cpu, Memory,
                               cpuid_signature, semantics)


def test_qemu64_signature_and_ucode_default():
    assert QEMU64_SIGNATURE == 0x00060FB1
    assert cpuid_signature(6, 0x8F, 8) == 0x000806F8
    c = Cpu(1, 1, 1, TCG, Memory())
    assert c.ucode_rev == hw.QEMU_UCODE_REV_AMD_DEFAULT == 0x01000065
    assert c.rdmsr(hw.MSR_IA32_BIOS_SIGN_ID) == 0x01000065
    c.wrmsr(hw.MSR_IA32_BIOS_UPDT_TRIG, 0x1000)        # qemu: ignored
    assert c.ucode_rev == 0x01000065 and c.msr_writes == 1


def test_semantics_lookup():
    assert semantics("kvm") is KVM and semantics(TCG) is TCG
    with pytest.raises(ValueError):
        semantics("hvf")


def idle(cpu):
    cpu.where = "idle"
    while True:
        yield HALT


def smm_handler(cpu):
    cpu.where = "smm"
    while True:
        yield STEP


def cpu_in_smm(sem):
    mem = Memory()
    mem.code[hw.DEFAULT_SMBASE + hw.SMI_ENTRY_OFFSET] = smm_handler
    c = Cpu(1, 1, 1, sem, mem)
    c.wait_sipi = False
    c.halted = False
    c.prog = idle(c)
    next(c.prog)                       # runs up to its HLT
    c.halted = True
    c.raise_smi()
    assert c.deliverable()
    c.take_event()
    assert c.in_smm and c.smi_count == 1 and not c.halted
    next(c.prog)
    assert c.where == "smm"
    return c


def test_enter_smm_and_rsm_relocates():
    c = cpu_in_smm(KVM)
    ss = c.save_state()
    assert ss["smbase"] == hw.DEFAULT_SMBASE and ss["revision"] == hw.SMM_REVISION_ID_X86_64
    ss["smbase"] = 0x1FFBD000
    c.rsm()
    assert not c.in_smm and c.smbase == 0x1FFBD000 and c.where == "idle"


def test_init_in_smm_kvm_latched_tcg_resets():
    k = cpu_in_smm(KVM)
    k.raise_smi()
    k.send_init()
    assert k.in_smm and k.pending_init and not k.deliverable()
    k.rsm()
    assert k.deliverable()
    k.take_event()
    assert k.wait_sipi and not k.in_smm and k.pending_smi   # SMI survives INIT on KVM
    t = cpu_in_smm(TCG)
    t.raise_smi()                      # directed SMI while in SMM: pending
    t.send_init()
    assert not t.in_smm and t.wait_sipi and t.halted and not t.pending_smi
    assert t.smbase == hw.DEFAULT_SMBASE


def test_sipi_dropped_in_smm():
    for sem in (KVM, TCG):
        c = cpu_in_smm(sem)
        c.wait_sipi = True
        assert not c.send_sipi(0x9F)
    c = cpu_in_smm(replace(TCG, sipi_dropped_in_smm=False))
    c.wait_sipi = True
    assert c.send_sipi(0x9F)


def test_smi_while_waiting_for_sipi():
    for sem, wakes in ((KVM, False), (TCG, True)):
        c = Cpu(2, 2, 2, sem, Memory())
        assert c.run_state == "wait-for-sipi"
        c.raise_smi()
        assert c.deliverable() is wakes
