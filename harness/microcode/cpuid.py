"""CPUID(1).EAX encoding and decoding, MSR 0x17 and MSR 0x8B decoding, and the loader's firmware file names.

Why a module: Intel matching, AMD family rules and the file names used by the kernel all
derive family/model/stepping from the same signature word, with vendor-specific
quirks (facts §1.5, §2.2). Keeping the bit arithmetic here means it is written once.
"""

from collections import namedtuple

from harness.hw import PLATFORM_ID_MASK, PLATFORM_ID_SHIFT  # MSR 0x17 bits 52:50 (facts §1.5)


Signature = namedtuple("Signature", "family model stepping")


def cpuid_signature(family, model, stepping):
    """CPUID(1).EAX from the display family/model/stepping (Intel SDM Vol. 2A, CPUID
    "Version Information"; AMD encodes alike). Family 15 and up put family - 15 in the
    extended family field; only families 6 and 15 and up carry model bits 7:4 in the
    extended model field, so a family below 6 keeps model bits 3:0 only. The model, the
    QEMU backend (from /proc/cpuinfo) and the microcode tools all encode here; the
    inverse is :func:`decode_signature`."""
    base_family = min(family, 0xF)
    ext_family = family - 0xF if family >= 0xF else 0
    if family in (6, 0xF) or family > 0xF:
        ext_model, base_model = model >> 4, model & 0xF
    else:
        ext_model, base_model = 0, model & 0xF
    return ((ext_family & 0xFF) << 20 | (ext_model & 0xF) << 16 | base_family << 8
            | base_model << 4 | (stepping & 0xF))


def decode_signature(eax):
    """Family/model/stepping as Linux computes them from CPUID(1).EAX (x86_family/x86_model)."""
    family = (eax >> 8) & 0xF
    if family == 0xF:
        family += (eax >> 20) & 0xFF
    model = (eax >> 4) & 0xF
    if family >= 6:
        model += ((eax >> 16) & 0xF) << 4
    return Signature(family, model, eax & 0xF)


def platform_id_from_msr(value):
    """Platform id 0..7 from the 64-bit IA32_PLATFORM_ID (MSR 0x17) value."""
    return (value >> PLATFORM_ID_SHIFT) & PLATFORM_ID_MASK


def intel_cpu_pf(eax, platform_id):
    """The one-hot pf mask Linux uses: 1 << id, or 0 on CPUs without MSR 0x17 (facts §1.5)."""
    family, model, _ = decode_signature(eax)
    if platform_id is None or not (model >= 5 or family > 6):
        return 0
    if not 0 <= platform_id <= 7:
        raise ValueError(f"platform id must be 0..7, got {platform_id}")
    return 1 << platform_id


def intel_fw_name(eax):
    """``intel-ucode/FF-MM-SS`` as requested by the late loader."""
    f, m, s = decode_signature(eax)
    return f"intel-ucode/{f:02x}-{m:02x}-{s:02x}"


def ucode_revision(vendor, raw):
    """The revision in a raw MSR 0x8B (IA32_BIOS_SIGN_ID / AMD PATCH_LEVEL) value, as
    Linux reports it (/proc/cpuinfo ``microcode``): the high 32 bits on Intel (SDM
    §9.11.7, facts §1.7), the low 32 bits on AMD (facts §2.2). None stays None."""
    if raw is None:
        return None
    return (raw >> 32) & 0xFFFFFFFF if vendor == "GenuineIntel" else raw & 0xFFFFFFFF


def amd_fw_name(eax):
    """``amd-ucode/microcode_amd[_famXXh].bin`` (facts §2.2)."""
    family = decode_signature(eax).family
    if family < 0x15:
        return "amd-ucode/microcode_amd.bin"
    return f"amd-ucode/microcode_amd_fam{family:02x}h.bin"
