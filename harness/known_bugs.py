"""Known bugs of QEMU and OVMF, each with the builds it affects: one table, read by the
scenario loader (``expect: {bug: NAME, ...}``), the judge (a bug's expectation holds
only on the builds it affects; elsewhere the scenario's plain expectation does) and the
model (which of QEMU's defects it reproduces for the QEMU version it stands for).

A version range is a comma-separated list of comparisons (``>=7.2, <9.0``); QEMU
versions compare as numbers (``10.0.2``), firmware as the edk2 stable tag (``202211``).
Where the first fixed release is known from the source, the range ends there and says
so; where it was only measured, the range ends at the first release measured without
the bug, and ``evidence`` says which builds were run.

A bug can also be fixed by a patch series of ours (``contrib/qemu/``, built by
``python -m harness builds fetch qemu-7.2-smm-fix``): ``fixed_by`` names the series'
marker, which such a build carries in its ``--version`` (configure's
``--with-pkgversion``: ``QEMU emulator version 7.2.22 (Debian ...+smm-fix)``), and the
harness's QEMU version then reads ``7.2.22+smm-fix``: same release, without the bug.

Where both backends must word a bug's symptom alike (so one scenario expectation holds
for both), the wording is here too, after the table (``explain_lost_sci``).

``rests_on`` says what a row (and the model's reproduction of it) rests on:
"mechanism" (derived from the QEMU/edk2/Linux code it mirrors, named in ``evidence``)
or "observation" (fitted to runs, the builds named in ``evidence``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import hw
from .errors import ConfigError

_CMP = re.compile(r"^\s*(<=|>=|==|<|>)\s*([0-9][0-9.]*)\s*$")


def fix_markers(qemu_version) -> set:
    """The patch-series markers a QEMU version carries ('7.2.22+smm-fix' -> {'smm-fix'})."""
    return set(str(qemu_version).split("+")[1:])


def version_tuple(v):
    """'11.1.3' -> (11, 1, 3); 'QEMU emulator version 7.2.22 (...)' -> (7, 2, 22)."""
    m = re.search(r"(\d+(?:\.\d+)*)", str(v))
    if not m:
        raise ValueError(f"not a version: {v!r}")
    return tuple(int(x) for x in m.group(1).split("."))


@dataclass(frozen=True)
class VersionRange:
    text: str

    def __post_init__(self):
        for part in self.text.split(","):
            if not _CMP.match(part):
                raise ValueError(f"bad version range {self.text!r} (e.g. '>=7.2, <9.0')")

    def __contains__(self, version):
        v = version_tuple(version)
        for part in self.text.split(","):
            op, bound = _CMP.match(part).groups()
            b = version_tuple(bound)
            n = max(len(v), len(b))
            vv, bb = v + (0,) * (n - len(v)), b + (0,) * (n - len(b))
            ok = {"<": vv < bb, "<=": vv <= bb, ">": vv > bb, ">=": vv >= bb,
                  "==": vv == bb}[op]
            if not ok:
                return False
        return True


RESTS_ON = ("mechanism", "observation")


@dataclass(frozen=True)
class KnownBug:
    name: str
    summary: str
    accels: tuple = ("tcg",)
    qemu: VersionRange | None = None       # None: every QEMU version
    firmware: VersionRange | None = None   # edk2 stable tag (YYYYMM); None: any
    model_defect: str | None = None        # the QemuDefects flag that reproduces it
    evidence: str = ""
    modelled: bool = True                  # False: the model cannot predict it
    fixed_by: str | None = None            # marker of our patch series that fixes it
    rests_on: str = "observation"          # or "mechanism" (see the module doc)

    def affects(self, accel, qemu_version=None, firmware_edk2=None):
        """Whether a build has this bug. An unknown version counts as affected: the
        expectation stays the bug's, so its absence is seen rather than assumed."""
        if accel not in self.accels:
            return False
        if self.fixed_by and qemu_version is not None and \
                self.fixed_by in fix_markers(qemu_version):
            return False
        if self.qemu is not None and qemu_version is not None \
                and qemu_version not in self.qemu:
            return False
        if self.firmware is not None and firmware_edk2 is not None \
                and str(firmware_edk2) not in self.firmware:
            return False
        return True

    def __post_init__(self):
        if self.rests_on not in RESTS_ON:
            raise ValueError(f"{self.name}: rests_on must be one of {RESTS_ON}")

    def scope(self):
        parts = [f"under {'/'.join(self.accels)}"]
        if self.qemu:
            parts.append(f"QEMU {self.qemu.text}")
        if self.firmware:
            parts.append(f"edk2 {self.firmware.text}")
        return ", ".join(parts)


BUGS = (
    KnownBug(
        "tcg-init-in-smm",
        "TCG takes INIT while a CPU is in SMM, drops a pending SMI at INIT and delivers "
        "SMI to a CPU waiting for SIPI: OVMF's hot-add SMI -> INIT-SIPI-SIPI hangs",
        accels=("tcg",), qemu=VersionRange(">=7.2"), fixed_by="smm-fix",
        evidence="accel/tcg/cpu-exec.c cpu_handle_interrupt calls do_cpu_init even in "
                 "SMM (real-qemu-findings.md); hangs on 7.2.22 and 11.1.3 "
                 "(tcg-hotadd.md); upstream fixed only SIPI in SMM (2025-10, "
                 "do_cpu_sipi returns under HF_SMM_MASK); our series contrib/qemu/ fixes "
                 "it (hot-add passes on qemu-7.2-smm-fix and qemu-10.2-smm-fix); the "
                 "model reproduces it by its CPU semantics (harness/model/cpu.py)",
        rests_on="mechanism"),
    KnownBug(
        "tcg-single-thread-eject-abort",
        "with -accel tcg,thread=single the firmware's eject joins the one vCPU thread "
        "from itself: qemu_thread_join: Resource deadlock avoided",
        accels=("tcg",), qemu=VersionRange(">=7.2"),
        model_defect="eject_aborts_single_threaded_tcg",
        evidence="aborts on 7.2.22, 10.0.2 and 11.1.3 (builds.md), with OVMF 2022.11, "
                 "2025.02 and 2026.08 (matrix)"),
    KnownBug(
        "unplug-heap-corruption",
        "after a CPU unplug the next system_reset, device_add or migration kills QEMU "
        "(glibc heap corruption)",
        accels=("tcg",), qemu=VersionRange(">=7.2, <10.0"),
        model_defect="heap_corrupted_by_unplug",
        evidence="dies on 7.2.22; gone on 10.0.2 and 11.1.3 (builds.md); the fixing "
                 "release between them was not bisected"),
    KnownBug(
        "migration-stalls-after-unplug",
        "after a CPU unplug, a migration to a file stays in status 'setup' for good",
        accels=("tcg",), qemu=VersionRange(">=10.0, <10.2"),
        evidence="found by this harness's matrix on 10.0.2 (every scenario that snapshots "
                 "after an unplug, OVMF 2022.11 and 2025.02); 10.2.2 (qemu-10.2-smm-fix: "
                 "ten hot-add/unplug cycles, each migrated) and 11.1.3 migrate; 10.1 not "
                 "tried; a system_reset does not help. The harness snapshots through "
                 "QMP/HMP only after an unplug there",
        modelled=False),
    KnownBug(
        "tcg-contexts-not-recycled",
        "multi-threaded TCG never frees an unplugged vCPU's translation context, so a "
        "re-plug after an unplug (more vCPU threads than maxcpus) aborts QEMU: "
        "tcg_register_thread: assertion failed: (n < tcg_max_ctxs)",
        accels=("tcg",), qemu=VersionRange(">=7.2"),
        model_defect="tcg_contexts_not_recycled",
        evidence="tcg/tcg.c tcg_register_thread: assert(n < tcg_max_ctxs), one context "
                 "per possible vCPU, none given back on unplug; found by this harness on "
                 "11.1.3 (unplug-replug-crash); 7.2.22 usually dies earlier of "
                 "unplug-heap-corruption, but once its words were checked it also died "
                 "of this assertion (2026-12-02)",
        rests_on="mechanism"),
    KnownBug(
        "apic-logical-delivery-hole",
        "QEMU's logical-destination delivery stops at the first empty local_apics[] "
        "slot, so interrupts for a higher APIC id are lost (the SCI, device IRQs)",
        accels=("tcg",), qemu=VersionRange(">=7.2, <9.0"),
        model_defect="logical_delivery_stops_at_apic_hole",
        evidence="hw/intc/apic.c apic_get_delivery_bitmask 'break' until 'apic: add "
                 "support for x2APIC mode' (2024-01, QEMU 9.0) made the loops skip "
                 "holes; lost on 7.2.22, delivered on 10.0.2 and 11.1.3 (builds.md)",
        rests_on="mechanism"),
    KnownBug(
        "ovmf-tseg-below-7m",
        "OVMF's 4 MiB build stops in DXE with less than 7 MiB of extended TSEG: no CPU "
        "is ever relocated (relocation is in DXE up to edk2-stable202402)",
        accels=("tcg", "kvm"), firmware=VersionRange("<202405"),
        evidence="Debian 12's OVMF 2022.11 on QEMU 7.2.22 (1, 2, 3, 4, 6 MiB tried; 7 "
                 "boots): with 1 MiB it resets the machine every 3.3 s; the model's "
                 "7 MiB minimum and its reset loop are fitted to that"),
    KnownBug(
        "ovmf-pei-tseg-too-small",
        "OVMF relocating in PEI (edk2 >= stable202405) with a 1 MiB TSEG: the CPUs are "
        "relocated, then the BSP never leaves SMM and the boot stops",
        accels=("tcg", "kvm"), firmware=VersionRange(">=202405"),
        evidence="OVMF 2025.02 and 2026.08 with 1 MiB (this harness, QEMU 7.2.22 and "
                 "11.1.3); 2025.02 boots with 7 MiB"),
    KnownBug(
        "ovmf-tseg-below-8m",
        "OVMF 2026.08 needs 8 MiB of extended TSEG: with 7 MiB the firmware takes SMI "
        "after SMI (an SMI storm, about 700 a second, nothing printed) and the boot "
        "never completes",
        accels=("tcg", "kvm"), firmware=VersionRange(">=202608"),
        evidence="OVMF 2026.08 on QEMU 11.1.3: 7 MiB hangs, 8 and 12 MiB boot",
        modelled=False),
)
BY_NAME = {b.name: b for b in BUGS}


def get(name) -> KnownBug:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown bug {name!r} (known: {', '.join(BY_NAME)})") from None


def model_defects_for(accel, qemu_version, firmware_edk2=None):
    """The QemuDefects flags of the bugs a build has (for the model)."""
    return {b.model_defect for b in BUGS
            if b.model_defect and b.affects(accel, qemu_version, firmware_edk2)}


# --- apic-logical-delivery-hole: one wording for a lost ACPI SCI ----------------------
# Shared by the QEMU backend's diagnosis (harness/qemu/irq_diag.py, from HMP) and the
# model (which knows it directly), so a scenario can expect the same message from both.
# Why an SCI gets lost: QEMU before 9.0 delivers a logical-destination interrupt by
# walking ``local_apics[]`` from APIC id 0 and stopping at the first empty slot
# (hw/intc/apic.c apic_get_delivery_bitmask, ``else break``). Once a CPU is unplugged,
# CPUs with a higher APIC id cannot receive such interrupts. The SCI is level triggered:
# the IOAPIC keeps Remote IRR set until an EOI that never comes, so the pin never fires
# again and no ACPI event (hot-plug, hot-unplug, power button) reaches the guest.

LOST_SCI_SYMPTOM = "Remote IRR stays set, no further ACPI event can reach the guest"


def explain_lost_sci(dest, logical, targets, holes, vector=None) -> str:
    """dest: the IOAPIC entry's destination; targets: cpu indexes it names; holes: APIC
    ids missing below the highest present one."""
    mode = "logical" if logical else "physical"
    vec = f", vector {vector}" if vector is not None else ""
    text = (f"SCI (GSI {hw.SCI_GSI}{vec}) sent by the IOAPIC to {mode} destination "
            f"{dest:#04x} (cpu {', '.join(map(str, targets)) or 'none'}) is in no local "
            f"APIC: {LOST_SCI_SYMPTOM}")
    if holes and logical:
        text += (f"; APIC id {', '.join(map(str, holes))} is gone, and QEMU before 9.0 "
                 f"stops its logical-destination search at the first missing APIC id")
    return text


def apic_id_holes(apic_ids) -> list:
    """APIC ids missing below the highest present one (empty ``local_apics[]`` slots)."""
    present = set(apic_ids)
    return [i for i in range(max(present, default=-1) + 1) if i not in present]
