"""A deliberately wrong model must give a different outcome: the rules matter."""
from dataclasses import replace

import pytest

from harness import hw
from harness.errors import Hang
from harness.machine import CpuPlug
from harness.model.cpu import KVM, TCG

from model_helpers import make


def hot_add(sem, **kw):
    b = make(sem, cpus=2, maxcpus=4, **kw)
    try:
        b.hotplug(CpuPlug(2))
    except Hang as h:
        return "hang", h.signature(), b
    return "ok", b.snapshot().cpus[2].smbase, b


def test_reference_outcomes():
    assert hot_add(TCG)[:2] == ("hang", {"in_smm": [0, 1], "halted": [2], "spinning": [0, 1],
                                         "smbase_default": [2], "evidence": "stall"})
    assert hot_add(KVM)[:2] == ("ok", 0x1ffc1000)


def test_tcg_with_kvm_smi_rules_relocates():
    # SMI held while waiting for SIPI and kept across INIT: the hang goes away
    sem = replace(TCG, name="tcg-fixed", smi_wakes_wait_for_sipi=False,
                  init_discards_pending_smi=False)
    assert hot_add(sem)[:2] == ("ok", 0x1ffc1000)


def test_tcg_latched_init_alone_is_not_enough():
    sem = replace(TCG, name="tcg-init-latched", init_latched_in_smm=True)
    outcome, sig, b = hot_add(sem)
    assert outcome == "hang"
    # different hang: the new CPU was relocated but never reached the pen
    assert b.snapshot().cpus[2].smbase == 0x1ffc1000
    assert "smm:wait-pen" in b.m.stuck[0]


def test_kvm_with_tcg_smi_wakeup_hangs():
    sem = replace(KVM, name="kvm-smi-wakes", smi_wakes_wait_for_sipi=True)
    assert hot_add(sem)[0] == "hang"


def test_init_resetting_smbase_breaks_boot_values():
    sem = replace(KVM, name="kvm-init-resets-smbase", init_resets_smbase=True)
    b = make(sem, cpus=2, maxcpus=4)
    assert [c.smbase for c in b.snapshot().cpus] == [0x1ffbd000, hw.DEFAULT_SMBASE]


def test_other_tile_stride_changes_smbase():
    b = make("kvm", cpus=2, maxcpus=4, overrides={"smbase_stride": 0x1000})
    assert [c.smbase for c in b.snapshot().cpus] != [0x1ffbd000, 0x1ffbf000]


def test_without_race_fix_1_cold_plug_hangs():
    # CSCN at boot reports the cold-plugged CPU; OVMF without the "already known" check
    # relocates it again while it sits in the SMM rendezvous -> hang
    with pytest.raises(Hang):
        make("kvm", cpus=1, maxcpus=4, coldplug=(1,), overrides={"skip_known_apic_ids": False})
    make("kvm", cpus=1, maxcpus=4, coldplug=(1,))


def test_sipi_in_smm_applied_does_not_rescue_tcg():
    sem = replace(TCG, name="tcg-old-sipi", sipi_dropped_in_smm=False)
    assert hot_add(sem)[0] == "hang"
