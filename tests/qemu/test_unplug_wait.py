"""The unplug wait's verdict (QemuBackend.unplug) with QEMU faked by HMP text captured
on QEMU 7.2.22 (unplug-ascending-lost-sci): an SCI that the IOAPIC sent and no local
APIC holds, seen on consecutive looks, decides the unplug lost before its deadline; an
SCI a CPU holds is no evidence, and without evidence the deadline still ends the wait."""
from pathlib import Path

import pytest

from harness.errors import NotRemoved
from harness.qemu import backend as qb

DATA = Path(__file__).resolve().parents[1] / "data"
PIC = (DATA / "info_pic_lost_sci.txt").read_text()
LAPIC0 = (DATA / "info_lapic_apic0_after_unplug.txt").read_text()
LAPIC2 = (DATA / "info_lapic_apic2_after_unplug.txt").read_text()
HELD = LAPIC2.replace("IRR\t (none)", "IRR\t 34(level)")      # CPU 2 holds the SCI


class FakeQmp:
    def __init__(self, lapic2):
        self.lapic2, self.hmps = lapic2, []

    def cmd(self, name, **args):
        assert name == "query-cpus-fast"
        return [{"props": {"socket-id": 0}}, {"props": {"socket-id": 2}}]

    def hmp(self, line):
        self.hmps.append(line)
        return {"info pic": PIC, "info lapic 0": LAPIC0}.get(line, self.lapic2)


class FakeVM:
    def __init__(self, lapic2, tmp_path):
        self.qmp, self.run_dir = FakeQmp(lapic2), tmp_path

    def alive(self):
        return True

    def slot_props(self, slot):
        return {"qom-path": f"/machine/peripheral/cpu-slot{slot}"}


class FakeAgent:
    def run(self, command, timeout=None):
        if command == "true":
            return 0, ""
        return 0, "1  EN STS enabled      unmasked\n1\n"     # gpe02, then the SCI count


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(qb, "LOST_SCI_LOOK_EVERY", 0.2)
    monkeypatch.setattr(qb.QemuBackend, "_qmp", lambda self, *a, **k: {})


def backend(lapic2, tmp_path):
    b = qb.QemuBackend()
    b.vm, b.agent = FakeVM(lapic2, tmp_path), FakeAgent()
    return b


def test_a_stuck_sci_seen_on_consecutive_looks_decides_the_unplug_before_its_deadline(
        fast, tmp_path):
    b = backend(LAPIC2, tmp_path)
    with pytest.raises(NotRemoved) as e:
        b.unplug(2, timeout=30)
    d = e.value.diagnosis
    assert d.lost_sci["targets"] == [2] and "Remote IRR stays set" in d.why
    assert d.details["decided_after_s"] < 5
    assert d.details["decided_by"].startswith(f"the SCI found stuck {qb.LOST_SCI_LOOKS} times")
    # the step's expectation stays the scenario's: empty within its timeout
    assert e.value.waited == 30
    assert (tmp_path / "unplug-2" / "info-pic.txt").read_text() == PIC
    assert b.vm.qmp.hmps.count("info pic") == qb.LOST_SCI_LOOKS + 1   # the looks, the diagnosis


def test_an_sci_a_local_apic_holds_is_no_evidence_the_deadline_ends_the_wait(fast, tmp_path):
    b = backend(HELD, tmp_path)
    with pytest.raises(NotRemoved) as e:
        b.unplug(2, timeout=1.5)
    d = e.value.diagnosis
    assert d.lost_sci is None
    assert d.details["decided_by"] == "the slot still held the CPU after 1.5 s"
    assert d.details["decided_after_s"] >= 1.5


def test_a_local_apic_that_cannot_be_read_is_no_evidence(fast, tmp_path):
    b = backend("Invalid CPU\n", tmp_path)
    assert b._sci_stuck() is False
    b = backend(LAPIC2, tmp_path)
    assert b._sci_stuck() is True
