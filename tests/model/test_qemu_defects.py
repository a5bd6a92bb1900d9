"""The QEMU 7.2 TCG defects the model reproduces (harness/model/qemu_defects.py), each
checked against the scenario that found it on real QEMU, and absent under kvm."""
import pytest

from harness import known_bugs
from harness.errors import Hang, NotRemoved, QemuCrashed
from harness.machine import CpuPlug
from harness.model import qemu_defects
from harness.model.qemu_defects import QemuDefects

from model_helpers import make

SCI_ONLY = QemuDefects("sci-only", logical_delivery_stops_at_apic_hole=True)


def test_eject_aborts_single_threaded_tcg_and_qemu_stays_dead():
    b = make("tcg", defects=None, cpus=2, maxcpus=3, coldplug=(2,), tcg_thread="single")
    with pytest.raises(QemuCrashed) as e:
        b.unplug(2)
    assert (e.value.status, e.value.message) == (-6, qemu_defects.MSG_THREAD_JOIN)
    with pytest.raises(QemuCrashed):
        b.snapshot()


@pytest.mark.parametrize("sem,thread", [("tcg", "multi"), ("kvm", "single")])
def test_eject_without_that_defect(sem, thread):
    b = make(sem, defects=None, cpus=2, maxcpus=3, coldplug=(2,), tcg_thread=thread)
    assert b.unplug(2)["removed"]


def test_reset_or_device_add_after_unplug_crash_under_tcg_only():
    b = make("tcg", defects=None, cpus=2, maxcpus=3, tcg_thread="multi")
    b.reset()                                        # no unplug yet: fine
    b.unplug(1)
    with pytest.raises(QemuCrashed) as e:
        b.reset()
    assert e.value.status == -6 and "at system_reset" in e.value.message
    assert e.value.source.startswith("model rule")     # not QEMU's words: labelled
    r = make("tcg", defects=None, cpus=2, maxcpus=3, tcg_thread="multi")
    r.unplug(1)
    with pytest.raises(QemuCrashed) as e:             # unplug-replug-crash
        r.hotplug(CpuPlug(1))
    assert "at device_add" in e.value.message
    k = make("kvm", defects=None, cpus=2, maxcpus=3)
    k.unplug(1)
    k.reset()
    assert [c.index for c in k.snapshot().cpus] == [0]


def test_sci_routed_like_linux():
    b = make("tcg", cpus=1, maxcpus=3, coldplug=(1, 2))
    g = b.m.guest
    assert g.sci_cpu().index == 1                    # first CPU after the boot CPU
    b.offline(1)
    assert g.sci_cpu().index == 2                    # moved off the dying CPU
    b.offline(2)
    assert g.sci_cpu().index == 0
    assert make("tcg", cpus=1, maxcpus=1).m.guest.sci_cpu().index == 0


def test_unplug_below_the_sci_cpu_loses_every_later_acpi_event():
    b = make("tcg", defects=SCI_ONLY, cpus=1, maxcpus=4, coldplug=(1, 2),
             tcg_thread="multi")
    b.unplug(1)                       # SCI on CPU 1: delivered; then it moves to CPU 2
    with pytest.raises(NotRemoved) as e:
        b.unplug(2)                   # APIC id 1 is a hole below CPU 2's APIC id
    why = e.value.diagnosis.why
    assert known_bugs.LOST_SCI_SYMPTOM in why and "APIC id 1 is gone" in why and "(cpu 2)" in why
    assert b.m.gpe_sts                               # the GPE stays pending
    # and for good: a hot-add is never seen by the guest either
    with pytest.raises(Hang) as h:
        b.hotplug(CpuPlug(3))
    assert known_bugs.LOST_SCI_SYMPTOM in h.value.reason and 3 not in b.m.guest.known
    b.reset()                                        # the IOAPIC is reset with the machine
    assert b.m.sci_lost is None


@pytest.mark.parametrize("order,sem", [((2, 1), "tcg"), ((1, 2), "kvm")])
def test_unplugs_that_keep_the_sci_reachable(order, sem):
    b = make(sem, defects=None, cpus=1, maxcpus=3, coldplug=(1, 2), tcg_thread="multi")
    for slot in order:
        assert b.unplug(slot)["removed"]
    assert [c.index for c in b.snapshot().cpus] == [0]


@pytest.mark.parametrize("mbytes,boots", [(1, False), (6, False), (7, True), (8, True)])
def test_smallest_tseg_from_the_firmware_profile(mbytes, boots):
    if boots:
        b = make("tcg", cpus=2, maxcpus=2, tseg_mbytes=mbytes)
        assert all(c.smbase != 0x30000 for c in b.snapshot().cpus)
        return
    with pytest.raises(Hang) as e:
        make("tcg", cpus=2, maxcpus=2, tseg_mbytes=mbytes)
    # as tseg-1m-ovmf-hang on QEMU 7.2.22 + OVMF 2022.11: the firmware resets the
    # machine over and over, no CPU ever relocated
    assert e.value.signature() == {"in_smm": None, "halted": None, "spinning": None,
                                   "smbase_default": [0, 1], "evidence": "reset-loop"}
    assert e.value.diagnosis.evidence["source"].startswith("observation: OVMF 2022.11")
    assert "cannot hold the SMM core" in e.value.diagnosis.details["firmware_fatal"]
