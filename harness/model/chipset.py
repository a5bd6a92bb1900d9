"""q35 MCH (SMRAM, TSEG, default-SMBASE window) and ICH9 LPC (APM, SMI_EN, SMI feature
negotiation, QEMU's device_add/device_del refusals). Facts §2 and §3."""
from __future__ import annotations

from .. import hw

# QEMU 7.2 error texts (QMP ``desc``), hw/acpi/ich9.c and hw/i386/pc.c / x86.c
MSG_HOTPLUG_REFUSED = "cpu hotplug with SMI wasn't enabled by firmware"
MSG_UNPLUG_REFUSED = "cpu hot-unplug with SMI wasn't enabled by firmware"
MSG_BOOT_CPU_UNPLUG = "Boot CPU is unpluggable"
MSG_LEGACY_UNPLUG = "acpi: device unplug request for not supported device type: {type}"
MSG_CPU_EXISTS = "CPU[{slot}] with APIC ID {apic} exists"
MSG_SOCKET_RANGE = "Invalid CPU socket-id: {slot} must be in range 0:{last}"
MSG_DEVICE_NOT_FOUND = "Device '{id}' not found"


class Mch:
    """Q35 host bridge registers that matter for SMRAM (facts §3)."""

    SMRAM_WMASK = hw.SMRAM_D_OPEN | hw.SMRAM_D_CLS | hw.SMRAM_D_LCK | hw.SMRAM_G_SMRAME
    ESMRAMC_WMASK = hw.ESMRAMC_H_SMRAME | hw.ESMRAMC_TSEG_SZ_MASK | hw.ESMRAMC_T_EN

    def __init__(self, low_ram_bytes: int, ext_tseg_mbytes: int):
        self.low_ram = low_ram_bytes
        self.ext_tseg_prop = ext_tseg_mbytes
        self.reset()

    def reset(self):
        self.smram = hw.SMRAM_C_BASE_SEG
        self.esmramc = hw.ESMRAMC_RESET
        self.locked = False
        # (unverified) the register is writable even when the property is 0, so a
        # query reads back 0xFFFF and OVMF falls back to its 8 MiB default
        self.ext_tseg = hw.MCH_EXT_TSEG_QUERY if self.ext_tseg_prop > 0 else 0
        self.tolud = 0
        self.tsegmb = 0
        self.f_smbase = 0
        self.f_smbase_wmask = 0xFF

    # --- config space -------------------------------------------------------------
    def read(self, reg):
        if reg == hw.MCH_SMRAM:
            return self.smram
        if reg == hw.MCH_ESMRAMC:
            return self.esmramc
        if reg == hw.MCH_EXT_TSEG_MBYTES:
            return self.ext_tseg
        if reg == hw.MCH_F_SMBASE:
            return self.f_smbase
        if reg == hw.MCH_TOLUD:
            return self.tolud
        if reg == hw.MCH_TSEGMB:
            return self.tsegmb
        raise KeyError(f"MCH register {reg:#x} not modelled")

    def write(self, reg, value):
        if reg == hw.MCH_SMRAM:
            wmask = hw.SMRAM_D_CLS if self.locked else self.SMRAM_WMASK
            new = (self.smram & ~wmask) | (value & wmask)
            new = (new & ~0x7) | hw.SMRAM_C_BASE_SEG
            if new & hw.SMRAM_D_LCK:
                self.locked = True
                new &= ~hw.SMRAM_D_OPEN
            self.smram = new
        elif reg == hw.MCH_ESMRAMC:
            if not self.locked:
                self.esmramc = (self.esmramc & ~self.ESMRAMC_WMASK) | (value & self.ESMRAMC_WMASK)
        elif reg == hw.MCH_EXT_TSEG_MBYTES:
            value &= 0xFFFF
            if self.ext_tseg_prop > 0 and value == hw.MCH_EXT_TSEG_QUERY:
                value = self.ext_tseg_prop
            self.ext_tseg = value
        elif reg == hw.MCH_F_SMBASE:
            self._write_f_smbase(value & 0xFF)
        elif reg == hw.MCH_TOLUD:
            self.tolud = value & hw.MCH_TOLUD_MASK
        elif reg == hw.MCH_TSEGMB:
            self.tsegmb = value & hw.MCH_TOLUD_MASK
        else:
            raise KeyError(f"MCH register {reg:#x} not modelled")

    def _write_f_smbase(self, value):
        # QEMU mch_update_smbase_smram: the wmask applies first, then the state machine
        wmask = self.f_smbase_wmask
        reg = (self.f_smbase & ~wmask) | (value & wmask)
        if wmask == 0xFF:
            if reg == hw.MCH_F_SMBASE_QUERY:
                self.f_smbase_wmask = hw.MCH_F_SMBASE_LCK
                self.f_smbase = hw.MCH_F_SMBASE_IN_RAM
            else:
                self.f_smbase = 0
            return
        if reg & hw.MCH_F_SMBASE_LCK:
            self.f_smbase_wmask = 0
            self.f_smbase = hw.MCH_F_SMBASE_LCK
        else:
            self.f_smbase = reg

    @property
    def f_smbase_locked(self):
        return self.f_smbase == hw.MCH_F_SMBASE_LCK and self.f_smbase_wmask == 0

    # --- TSEG ---------------------------------------------------------------------
    @property
    def tseg_size(self):
        return hw.tseg_size_bytes(self.esmramc, self.smram, self.ext_tseg_prop)

    @property
    def tseg_base(self):
        return self.low_ram - self.tseg_size

    def in_tseg(self, addr):
        size = self.tseg_size
        return size > 0 and self.low_ram - size <= addr < self.low_ram

    def registers(self):
        return {"smram": self.smram, "esmramc": self.esmramc,
                "ext_tseg_mbytes": self.ext_tseg, "tolud": self.tolud,
                "f_smbase": self.f_smbase}


class Lpc:
    """ICH9 LPC: APM ports, SMI_EN, GEN_PMCON_1.SMI_LOCK, SMI feature negotiation.

    ``smi_sink(broadcast: bool, cpu)`` is called when a write to APM_CNT raises an SMI.
    """

    def __init__(self, smi_features: dict, smi_sink):
        self.host = hw.smi_feature_mask(smi_features)
        self.smi_sink = smi_sink
        self.apm_cnt = 0
        self.apm_sts = 0
        self.reset()

    def reset(self):
        # APM_CNT/APM_STS keep their values across reset (QEMU has no reset for them)
        self.smi_en = 0                 # machine has smm=on: APMC_EN not pre-set
        self.smi_en_wmask = 0xFFFFFFFF
        self.gen_pmcon_1 = 0
        self.sci_en = False
        self.requested = 0
        self.features_ok = 0
        self.negotiated = 0

    # --- fw_cfg negotiation (facts §2.2) ------------------------------------------
    def fw_cfg_files(self):
        if self.host == 0:
            return {}
        return {hw.FWCFG_SMI_SUPPORTED: 8, hw.FWCFG_SMI_REQUESTED: 8, hw.FWCFG_SMI_FEATURES_OK: 1}

    def read_supported(self):
        return self.host

    def write_requested(self, value):
        self.requested = value & 0xFFFFFFFFFFFFFFFF

    def read_features_ok(self):
        """Reading features-ok runs QEMU's validation callback."""
        if self.features_ok:
            return 1
        req = self.requested
        if req & ~self.host:
            return 0
        hp = req & (hw.SMI_F_CPU_HOTPLUG | hw.SMI_F_CPU_HOT_UNPLUG)
        if hp and not req & hw.SMI_F_BROADCAST:
            return 0
        if req & hw.SMI_F_CPU_HOT_UNPLUG and not req & hw.SMI_F_CPU_HOTPLUG:
            return 0
        self.negotiated = req
        self.features_ok = 1
        return 1

    def features(self):
        return {"requested": self.requested, "negotiated": self.negotiated,
                "ok": bool(self.features_ok), "names": hw.smi_feature_names(self.negotiated)}

    # --- QEMU's pre-plug / unplug-request checks (facts §2.3) -----------------------
    def device_add_refusal(self):
        n = self.negotiated
        if n & hw.SMI_F_BROADCAST and not n & hw.SMI_F_CPU_HOTPLUG:
            return MSG_HOTPLUG_REFUSED
        return None

    def device_del_refusal(self):
        n = self.negotiated
        if n & hw.SMI_F_BROADCAST and not n & hw.SMI_F_CPU_HOT_UNPLUG:
            return MSG_UNPLUG_REFUSED
        return None

    @property
    def smi_upcall(self):
        """ACPI tables get \\_SB.PCI0.SMI0 (SMI before Notify) — smi_on_cpuhp."""
        return bool(self.negotiated & hw.SMI_F_CPU_HOTPLUG)

    @property
    def fw_unplugs_cpu(self):
        return bool(self.negotiated & hw.SMI_F_CPU_HOT_UNPLUG)

    # --- I/O ----------------------------------------------------------------------
    def write_apm_cnt(self, value, cpu):
        value &= 0xFF
        self.apm_cnt = value
        if value == hw.APM_CNT_ACPI_ENABLE:
            self.sci_en = True
            return
        if value == hw.APM_CNT_ACPI_DISABLE:
            self.sci_en = False
            return
        if self.smi_en & hw.SMI_EN_APMC:
            self.smi_sink(bool(self.negotiated & hw.SMI_F_BROADCAST), cpu)

    def write_apm_sts(self, value):
        self.apm_sts = value & 0xFF

    def write_smi_en(self, value):
        wmask = self.smi_en_wmask
        self.smi_en = (self.smi_en & ~wmask) | (value & wmask)

    def write_gen_pmcon_1(self, value):
        if self.gen_pmcon_1 & hw.GEN_PMCON_1_SMI_LOCK:
            value |= hw.GEN_PMCON_1_SMI_LOCK
        self.gen_pmcon_1 = value & 0xFF
        if value & hw.GEN_PMCON_1_SMI_LOCK:
            self.smi_en_wmask &= ~hw.SMI_EN_GBL_SMI

    def registers(self):
        return {"apm_cnt": self.apm_cnt, "apm_sts": self.apm_sts, "smi_en": self.smi_en}
