"""Lost-SCI diagnosis from HMP text captured on QEMU 7.2.22 (unplug-ascending-lost-sci:
APIC id 1 unplugged, then device_del of APIC id 2; the SCI never arrived)."""
from pathlib import Path

from harness.qemu.irq_diag import logical_targets, lost_sci, parse_ioapic, parse_lapic

DATA = Path(__file__).resolve().parents[1] / "data"
PIC = (DATA / "info_pic_lost_sci.txt").read_text()
LAPIC0 = (DATA / "info_lapic_apic0_after_unplug.txt").read_text()
LAPIC2 = (DATA / "info_lapic_apic2_after_unplug.txt").read_text()


def test_parse_ioapic_pins_and_remote_irr():
    io = parse_ioapic(PIC)
    assert len(io["pins"]) == 24
    assert io["pins"][9] == {"dest": 4, "vector": 34, "level": True, "masked": False,
                             "logical": True}
    assert io["pins"][0]["masked"] and not io["pins"][0]["level"]
    assert io["irr"] == [9] and io["remote_irr"] == [9]


def test_parse_lapic():
    la = parse_lapic(LAPIC2)
    assert (la["cpu"], la["ldr"], la["dfr"], la["isr"], la["irr"]) == (2, 4, 0xF, [], [])
    assert parse_lapic("IRR\t 34(level) 239 \nISR\t 48 \n")["irr"] == [34, 239]


def test_stuck_sci_is_explained_with_the_apic_id_hole():
    lapics = [parse_lapic(LAPIC0), parse_lapic(LAPIC2)]
    assert logical_targets(4, lapics) == [2]
    lost = lost_sci(parse_ioapic(PIC), lapics, apic_ids=[0, 2])
    assert lost["targets"] == [2] and lost["apic_id_holes"] == [1]
    assert "Remote IRR stays set" in lost["text"] and "APIC id 1 is gone" in lost["text"]


def test_sci_held_by_a_local_apic_is_not_lost():
    lapics = [parse_lapic(LAPIC0), parse_lapic(LAPIC2.replace("IRR\t (none)", "IRR\t 34(level)"))]
    assert lost_sci(parse_ioapic(PIC), lapics, apic_ids=[0, 2]) is None


def test_no_remote_irr_is_not_lost():
    healthy = PIC.replace("Remote IRR 9", "Remote IRR (none)")
    assert lost_sci(parse_ioapic(healthy), [parse_lapic(LAPIC2)], apic_ids=[0, 2]) is None


def test_without_a_hole_no_qemu_hint():
    lost = lost_sci(parse_ioapic(PIC), [parse_lapic(LAPIC0), parse_lapic(LAPIC2)],
                    apic_ids=[0, 1, 2])
    assert lost is not None and "QEMU before 9.0" not in lost["text"]
