"""Where did an interrupt go?  Parse HMP ``info pic`` (the IOAPIC part) and
``info lapic N``, and explain a level-triggered interrupt that the IOAPIC sent but no
local APIC took.

Why: a hot-plug or hot-unplug request reaches the guest only as an ACPI SCI (GSI 9,
level). If that SCI is lost, the guest never runs ``\\_GPE._E02`` and the request sits
in QEMU forever, with the guest otherwise healthy. QEMU 7.2 loses it after a CPU
unplug (see ``lost_sci``), so when an unplug does not complete the harness says where
the SCI is, instead of only "not removed".

QEMU 7.2 ``info pic`` (hw/intc/ioapic_common.c ioapic_print_redtbl)::

    ioapic0: ver=0x20 id=0x00 sel=0x22 (redir[9])
      pin 9  0x040000000000c822 dest=4 vec=34  active-hi level        fixed  logical
      IRR      9
      Remote IRR 9

QEMU 7.2 ``info lapic 2`` (target/i386/cpu-dump.c)::

    dumping local APIC state for CPU 2
    ...
    ISR	 (none)
    IRR	 34 (level)
    APR 0x02 TPR 0x10 DFR 0x0f LDR 0x04 PPR 0x10
"""
from __future__ import annotations

import re

from .. import hw
from ..known_bugs import apic_id_holes, explain_lost_sci as explain

_PIN_RE = re.compile(r"^\s*pin\s+(\d+)\s+0x([0-9a-fA-F]+)\s+dest=(\d+)\s+vec=(\d+)\s+(.*)$")
_LIST_RE = re.compile(r"^\s*(Remote IRR|IRR)\s+(.*)$")
_LAPIC_CPU_RE = re.compile(r"local APIC state for CPU (\d+)")
_LAPIC_VEC_RE = re.compile(r"^(ISR|IRR)\s+(.*)$")
_LAPIC_KV_RE = re.compile(r"\b(APR|TPR|DFR|LDR|PPR)\s+0x([0-9a-fA-F]+)")


def _numbers(text):
    return [int(x) for x in re.findall(r"\b(\d+)\b", text)]


def parse_ioapic(text) -> dict:
    """{"pins": {pin: {"dest", "vector", "level", "masked", "logical"}},
    "irr": [pins], "remote_irr": [pins]} from ``info pic``; the 8259 lines are ignored."""
    pins, lists = {}, {"irr": [], "remote_irr": []}
    for line in text.splitlines():
        m = _PIN_RE.match(line)
        if m:
            words = m.group(5).split()
            pins[int(m.group(1))] = {
                "dest": int(m.group(3)), "vector": int(m.group(4)),
                "level": "level" in words, "masked": "masked" in words,
                "logical": "logical" in words}
            continue
        m = _LIST_RE.match(line)
        if m:
            key = "remote_irr" if m.group(1) == "Remote IRR" else "irr"
            lists[key] = _numbers(m.group(2))
    return {"pins": pins, **lists}


def parse_lapic(text) -> dict:
    """{"cpu", "isr": [vectors], "irr": [vectors], "ldr", "dfr", "tpr", "ppr", "apr"}."""
    out = {"cpu": None, "isr": [], "irr": []}
    for raw in text.splitlines():
        line = raw.strip()
        m = _LAPIC_CPU_RE.search(line)
        if m:
            out["cpu"] = int(m.group(1))
            continue
        m = _LAPIC_VEC_RE.match(line)
        if m:
            out[m.group(1).lower()] = _numbers(re.sub(r"\(.*?\)", "", m.group(2)))
            continue
        for k, v in _LAPIC_KV_RE.findall(line):
            out[k.lower()] = int(v, 16)
    return out


def logical_targets(dest, lapics) -> list:
    """cpu indexes whose flat-model logical id (LDR bits 31:24) matches ``dest``."""
    return [la["cpu"] for la in lapics
            if la.get("dfr", 0xF) & 0xF == 0xF and (la.get("ldr", 0) & dest)]


def lost_sci(ioapic, lapics, apic_ids) -> dict | None:
    """Explain a stuck SCI, or None if the SCI is not stuck.

    Stuck: the IOAPIC has sent the level-triggered SCI (Remote IRR set) but no CPU's
    local APIC holds its vector in IRR or ISR, so no EOI will ever come and the line
    never fires again. ``apic_ids`` are the APIC ids of the CPUs still present: a hole
    below the target's APIC id is where QEMU before 9.0 stops its logical-destination
    search (hw/intc/apic.c apic_get_delivery_bitmask: ``else break`` at the first empty
    ``local_apics[]`` slot), which is how the SCI gets lost after an unplug."""
    pin = ioapic["pins"].get(hw.SCI_GSI)
    if pin is None or hw.SCI_GSI not in ioapic["remote_irr"]:
        return None
    vec = pin["vector"]
    if any(vec in la["irr"] or vec in la["isr"] for la in lapics):
        return None
    targets = logical_targets(pin["dest"], lapics) if pin["logical"] else \
        [la["cpu"] for la in lapics if la["cpu"] == pin["dest"]]
    holes = apic_id_holes(apic_ids)
    return {"pin": hw.SCI_GSI, "vector": vec, "dest": pin["dest"], "logical": pin["logical"],
            "targets": targets, "apic_id_holes": holes,
            "text": explain(pin["dest"], pin["logical"], targets, holes, vec)}
