"""QEMU defects the model reproduces, so that it predicts what real QEMU does, bugs
included (each one found by this harness and kept as a scenario that expects it).

They belong to QEMU's userspace emulation, so they come with the ``tcg`` semantics;
which QEMU versions have which is :mod:`harness.known_bugs`' table (``for_build``).
Under ``kvm`` the local APICs are in the kernel and the scenarios expect these steps to
pass. Each flag is one defect:

- ``eject_aborts_single_threaded_tcg`` (unplug-tcg-single-thread-crash): with
  ``-accel tcg,thread=single`` the firmware's eject runs cpu_remove_sync() on the one
  round-robin vCPU thread, which joins itself: QEMU aborts.
- ``heap_corrupted_by_unplug`` (coldplug-unplug-reset, unplug-replug-crash): after a
  CPU unplug the next ``system_reset``, ``device_add`` or migration kills QEMU; glibc's
  message varies (heap corruption).
- ``tcg_contexts_not_recycled`` (unplug-replug-crash on newer QEMU): multi-threaded
  TCG has one translation context per possible vCPU (tcg_max_ctxs) and never gives an
  unplugged vCPU's back, so creating more vCPU threads than maxcpus over the machine's
  life (a re-plug after an unplug) fails ``tcg_register_thread``'s assertion.
- ``logical_delivery_stops_at_apic_hole`` (unplug-ascending-lost-sci): logical
  destination interrupts stop at the first unplugged APIC id (its wording, the same from
  both backends: ``harness.known_bugs.explain_lost_sci``).
"""
from __future__ import annotations

from dataclasses import dataclass

SIGABRT_STATUS = -6          # how subprocess reports QEMU's abort()
# Whose words a modelled crash's message is (QemuCrashed.source): the thread-join and TCG
# context messages are QEMU's own stderr lines, copied from real runs; the heap
# corruption's is the model's description (glibc's text varies), a rule, not QEMU's.
HEAP_SOURCE = "model rule (observation: QEMU 7.2.22 dies, glibc's message varies)"
MSG_THREAD_JOIN = "qemu: qemu_thread_join: Resource deadlock avoided"
MSG_TCG_CONTEXTS = "tcg_register_thread: assertion failed: (n < tcg_max_ctxs)"
MSG_HEAP = "QEMU dies at {what} after a CPU unplug (the model's rule, not QEMU's words)"


# What each rule rests on: "mechanism" (derived from the QEMU code it mirrors, named) or
# "observation" (fitted to runs, with the builds it was seen on). The README's findings
# table and the kvm expectations (tests/model/test_kvm_predictions.py) say the same.
RESTS_ON = {
    "eject_aborts_single_threaded_tcg": (
        "observation", "QEMU 7.2.22, 10.0.2 and 11.1.3 abort with 'qemu_thread_join: "
        "Resource deadlock avoided' when OVMF ejects under thread=single; the mechanism "
        "(cpu_remove_sync joining the one round-robin vCPU thread from itself) is "
        "inferred from the message, not traced in the source"),
    "heap_corrupted_by_unplug": (
        "observation", "QEMU 7.2.22: after an unplug, system_reset, device_add and "
        "migration die (glibc heap checks); where the heap is corrupted is not known, so "
        "the rule is 'the next of those dies', and its message is the model's"),
    "tcg_contexts_not_recycled": (
        "mechanism", "tcg/tcg.c tcg_register_thread: assert(n < tcg_max_ctxs), "
        "tcg_max_ctxs = max_cpus under multi-threaded TCG and a context is never given "
        "back on unplug; seen on QEMU 11.1.3"),
    "logical_delivery_stops_at_apic_hole": (
        "mechanism", "hw/intc/apic.c apic_get_delivery_bitmask: 'if (!apic) break;' in "
        "the logical-destination loops, until the x2APIC rework (QEMU 9.0); seen on "
        "QEMU 7.2.22"),
}


@dataclass(frozen=True)
class QemuDefects:
    name: str
    eject_aborts_single_threaded_tcg: bool = False
    heap_corrupted_by_unplug: bool = False
    logical_delivery_stops_at_apic_hole: bool = False
    tcg_contexts_not_recycled: bool = False


NONE = QemuDefects("none")
QEMU_7_2_TCG = QemuDefects("qemu-7.2-tcg", eject_aborts_single_threaded_tcg=True,
                           heap_corrupted_by_unplug=True,
                           logical_delivery_stops_at_apic_hole=True)
ALL = {d.name: d for d in (NONE, QEMU_7_2_TCG)}
BY_SEMANTICS = {"tcg": QEMU_7_2_TCG, "kvm": NONE}


def for_semantics(name) -> QemuDefects:
    return BY_SEMANTICS.get(name, NONE)


def for_build(accel, qemu_version, firmware_edk2=None) -> QemuDefects:
    """The defects of the QEMU build the model stands for, from the known-bugs table
    (harness.known_bugs: which versions have which bug). Without a version: those of
    the semantics' reference build (QEMU 7.2 under tcg)."""
    if qemu_version is None:
        return for_semantics(accel)
    from ..known_bugs import model_defects_for
    flags = model_defects_for(accel, qemu_version, firmware_edk2)
    if not flags:
        return NONE
    return QemuDefects(f"qemu-{qemu_version}-{accel}", **{f: True for f in sorted(flags)})
