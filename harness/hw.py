"""Hardware constants of the q35/ICH9 machine, QEMU's CPU hot-plug block and OVMF.

Each constant lives here once, named, with the document or source it comes from, so
that the QEMU backend (decoding snapshots) and the model (emulating the machine) read
the same numbers. Facts and sources are collected in ``shared/design/smm-hotplug-facts.md``.
"""

# --- x86 SMM architecture (Intel SDM Vol. 3C ch. 32) --------------------------------
DEFAULT_SMBASE = 0x30000          # SMBASE after reset
SMI_ENTRY_OFFSET = 0x8000         # SMI handler entry = SMBASE + 0x8000
SAVE_STATE_OFFSET = 0xFC00        # save-state map starts at SMBASE + 0xFC00
SAVE_STATE_END = 0x10000          # ... and ends at SMBASE + 0x10000
# The SMI entry stub occupies (at most) one page at SMBASE + 0x8000 (edk2 PiSmmCpuDxeSmm
# rounds TileCode up to 4 KiB). Firmware interleaves CPUs: OVMF's tiles are 0x2000 apart,
# so CPU i's save-state map lies inside CPU (i+3)'s 32 KiB span, between the entry pages.
SMI_ENTRY_SPAN = 0x1000
# QEMU target/i386/cpu.h: HF_SMM_SHIFT = 19 (env->hflags bit "CPU is in SMM")
HFLAGS_SMM_BIT = 1 << 19
# QEMU include/exec/cpu-all.h + target/i386/cpu.h: bits of cpu->interrupt_request
# (saved in the migration stream's cpu_common section)
CPU_INTERRUPT_HARD = 0x0002
CPU_INTERRUPT_SMI = 0x0040        # CPU_INTERRUPT_TGT_EXT_2
CPU_INTERRUPT_INIT = 0x0400       # = CPU_INTERRUPT_RESET
CPU_INTERRUPT_SIPI = 0x0800       # CPU_INTERRUPT_TGT_INT_1

# --- ICH9 LPC / APM (qemu hw/isa/lpc_ich9.c, include/hw/southbridge/ich9.h) -------
APM_CNT_PORT = 0xB2               # write raises SMI when SMI_EN.APMC_EN
APM_STS_PORT = 0xB3               # scratch byte
APM_CNT_ACPI_ENABLE = 0x02        # FADT SMI_CMD values: no SMI is raised for these
APM_CNT_ACPI_DISABLE = 0x03
# hw/isa/apm.c + lpc_ich9.c ich9_apm_ctrl_changed: these two values of APM_CNT switch
# ACPI mode and are the only ones that do not raise an SMI
APM_NO_SMI = (APM_CNT_ACPI_ENABLE, APM_CNT_ACPI_DISABLE)
APM_CNT_CPU_HOTPLUG = 0x04        # OVMF_CPUHP_SMI_CMD / ICH9_APM_CNT_CPU_HOTPLUG
SMI_EN_OFFSET = 0x30              # SMI_EN = PMBASE + 0x30
SMI_EN_GBL_SMI = 1 << 0
SMI_EN_APMC = 1 << 5
SMI_EN_TCO = 1 << 13
ICH9_LPC_GEN_PMCON_1 = 0xA0
GEN_PMCON_1_SMI_LOCK = 1 << 4

# SMI feature negotiation bits (include/hw/southbridge/ich9.h)
SMI_F_BROADCAST = 1 << 0
SMI_F_CPU_HOTPLUG = 1 << 1
SMI_F_CPU_HOT_UNPLUG = 1 << 2
SMI_FEATURE_NAMES = {
    "broadcast": SMI_F_BROADCAST,
    "cpu_hotplug": SMI_F_CPU_HOTPLUG,
    "cpu_hotunplug": SMI_F_CPU_HOT_UNPLUG,
}


def smi_feature_mask(features):
    """The feature bits of a ``{name: on}`` mapping (what the host offers)."""
    return sum(bit for name, bit in SMI_FEATURE_NAMES.items() if features.get(name))


def smi_feature_names(mask):
    """The names of the feature bits set in ``mask``, in SMI_FEATURE_NAMES order (the
    model's negotiation and the snapshot decoder report features by these names)."""
    return [name for name, bit in SMI_FEATURE_NAMES.items() if mask & bit]


# fw_cfg files through which OVMF negotiates them (hw/isa/lpc_ich9.c ich9_lpc_pm_init)
FWCFG_SMI_SUPPORTED = "etc/smi/supported-features"
FWCFG_SMI_REQUESTED = "etc/smi/requested-features"
FWCFG_SMI_FEATURES_OK = "etc/smi/features-ok"
# ICH9-LPC properties that switch host features (hw/isa/lpc_ich9.c)
SMI_FEATURE_PROPERTIES = {
    "broadcast": "x-smi-broadcast",
    "cpu_hotplug": "x-smi-cpu-hotplug",
    "cpu_hotunplug": "x-smi-cpu-hotunplug",
}

# --- ACPI interrupt path of the CPU hot-plug event --------------------------------
# QEMU hw/acpi/cpu.c: acpi_send_event(ACPI_CPU_HOTPLUG_STATUS = 4) sets GPE0 status
# bit 2, handled by \_GPE._E02; hw/isa/lpc_ich9.c routes the ICH9 SCI to GSI 9, level
# triggered (the FADT's SCI_INT).
CPU_HOTPLUG_GPE_BIT = 2
SCI_GSI = 9

# --- Q35 MCH host bridge config space (include/hw/pci-host/q35.h) ------------------
MCH_EXT_TSEG_MBYTES = 0x50        # 16-bit; 0xFFFF = query
MCH_EXT_TSEG_QUERY = 0xFFFF
MCH_EXT_TSEG_MBYTES_MAX = 0xFFF   # hw/pci-host/q35.c mch_realize: larger is refused
MCH_F_SMBASE = 0x9C               # SMRAM at default SMBASE
MCH_F_SMBASE_QUERY = 0xFF
MCH_F_SMBASE_IN_RAM = 0x01
MCH_F_SMBASE_LCK = 0x02
MCH_SMRAM = 0x9D
SMRAM_D_OPEN = 1 << 6
SMRAM_D_CLS = 1 << 5
SMRAM_D_LCK = 1 << 4
SMRAM_G_SMRAME = 1 << 3
SMRAM_C_BASE_SEG = 0x02
MCH_ESMRAMC = 0x9E
ESMRAMC_H_SMRAME = 1 << 7
ESMRAMC_TSEG_SZ_MASK = 0x3 << 1
ESMRAMC_TSEG_1M = 0x0 << 1
ESMRAMC_TSEG_2M = 0x1 << 1
ESMRAMC_TSEG_8M = 0x2 << 1
ESMRAMC_TSEG_EXT = 0x3 << 1
ESMRAMC_T_EN = 1 << 0
ESMRAMC_RESET = 0x38              # SM_CACHE | SM_L1 | SM_L2


def tseg_size_bytes(esmramc, smram, ext_tseg_mbytes):
    """TSEG size as q35 decodes it (hw/pci-host/q35.c mch_update_smram): zero unless
    ESMRAMC.T_EN and SMRAM.G_SMRAME; 1/2/8 MiB by TSEG_SZ, else the extended size in
    MiB (``None`` when that is unknown)."""
    if not (esmramc & ESMRAMC_T_EN and smram & SMRAM_G_SMRAME):
        return 0
    fixed = {ESMRAMC_TSEG_1M: 1, ESMRAMC_TSEG_2M: 2, ESMRAMC_TSEG_8M: 8}
    mib = fixed.get(esmramc & ESMRAMC_TSEG_SZ_MASK, ext_tseg_mbytes)
    return None if mib is None else mib << 20


MCH_TOLUD = 0xB0                  # 16-bit, bits 15:4 = address bits 31:20
MCH_TSEGMB = 0xAC
MCH_TOLUD_MASK = 0xFFF0           # TOLUD and TSEGMB: bits 15:4 are writable
# hw/i386/pc_q35.c pc_q35_init: RAM of 0xB0000000 or more is split, 2 GiB below 4 GiB
Q35_LOWMEM_SPLIT = 0xB0000000
Q35_LOWMEM_WHEN_SPLIT = 0x80000000

# --- QEMU modern CPU hot-plug register block (docs/specs/acpi_cpu_hotplug.rst) -----
CPUHP_BASE = 0x0CD8               # ICH9_CPU_HOTPLUG_BASE
CPUHP_LEN = 12
CPUHP_SEL = 0x0                   # W: selector; R: command data 2
CPUHP_STAT = 0x4                  # R: status; W: control
CPUHP_CMD = 0x5                   # W: command
CPUHP_DATA = 0x8                  # R/W: command data
CPUHP_STAT_ENABLED = 1 << 0
CPUHP_STAT_INSERT = 1 << 1
CPUHP_STAT_REMOVE = 1 << 2
CPUHP_STAT_EJECT = 1 << 3
CPUHP_STAT_FW_REMOVE = 1 << 4
CPUHP_CMD_GET_NEXT = 0
CPUHP_CMD_OST_EVENT = 1
CPUHP_CMD_OST_STATUS = 2
CPUHP_CMD_GET_ARCH_ID = 3
CPUHP_LEGACY_LEN = 32             # legacy (pre-modern) CPU present bitmap block length

# --- OVMF and the edk2 code it is built from -----------------------------------------
# OvmfPkg/Include/OvmfPlatforms.h: where OVMF's PlatformPei puts the ICH9 PM I/O block
ICH9_PMBASE_VALUE = 0x600
SMI_EN_PORT = ICH9_PMBASE_VALUE + SMI_EN_OFFSET
# OvmfPkg/CpuHotplugSmm
FIRST_SMI_CONTEXT = DEFAULT_SMBASE            # FIRST_SMI_HANDLER_CONTEXT at 0x30000
FIRST_SMI_HANDLER = DEFAULT_SMBASE + SMI_ENTRY_OFFSET  # copied to 0x38000
APIC_ID_GATE_CLOSED = 0xFFFF_FFFF_FFFF_FFFF   # MAX_UINT64
INVALID_APIC_ID = 0xFFFF_FFFF_FFFF_FFFF
OVMF_Q35_TSEG_MBYTES_DEFAULT = 8  # PcdQ35TsegMbytes: used when the ext-TSEG query fails
OVMF_POST_SMM_PEN = 0x9F000       # CpuHotplugSmm pen page (observed CS=9f00 in the hang)
OVMF_PEN_FLAG_OFFSET = 0xFFF      # last byte of the pen page: "SMM vacated" flag
# OvmfPkg/OvmfPkgX64.dsc PcdDebugIoPort: OVMF's DEBUG() output goes to this I/O port,
# where QEMU's isa-debugcon must listen (its own default iobase is 0xE9)
OVMF_DEBUG_IO_PORT = 0x402
# UefiCpuPkg PiSmmCpuDxeSmm / SmmRelocationLib: SMBASE tiles.
# TileSize = 2 * 2^ceil(log2(TileCodeSize + TileDataSize)): 0x2000 in OVMF, both
# generations (PiSmmCpuDxeSmm.c SmmRelocateBases; SmmRelocationLib.c SmmRelocationInit)
EDK2_SMM_TILE_SIZE = 0x2000
# OvmfPkg/PlatformPei/MemDetect.c CreateSmmSmramMemoryHob (>= stable202405): the last
# SMRAM descriptor's CpuStart = TsegBase + EFI_PAGE_SIZE, where SmmRelocationLib puts tile 0
EDK2_PEI_SMM_CPU_START_OFFSET = 0x1000
# PI spec vol. 3 EFI_FIRMWARE_VOLUME_HEADER: the "_FVH" signature at offset 0x28 of a
# volume; OVMF's volumes start on 4 KiB blocks of the flash image
FVH_SIGNATURE_OFFSET = 0x28
FLASH_BLOCK_SIZE = 0x1000

# --- Intel microcode MSRs (Intel SDM Vol. 4) ----------------------------------------
MSR_IA32_PLATFORM_ID = 0x17
PLATFORM_ID_SHIFT = 50            # IA32_PLATFORM_ID bits 52:50 hold the platform id
PLATFORM_ID_MASK = 0x7
MSR_IA32_BIOS_UPDT_TRIG = 0x79
MSR_IA32_BIOS_SIGN_ID = 0x8B
MSR_AMD64_PATCH_LOADER = 0xC0010020

# --- SMM save state as QEMU writes it (target/i386/tcg/system/smm_helper.c; facts §4.1)
SMM_REVISION_ID_X86_64 = 0x00020064   # save-state revision word at SMBASE + 0xFEFC
SMM_REVISION_SMBASE_RELOC = 1 << 17   # revision bit: RSM reloads SMBASE from the save state
SAVE_STATE_SMBASE_FIELD = 0xFF00      # SMBASE field, offset from SMBASE (x86_64 layout)
SAVE_STATE_SMBASE_FIELD_32 = 0xFEF8   # the same field in the 32-bit (revision 0) layout

# --- QEMU CPU model defaults (qemu target/i386/cpu.c; microcode-facts.md §3.3) -------
QEMU_UCODE_REV_AMD_DEFAULT = 0x01000065      # ucode-rev default for AMD-vendor models
QEMU_UCODE_REV_INTEL_DEFAULT = 0x1_0000_0000  # ucode-rev default for Intel models
QEMU64_FAMILY = 15                # qemu64: AMD vendor, family 15 model 107 stepping 1
QEMU64_MODEL = 107
QEMU64_STEPPING = 1
# builtin_x86_defs: the CPU models the harness knows, name -> (vendor, family, model,
# stepping); "vendor" as the model names it (the guest reads AuthenticAMD/GenuineIntel)
QEMU_CPU_MODELS = {
    "qemu64": ("AMD", QEMU64_FAMILY, QEMU64_MODEL, QEMU64_STEPPING),
    "kvm64": ("Intel", 15, 6, 1),
    "Skylake-Client": ("Intel", 6, 94, 3),
}


def smram_in_tseg(smbase, tseg_base, tseg_size):
    """Whether a CPU's SMRAM (its SMI entry at SMBASE + 0x8000 up to the end of its
    save-state map at SMBASE + 0x10000) lies inside TSEG [base, base + size). SMBASE
    itself may lie below TSEG: edk2's PEI relocation puts CPU 0's at TSEG base - 0x7000."""
    return (tseg_base <= smbase + SMI_ENTRY_OFFSET
            and smbase + SAVE_STATE_END <= tseg_base + tseg_size)
