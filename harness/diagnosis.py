"""Why a machine is stuck, or why a CPU was not removed: the evidence a ``Hang`` or a
``NotRemoved`` carries, typed.

Both backends collect it as a bag of findings (the QEMU backend also keeps it as
``diagnosis.json`` in the run directory); the fields that reports, expectations and the
comparison read have names here, so no reader re-learns them by string key. The rest
of the bag (HMP output, QMP answers, the model's scheduler steps, best-effort errors)
stays in ``details``, written to the trace as it was collected.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .hw import DEFAULT_SMBASE
from .snapshot import Snapshot

# Hangs in which the machine keeps cycling: one instant's CPU state is not the hang's
CYCLING_EVIDENCE = {"reset-loop": "reset loop", "smi-storm": "SMI storm"}


@dataclass
class Diagnosis:
    reason: str | None = None
    # what proves a hang (harness.qemu.progress.Evidence, or the model's scheduler):
    # {"kind": "stall" | "reset-loop" | "smi-storm", "cpus": [{"index", "in_smm", "halted", ...}], ...}
    evidence: dict | None = None
    # every CPU: {"index", "apic_id", "in_smm", "halted", "smbase", "cs", "eip", ...}
    cpus: list | None = None
    snapshot: Snapshot | None = None      # the machine's state when it was diagnosed
    why: str | None = None                # an unplug's: where the request got lost
    lost_sci: dict | None = None          # known_bugs' lost-SCI finding, when it is one
    console_tail: str | None = None
    details: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d) -> "Diagnosis":
        """From a backend's bag of findings or a trace's record (a Diagnosis as is)."""
        if isinstance(d, Diagnosis):
            return d
        d = dict(d or {})
        named = {f.name for f in fields(cls)} - {"details"}
        kw = {k: d.pop(k) for k in list(d) if k in named}
        if isinstance(kw.get("snapshot"), dict):
            kw["snapshot"] = Snapshot.from_dict(kw["snapshot"])
        return cls(**kw, details=d)

    def to_dict(self) -> dict:
        """The flat record traces carry (the fields that are set, then the details)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name != "details" and getattr(self, f.name) is not None}
        if self.snapshot is not None:
            out["snapshot"] = self.snapshot.to_dict()
        return {**out, **self.details}

    def signature(self) -> dict:
        """The comparable part of a hang, by cpu index: CPUs in SMM, halted, spinning
        at one place (from the evidence), still at the default SMBASE 0x30000 (never
        relocated), and what proves the hang (``evidence``: stall, reset-loop or
        smi-storm)."""
        cpus = self.cpus or []
        ev = self.evidence or {}
        sig = {"evidence": ev.get("kind"),
               "smbase_default": sorted(c["index"] for c in cpus
                                        if c.get("smbase") == DEFAULT_SMBASE)}
        if ev.get("kind") in CYCLING_EVIDENCE:
            # the machine cycles (through boot, or in and out of SMM): no CPU state of
            # one instant describes it
            return {**sig, "in_smm": None, "halted": None, "spinning": None}
        places = ev.get("cpus") or cpus     # a stall: the state the samples proved
        return {**sig,
                "in_smm": sorted(c["index"] for c in places if c.get("in_smm")),
                "halted": sorted(c["index"] for c in places if c.get("halted")),
                "spinning": sorted(c["index"] for c in places if not c.get("halted"))}
