"""Microcode in the model: per-CPU identity and revision, the update MSRs, and the
Linux early loader (microcode-facts.md §1.5-§1.7, §2.2, §3.3, §7).

Per CPU the model keeps what the loader looks at (:class:`MicrocodeState`, or the same
attributes on :class:`harness.model.cpu.Cpu`): the vendor string, the signature
(CPUID(1).EAX), the platform id (MSR 0x17 bits 52:50, 0..7) and ``ucode_rev``, the *raw*
MSR 0x8B value QEMU exposes as the ``ucode-rev`` property: on Intel the revision is in the
high 32 bits (QEMU default ``0x1_0000_0000`` = revision 1), on AMD it is the low value
(QEMU default ``0x01000065``).

What a WRMSR to the update trigger does is a *platform* rule (``CpuSemantics.wrmsr_ucode``):

- ``"qemu"``: ignored, the revision never changes (QEMU implements no microcode update);
- ``"hardware"``: the CPU checks the update (checksums incl. the extended table, signature
  and platform flags incl. extended signatures) and loads it only when it is strictly
  newer; then MSR 0x8B reports the update's revision.

The guest side (:class:`LinuxLoader`) is Linux 6.1's early loader: disabled when the CPU
reports the hypervisor bit (every QEMU guest with default models does), or for Intel
family < 6 / AMD family < 0x10 / other vendors / an AMD final patch level; otherwise the
boot CPU picks the update from ``kernel/x86/microcode/<Vendor>.bin`` in the early cpio
with 6.1's rules (:mod:`harness.microcode.linux`, ``GUEST_KERNEL``), applies it, caches
it, and every AP (boot-time or hot-added, when it is onlined) applies the cached patch.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import hw
from ..microcode import amd as amd_fmt
from ..microcode import intel as intel_fmt
from ..microcode import linux
from ..microcode import select as sel
from ..microcode.cpio import AMD_PATH, INTEL_PATH, find_cpio_data
from ..microcode.cpuid import decode_signature, intel_cpu_pf, ucode_revision

INTEL = sel.INTEL            # "GenuineIntel"
AMD = sel.AMD                # "AuthenticAMD"
VENDOR_NAMES = {"intel": INTEL, "amd": AMD, INTEL.lower(): INTEL, AMD.lower(): AMD}
PLATFORMS = ("qemu", "hardware")
GUEST_KERNEL = "6.1"         # the guest image boots Debian 12's Linux 6.1
U32 = 0xFFFFFFFF


def vendor_name(value):
    """'Intel'/'AMD'/'GenuineIntel'/... -> the CPUID vendor string (others unchanged)."""
    if value is None:
        return None
    return VENDOR_NAMES.get(str(value).lower(), str(value))


def default_ucode_rev(vendor):
    """QEMU's ``ucode-rev`` when unset (x86_cpu_realizefn): AMD vs everything else."""
    return hw.QEMU_UCODE_REV_AMD_DEFAULT if vendor == AMD else hw.QEMU_UCODE_REV_INTEL_DEFAULT


def revision_of(vendor, raw):
    """The revision Linux prints (/proc/cpuinfo ``microcode``) from the raw MSR 0x8B."""
    return ucode_revision(vendor, raw)


def raw_rev(vendor, revision):
    """The raw MSR 0x8B value after loading ``revision``."""
    return (revision & U32) << 32 if vendor == INTEL else revision & U32


@dataclass
class MicrocodeState:
    """One CPU as far as microcode goes (the attributes ``apply_update`` uses)."""
    vendor: str
    signature: int
    platform_id: int = 0
    ucode_rev: int | None = None        # raw MSR 0x8B value (None: QEMU default)

    def __post_init__(self):
        self.vendor = vendor_name(self.vendor)
        if self.ucode_rev is None:
            self.ucode_rev = default_ucode_rev(self.vendor)

    @property
    def revision(self):
        return revision_of(self.vendor, self.ucode_rev)


def cpu_revision(cpu):
    return revision_of(cpu.vendor, cpu.ucode_rev)


def loader_cpu(cpu):
    """The CPU as harness.microcode.select sees it."""
    return sel.Cpu(cpu.vendor, cpu.signature, getattr(cpu, "platform_id", 0) or 0,
                   cpu_revision(cpu) or 0)


def cpu_pf(cpu):
    return intel_cpu_pf(cpu.signature, getattr(cpu, "platform_id", 0) or 0)


# --- identity from a CPU model and its properties ------------------------------------

def _bool_prop(value):
    if isinstance(value, str):
        return value.strip().lower() not in ("off", "false", "no", "0")
    return bool(value)


def identity(cpu_model, *prop_dicts):
    """(vendor, signature, default ucode-rev) of ``cpu_model`` with QEMU's CPU properties
    ``vendor``/``family``/``model``/``stepping`` from ``prop_dicts`` applied (later dicts
    win, like -cpu props then device_add props). (None, None, None) for an unknown model
    without such properties."""
    from .cpu import CPU_MODELS, cpuid_signature, parse_int
    known = CPU_MODELS.get(cpu_model)
    vendor, fam, mod, step = known if known else (None, None, None, None)
    vendor = vendor_name(vendor)
    for props in prop_dicts:
        props = props or {}
        if "vendor" in props:
            vendor = vendor_name(props["vendor"])
        fam = parse_int(props["family"]) if "family" in props else fam
        mod = parse_int(props["model"]) if "model" in props else mod
        step = parse_int(props["stepping"]) if "stepping" in props else step
    if None in (vendor, fam, mod, step):
        return None, None, None
    return vendor, cpuid_signature(fam, mod, step), default_ucode_rev(vendor)


def hypervisor_bit(*prop_dicts, default=True):
    """CPUID(1).ECX[31] from QEMU's ``hypervisor`` CPU property (on unless turned off)."""
    value = default
    for props in prop_dicts:
        if props and "hypervisor" in props:
            value = _bool_prop(props["hypervisor"])
    return value


# --- the update MSRs -------------------------------------------------------------------

@dataclass(frozen=True)
class UpdateResult:
    applied: bool
    reason: str
    old_rev: int | None = None          # raw MSR 0x8B before
    new_rev: int | None = None          # raw MSR 0x8B after


def _platform(cpu, platform):
    if platform is None:
        sem = getattr(cpu, "sem", None)
        platform = getattr(sem, "wrmsr_ucode", "hardware") if sem is not None else "hardware"
    if platform not in PLATFORMS:
        raise ValueError(f"microcode platform must be one of {PLATFORMS}, got {platform!r}")
    return platform


def _not_for_this_cpu(cpu, platform, vendor, trigger):
    """The refusal of a WRMSR to ``vendor``'s update trigger before looking at the
    update: QEMU ignores the write, another vendor's CPU has no such MSR. None if the
    update is to be examined."""
    old = cpu.ucode_rev
    if _platform(cpu, platform) == "qemu":
        return UpdateResult(False, "ignored: QEMU does not implement microcode updates",
                            old, old)
    if cpu.vendor != vendor:
        return UpdateResult(False, f"{trigger}, CPU is {cpu.vendor}", old, old)
    return None


def apply_update(cpu, update_bytes, platform=None):
    """WRMSR 0x79 (IA32_BIOS_UPDT_TRIG) with ``update_bytes`` (one Intel update: header +
    data [+ extended table]). ``platform``: "qemu" / "hardware"; default: the CPU's
    ``sem.wrmsr_ucode`` (or "hardware" for a bare :class:`MicrocodeState`)."""
    old = cpu.ucode_rev
    refused = _not_for_this_cpu(cpu, platform, INTEL, "MSR 0x79 is Intel's update trigger")
    if refused:
        return refused
    res = intel_fmt.parse_intel(bytes(update_bytes), strict=False)
    u = res.updates[0] if res.updates else None
    if u is None or u.offset != 0:      # only the record at the address counts
        why = "; ".join(str(d) for d in res.errors if d.record in (0, None)) or "no update"
        return UpdateResult(False, f"invalid update: {why}", old, old)
    pf = cpu_pf(cpu)
    if not sel.intel_update_matches(u, cpu.signature, pf):
        return UpdateResult(False, f"update for sig {u.signature:#x} pf {u.pf_mask:#x} does "
                            f"not match CPU sig {cpu.signature:#x} pf {pf:#x}", old, old)
    cur = cpu_revision(cpu) or 0
    if u.revision <= cur:
        return UpdateResult(False, f"revision {u.revision:#x} is not newer than {cur:#x}",
                            old, old)
    cpu.ucode_rev = raw_rev(INTEL, u.revision)
    return UpdateResult(True, f"loaded revision {u.revision:#x}", old, cpu.ucode_rev)


def apply_amd_patch(cpu, patch_bytes, platform=None):
    """WRMSR 0xC0010020 (MSR_AMD64_PATCH_LOADER) with one AMD patch (64-byte header +
    body). Under "hardware" the patch level becomes ``patch_id`` when it is newer and
    the patch is for this CPU's family and not chipset-specific."""
    old = cpu.ucode_rev
    refused = _not_for_this_cpu(cpu, platform, AMD, "MSR 0xC0010020 is AMD's patch loader")
    if refused:
        return refused
    raw = bytes(patch_bytes)
    if len(raw) < amd_fmt.PATCH_HEADER_SIZE:
        return UpdateResult(False, "invalid patch: shorter than its 64-byte header", old, old)
    f = amd_fmt.PATCH_HEADER.unpack_from(raw, 0)
    patch_id, nb_dev, sb_dev, rev_id = f[1], f[6], f[7], f[8]
    if nb_dev or sb_dev:
        return UpdateResult(False, "chipset-specific patch", old, old)
    if 0xF + (rev_id >> 12) != decode_signature(cpu.signature).family:
        return UpdateResult(False, "patch is for another family", old, old)
    if patch_id <= (cpu_revision(cpu) or 0):
        return UpdateResult(False, f"patch level {patch_id:#x} is not newer", old, old)
    cpu.ucode_rev = raw_rev(AMD, patch_id)
    return UpdateResult(True, f"loaded patch level {patch_id:#x}", old, cpu.ucode_rev)


# --- the Linux guest's early loader -------------------------------------------------------

def vendor_blob(early_microcode, vendor):
    """``<Vendor>.bin`` bytes from an early cpio / combined initrd, or the blob itself
    when it is not a cpio (a raw GenuineIntel.bin / AuthenticAMD.bin)."""
    if not early_microcode:
        return None
    data = bytes(early_microcode)
    if data[:6] in (b"070701", b"070702"):
        f = find_cpio_data(data, INTEL_PATH if vendor == INTEL else AMD_PATH)
        return f.data if f else None
    if vendor == INTEL and data[:4] == b"\x01\x00\x00\x00":
        return data
    if vendor == AMD and data[:4] == amd_fmt.CONTAINER_MAGIC_BYTES:
        return data
    return None


def loader_disabled(bsp, hypervisor, cmdline_dis=False):
    """Linux 6.1 ``load_ucode_bsp``/``check_loader_disabled_bsp``: reason or None."""
    vendor, sig = bsp.vendor, bsp.signature
    if sig is None:
        return "no CPUID signature"
    family = decode_signature(sig).family
    if vendor == INTEL and family < 6:
        return "Intel family < 6"
    if vendor == AMD and family < 0x10:
        return "AMD family < 0x10"
    if vendor not in (INTEL, AMD):
        return f"vendor {vendor}"
    if hypervisor:
        return "hypervisor bit set"
    if vendor == AMD and cpu_revision(bsp) in amd_fmt.FINAL_PATCH_LEVELS:
        return "AMD final patch level"
    if cmdline_dis:
        return "dis_ucode_ldr"
    return None


class LinuxLoader:
    """The guest's microcode loader state: the early blob, whether the loader is on, and
    the patch cached for APs (boot-time and hot-added)."""

    def __init__(self, early_microcode=None, hypervisor=True):
        self.early = bytes(early_microcode) if early_microcode else None
        self.hypervisor = hypervisor
        self.reset()

    def reset(self):
        self.disabled = "not booted"
        self.patch = None               # cached IntelUpdate / AmdPatch
        self.log = []                   # (cpu index, UpdateResult or message)

    def _parse(self, vendor):
        blob = vendor_blob(self.early, vendor)
        if blob is None:
            return []
        if vendor == INTEL:
            res = intel_fmt.parse_intel(blob, strict=False)
            # one bad record or trailing byte disables the whole scan (facts §1.6)
            return res.updates if res.ok else []
        return amd_fmt.parse_amd(blob).containers

    def _apply(self, cpu, patch):
        if cpu.vendor == INTEL:
            r = cpu.wrmsr(hw.MSR_IA32_BIOS_UPDT_TRIG, patch.raw)
        else:
            r = cpu.wrmsr(hw.MSR_AMD64_PATCH_LOADER, patch.raw)
        self.log.append((cpu.index, r))
        return r

    def boot_bsp(self, bsp):
        """Early load on the boot CPU (before the APs start)."""
        self.reset()
        self.disabled = loader_disabled(bsp, self.hypervisor)
        if self.disabled or not self.early:
            self.disabled = self.disabled or "no early microcode"
            return None
        found = self._parse(bsp.vendor)
        c = loader_cpu(bsp)
        patch = (linux.early_intel(found, c, GUEST_KERNEL) if bsp.vendor == INTEL
                 else linux.early_amd(found, c, GUEST_KERNEL))
        if patch is None:
            return None
        self._apply(bsp, patch)
        # the save pass keeps the patch now loaded; if the CPU did not take it (QEMU),
        # Linux 6.7+ keeps nothing (and 6.1's APs re-scan and also fail to load it)
        if cpu_revision(bsp) == patch.revision:
            self.patch = patch
        return patch

    def load_ap(self, cpu):
        """``load_ucode_ap`` on an AP coming up (boot-time or hot-added when onlined)."""
        if self.disabled or self.patch is None:
            return None
        p = self.patch
        c = loader_cpu(cpu)
        if cpu.vendor == INTEL:
            ok = sel.intel_update_matches(p, c.signature, c.pf_mask) and p.revision > c.revision
        else:
            # 6.1 load_ucode_amd_ap re-applies an equal level (e7ad18d1169c)
            ok = cpu.vendor == AMD and p.patch_id >= c.revision
        return self._apply(cpu, p) if ok else None
