"""The machine state both backends report: per CPU and for the chipset.

A snapshot is what the checks look at and what traces record. The QEMU backend fills it
from the migration stream (plus QOM and the guest), the model from its own state; any
field a backend cannot know is ``None``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class CpuState:
    index: int                      # QEMU cpu-index (migration instance id)
    apic_id: int
    smbase: int
    in_smm: bool
    halted: bool
    smi_count: int | None = None    # SMIs taken (TCG counts them: msr_smi_count)
    pending_smi: bool | None = None
    pending_init: bool | None = None
    online: bool | None = None      # as the guest OS sees it; None = guest not asked
    qom_path: str | None = None
    ucode_rev: int | None = None    # QEMU's ucode-rev property (raw MSR 0x8B value)
    guest_ucode_rev: int | None = None  # what the guest OS reports (/proc/cpuinfo)
    signature: int | None = None    # CPUID(1).EAX
    vendor: str | None = None       # CPUID vendor as the guest reports it (vendor_id)
    guest_msr_ucode: int | None = None  # MSR 0x8B as the guest reads it (/dev/cpu/N/msr)
    guest_ucode_sysfs: int | None = None  # /sys/devices/system/cpu/cpuN/microcode/version

    @classmethod
    def from_dict(cls, d):
        """From a trace's record; a field it lacks (a hang's per-CPU table has no
        microcode, an early one no SMBASE) is unknown, None."""
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


@dataclass
class Tseg:
    base: int
    size: int
    locked: bool


@dataclass
class Snapshot:
    cpus: list[CpuState]
    tseg: Tseg | None = None
    # raw chipset registers by name: smram, esmramc, ext_tseg_mbytes, tolud, f_smbase,
    # apm_cnt, apm_sts, smi_en; None when unknown
    registers: dict = field(default_factory=dict)
    # {"requested": int, "negotiated": int, "ok": bool, "names": [...negotiated names]}
    smi_features: dict = field(default_factory=dict)
    # how it was taken: "migration" (everything), "qmp" (no SMBASE/TSEG/registers; used
    # where migrating would crash QEMU), "model"
    source: str = "migration"

    def cpu(self, index):
        for c in self.cpus:
            if c.index == index:
                return c
        return None

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        tseg = d.get("tseg")
        return cls(
            cpus=[CpuState.from_dict(c) for c in d.get("cpus", [])],
            tseg=Tseg(**tseg) if tseg else None,
            registers=dict(d.get("registers") or {}),
            smi_features=dict(d.get("smi_features") or {}),
            source=d.get("source", "migration"),
        )
