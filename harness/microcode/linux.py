"""Which update Linux loads, per kernel generation (facts §1.6, §1.8, §2.2).

Why: the harness predicts the revision a CPU reports after Linux's loader ran, and the
loader's rules changed between the guest's kernel (Debian 12, Linux 6.1) and current
kernels (the 6.7 microcode rework by Thomas Gleixner). Each rule below names the kernel
function it mirrors; ``KERNELS`` are the generations a caller can ask for:

``"6.1"`` (Debian 12's guest; ``arch/x86/kernel/cpu/microcode/{intel,amd}.c`` of v6.1)
  - Intel early, ``scan_microcode``: a record must match the CPU
    (``intel_find_matching_signature`` with the CPU's sig/pf); the first one is taken if
    ``has_newer_microcode`` against the CPU's revision; every later one is compared with
    ``has_newer_microcode(data, patch->hdr.sig, patch->hdr.pf, patch->hdr.rev)``, i.e.
    against the *picked update's primary* signature and pf, not the CPU's. A pick that
    matched only through its extended table therefore blocks later updates that do
    not list that primary signature.
  - Intel late, ``generic_load_microcode``: CPU signature each time, strictly newer than
    the best so far (starting at the current revision). No minimum-revision rule.
  - AMD early, ``scan_containers``/``parse_container``: containers in order; in each, the
    CPU's equivalence id comes from that container's table and the *last* patch whose
    ``processor_rev_id`` equals it (and whose family is the CPU's, ``verify_patch``)
    wins; the first container holding a match ends the scan. Applied by
    ``apply_microcode_early_amd`` unless the current level is *above* the patch: an equal
    level is re-applied (commit e7ad18d1169c, in v6.1, "Apply the patch early on every
    logical thread").

``"6.7"`` (v6.7 and later: the 2023 microcode rework by Thomas Gleixner and Ashok Raj)
  - Intel early, ``scan_microcode``: every record is matched against the CPU's
    signature and taken when strictly newer than the best so far (``cur_rev``; the
    rework's "BSP scan: Check whether there is newer microcode" hunk, which removed the
    ``phdr`` comparisons).
  - Intel late, ``parse_microcode_blobs``: the same, plus ``ucode_validate_minrev``
    (commit d975d2d3f52e, "x86/microcode/intel: Add a minimum required revision for late
    loading"): the header's ``min_req_ver`` (reserved[1]) must be nonzero and <= the boot
    CPU's current revision for the load to be safe (``UCODE_NEW_SAFE``); with
    ``force_minrev`` (CONFIG_MICROCODE_LATE_FORCE_MINREV or ``microcode=force_minrev``)
    unsafe updates are skipped, otherwise the newest is loaded and the kernel taints.
    Early loading ignores ``min_req_ver``.
  - AMD early, ``early_apply_microcode``: the same container rule as 6.1. Not modelled:
    the 2025 change matching Zen patches by the family/model/stepping encoded in the
    patch id (``patch_cpus_equivalent``) and the SHA-256 check of known patches.

Revisions compare as u32 in every rule (``has_newer_microcode`` compares an unsigned
header field with an ``int`` converted to unsigned). The loader's "disabled" cases
(hypervisor bit, final AMD levels, ``dis_ucode_ldr``) are the caller's business
(``harness.model.microcode.loader_disabled``), except the final levels here, which
``load_ucode_amd_bsp`` checks through ``check_loader_disabled_bsp``.
"""

from typing import NamedTuple, Optional

from .amd import FINAL_PATCH_LEVELS
from .cpuid import decode_signature
from .select import AMD, INTEL, pack_intel, signatures_match

KERNELS = ("6.1", "6.7")
DEFAULT_KERNEL = "6.1"       # Debian 12's guest kernel
U32 = 0xFFFFFFFF


def check_kernel(kernel):
    if kernel not in KERNELS:
        raise ValueError(f"kernel generation must be one of {', '.join(KERNELS)}, got {kernel!r}")
    return kernel


def _matches(update, sig, pf):
    """``intel_find_matching_signature``: primary pair, then every extended entry."""
    return any(signatures_match(sig, pf, s, p) for s, p in update.signatures)


def early_intel(updates, cpu, kernel=DEFAULT_KERNEL):
    """The Intel update the early loader (``scan_microcode``) picks, or None.

    ``updates``: the records of GenuineIntel.bin in file order (the caller has already
    made sure the blob parses to its last byte: otherwise Linux picks nothing).
    """
    check_kernel(kernel)
    sig, pf, cur = cpu.signature, cpu.pf_mask, cpu.revision & U32
    patch = None
    for u in updates:
        if not _matches(u, sig, pf):
            continue
        if kernel == "6.1" and patch is not None:
            # has_newer_microcode(data, phdr->sig, phdr->pf, phdr->rev)
            if u.revision <= patch.revision or not _matches(u, patch.signature, patch.pf_mask):
                continue
        elif u.revision <= (cur if patch is None else patch.revision):
            continue
        patch = u
    return patch


class LateChoice(NamedTuple):
    """A late-load pick: the update and whether the kernel deems it safe (6.7+
    ``UCODE_NEW_SAFE``); ``safe`` is None on kernels without the minimum-revision rule."""

    update: object
    safe: Optional[bool]


def minrev_ok(update, current_revision):
    """``ucode_validate_minrev`` (6.7+): a nonzero ``min_req_ver`` <= the current revision
    (Linux takes the boot CPU's; here the CPU asked about, the same on one system)."""
    need = update.min_req_ver
    return bool(need) and (current_revision & U32) >= need


def late_intel(updates, cpu, kernel=DEFAULT_KERNEL, *, force_minrev=False):
    """What a late load (``/sys/devices/system/cpu/microcode/reload``) would apply, or None.

    6.1 ``generic_load_microcode``; 6.7+ ``parse_microcode_blobs`` with the
    ``min_req_ver`` gate (``force_minrev`` skips unsafe updates).
    """
    check_kernel(kernel)
    sig, pf, cur = cpu.signature, cpu.pf_mask, cpu.revision & U32
    best, best_rev, safe = None, cur, None
    for u in updates:
        is_safe = minrev_ok(u, cur) if kernel != "6.1" else None
        if force_minrev and kernel != "6.1" and not is_safe:
            continue
        if u.revision <= best_rev or not _matches(u, sig, pf):
            continue
        best, best_rev, safe = u, u.revision, is_safe
    return None if best is None else LateChoice(best, safe)


def early_amd(containers, cpu, kernel=DEFAULT_KERNEL):
    """The AMD patch the early loader applies, or None (``scan_containers`` +
    ``apply_microcode_early_amd``/``early_apply_microcode``; same rule in both
    generations, see the module docstring)."""
    check_kernel(kernel)
    if cpu.revision in FINAL_PATCH_LEVELS:
        return None
    family = decode_signature(cpu.signature).family
    for c in containers:
        eid = c.equiv_id(cpu.signature)
        found = None
        for p in c.patches:
            if eid and p.processor_rev_id == eid and p.family == family:
                found = p                  # the last match in the container wins
        if found is not None:              # the first container with a match ends the scan
            return found if found.patch_id >= (cpu.revision & U32) else None
    return None


def early_for_cpu(cpu, *, intel_updates=(), amd_containers=(), kernel=DEFAULT_KERNEL):
    """Dispatch on the vendor."""
    if cpu.vendor == INTEL:
        return early_intel(intel_updates, cpu, kernel)
    if cpu.vendor == AMD:
        return early_amd(amd_containers, cpu, kernel)
    return None


def pack_for_cpus(updates, cpus, kernel=DEFAULT_KERNEL):
    """GenuineIntel.bin holding, for each Intel CPU, the update Linux would load for it."""
    chosen = [early_intel(updates, c, kernel) for c in cpus if c.vendor == INTEL]
    return pack_intel([u for u in chosen if u is not None])
