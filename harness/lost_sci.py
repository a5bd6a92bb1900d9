"""One wording for a lost ACPI SCI, shared by the QEMU backend's diagnosis
(``harness/qemu/irq_diag.py``, from HMP) and the model (which knows it directly), so a
scenario can expect the same message from both.

Why an SCI gets lost: QEMU before 9.0 delivers a logical-destination interrupt by
walking ``local_apics[]`` from APIC id 0 and stopping at the first empty slot
(hw/intc/apic.c apic_get_delivery_bitmask, ``else break``). Once a CPU is unplugged,
CPUs with a higher APIC id cannot receive such interrupts. The SCI is level triggered:
the IOAPIC keeps Remote IRR set until an EOI that never comes, so the pin never fires
again and no ACPI event (hot-plug, hot-unplug, power button) reaches the guest.
"""
from __future__ import annotations

from . import hw

SYMPTOM = "Remote IRR stays set, no further ACPI event can reach the guest"


def explain(dest, logical, targets, holes, vector=None) -> str:
    """dest: the IOAPIC entry's destination; targets: cpu indexes it names; holes: APIC
    ids missing below the highest present one."""
    mode = "logical" if logical else "physical"
    vec = f", vector {vector}" if vector is not None else ""
    text = (f"SCI (GSI {hw.SCI_GSI}{vec}) sent by the IOAPIC to {mode} destination "
            f"{dest:#04x} (cpu {', '.join(map(str, targets)) or 'none'}) is in no local "
            f"APIC: {SYMPTOM}")
    if holes and logical:
        text += (f"; APIC id {', '.join(map(str, holes))} is gone, and QEMU before 9.0 "
                 f"stops its logical-destination search at the first missing APIC id")
    return text


def apic_id_holes(apic_ids) -> list:
    """APIC ids missing below the highest present one (empty ``local_apics[]`` slots)."""
    present = set(apic_ids)
    return [i for i in range(max(present, default=-1) + 1) if i not in present]
