"""OVMF, with and without SMM, as the programs the CPUs run (facts §5, §6).

Boot (on the BSP): PEI switches the CPU hot-plug block to modern and counts CPUs,
queries extended TSEG and SMRAM-at-default-SMBASE, programs TSEG; DXE enables
APMC SMIs and negotiates SMI features (SmmControl2Dxe), starts the APs
(MpInitLib INIT-SIPI-SIPI), relocates every present CPU (one directed SMI at a time,
processor numbers in APIC id order) into the tiles of the image's edk2 generation
(``harness.firmware``: PiSmmCpuDxeSmm in DXE up to stable202402, SmmRelocationLib in
PEI from stable202405; the order of SMIs is the same, the addresses differ), loads CpuHotplugSmm (pen + first SMI handler at
0x38000), locks SMRAM at ReadyToLock, then hands over to the guest OS.

Runtime SMM: every SMI enters ``smm_entry`` (SmiRendezvous): the BSP (monarch) runs
CpuHotplugMmi (collection, ProcessHotAddedCpus/SmbaseRelocate, UnplugCpus), releases
the APs, and at exit the eject handler writes 0x08 for every CPU to eject.

Firmware errors that edk2 turns into ASSERT/CpuDeadLoop are modelled as a dead loop
(``fatal``): the CPU spins there forever, which the scheduler reports as a hang.
"""
from __future__ import annotations

from dataclasses import replace

from .. import hw
from ..firmware import FirmwareProfile
from .cpu import HALT, SPIN, STEP

INVALID = hw.INVALID_APIC_ID
FW_AP_VECTOR = 0x9E          # where the model's MpInitLib parks APs (a HLT loop)
SMI_EN_PORT = hw.SMI_EN_PORT
HP = hw.CPUHP_BASE


class _Session:
    __slots__ = ("released",)

    def __init__(self):
        self.released = False


class Ovmf:
    """OVMF firmware state for one boot (reset by ``reset``)."""

    def __init__(self, machine, profile: FirmwareProfile):
        self.m = machine
        self.profile = profile
        self.reset()

    def reset(self):
        self.fatal = None               # message of the ASSERT/dead loop, if any
        self.fatal_resets = None        # the real firmware resets instead: on what seen
        self.log = []
        self.possible = 0
        self.present = 0
        self.hp_apic = []               # CPU_HOT_PLUG_DATA.ApicId[]
        self.smbase_tbl = []            # CPU_HOT_PLUG_DATA.SmBase[]
        self.selector_map = []          # CPU_HOT_EJECT_DATA.QemuSelectorMap[]
        self.eject_handler = False
        self.rebased = []
        self.ap_checked_in = set()
        self.hotplug_ready = False      # CpuHotplugSmm loaded
        self.at_default_smbase = False
        self.session = None
        # FIRST_SMI_HANDLER_CONTEXT at 0x30000 and the pen's flag byte
        self.gate = hw.APIC_ID_GATE_CLOSED
        self.new_smbase = 0
        self.about_to_leave = 0
        self.pen_flag = 0
        self.added = []                 # (slot, apic) added by CpuHotplugMmi
        self.removed = []               # (slot, apic) removed

    # --- helpers ----------------------------------------------------------------------
    def _fatal(self, cpu, msg):
        self.fatal = msg
        self.log.append(f"FATAL: {msg}")
        cpu.where = "firmware:dead-loop"
        while True:
            yield SPIN

    def _install(self, addr, factory):
        self.m.mem.code[addr] = factory

    # --- boot ---------------------------------------------------------------------------
    def boot_program(self, bsp):
        m = self.m
        prof = self.profile
        bsp.where = "firmware:pei"
        # PlatformInitLib: legacy -> modern switch (32-bit write of 0), count CPUs
        m.outl(bsp, HP + hw.CPUHP_SEL, 0)
        yield STEP
        m.outb(bsp, HP + hw.CPUHP_CMD, hw.CPUHP_CMD_GET_NEXT)
        yield STEP
        present = possible = 0
        while True:
            m.outl(bsp, HP + hw.CPUHP_SEL, possible)
            yield STEP
            if m.inl(bsp, HP + hw.CPUHP_DATA) != possible:
                break
            if m.inb(bsp, HP + hw.CPUHP_STAT) & hw.CPUHP_STAT_ENABLED:
                present += 1
            possible += 1
            yield STEP
        if present == 0:
            yield from self._fatal(bsp, "Broken CPU hotplug register block found")
        self.present, self.possible = present, possible

        pei_relocation = prof.smm and prof.layout is not None and prof.layout.kind == "pei"
        if prof.smm:
            yield from self._pei_smram(bsp)
            if pei_relocation:       # edk2 >= stable202405: SmmRelocationLib in PEI
                yield from self._start_aps(bsp)
                yield from self._pismmcpu_relocate(bsp)
            bsp.where = "firmware:dxe"
            if prof.min_tseg_mbytes and m.mch.tseg_size < prof.min_tseg_mbytes << 20:
                why = (f"SMRAM of {m.mch.tseg_size >> 20} MiB cannot hold the SMM core "
                       f"and drivers (needs {prof.min_tseg_mbytes} MiB)")
                if pei_relocation:
                    # measured on OVMF 2026.08: the BSP stays in SMM at its relocated
                    # SMBASE (its SMI count one above the APs'), the APs halted
                    self._install(self.smbase_tbl[0] + hw.SMI_ENTRY_OFFSET,
                                  lambda cpu: self._fatal(cpu, why))
                    m.ipi(bsp, bsp.apic_id, "smi")
                    while True:
                        yield SPIN
                # an observation, not a mechanism: OVMF 2022.11 on QEMU 7.2.22 resets the
                # machine every 3.3 s from here (10 guest RESET events in 25 s), no CPU
                # relocated; why it resets rather than dead-loops is not traced in edk2
                self.fatal_resets = ("observation: OVMF 2022.11 on QEMU 7.2.22 resets "
                                     "the machine every 3.3 s")
                yield from self._fatal(bsp, why)
            ok = yield from self._smm_control2(bsp)
            if not ok:
                return
        if not pei_relocation:
            yield from self._start_aps(bsp)
        if prof.smm and not pei_relocation:
            yield from self._pismmcpu_relocate(bsp)
        if prof.smm:
            yield from self._cpu_hotplug_smm_init(bsp)
            # ReadyToLock: SmramAccessLock (D_LCK) and F_SMBASE LCK
            m.mch.write(hw.MCH_SMRAM, m.mch.read(hw.MCH_SMRAM) | hw.SMRAM_D_LCK)
            yield STEP
            if self.at_default_smbase:
                m.mch.write(hw.MCH_F_SMBASE, hw.MCH_F_SMBASE_LCK)
                yield STEP
        bsp.where = "firmware:exit-boot-services"
        yield STEP
        yield from m.guest.os_boot(bsp)

    def _start_aps(self, bsp):
        """MpInitLib: wake every present AP (INIT-SIPI-SIPI), they park in a HLT loop."""
        m = self.m
        self._install(FW_AP_VECTOR << 12, self._fw_ap)
        aps = [c for c in m.cpus if not c.is_bsp]
        for ap in aps:
            yield from m.init_sipi_sipi(bsp, ap.apic_id, FW_AP_VECTOR)
        while len(self.ap_checked_in) < len(aps):
            yield SPIN

    def _fw_ap(self, cpu):
        cpu.where = "firmware:ap-hlt-loop"
        self.ap_checked_in.add(cpu.index)
        yield STEP
        while True:
            yield HALT

    def _pei_smram(self, bsp):
        mch = self.m.mch
        # Q35TsegMbytesInitialization
        mch.write(hw.MCH_EXT_TSEG_MBYTES, hw.MCH_EXT_TSEG_QUERY)
        yield STEP
        v = mch.read(hw.MCH_EXT_TSEG_MBYTES)
        mbytes = self.profile.tseg_mbytes_default if v == hw.MCH_EXT_TSEG_QUERY else v
        self.tseg_mbytes = mbytes
        # Q35SmramAtDefaultSmbaseInitialization
        mch.write(hw.MCH_F_SMBASE, hw.MCH_F_SMBASE_QUERY)
        yield STEP
        self.at_default_smbase = mch.read(hw.MCH_F_SMBASE) == hw.MCH_F_SMBASE_IN_RAM
        # SmmAccessPei
        tolud_mb = mch.low_ram >> 20
        mch.write(hw.MCH_TOLUD, tolud_mb << 4)
        mch.write(hw.MCH_TSEGMB, (tolud_mb - mbytes) << 4)
        sz = {1: hw.ESMRAMC_TSEG_1M, 2: hw.ESMRAMC_TSEG_2M,
              8: hw.ESMRAMC_TSEG_8M}.get(mbytes, hw.ESMRAMC_TSEG_EXT)
        es = mch.read(hw.MCH_ESMRAMC) & ~(hw.ESMRAMC_H_SMRAME | hw.ESMRAMC_TSEG_SZ_MASK)
        mch.write(hw.MCH_ESMRAMC, es | sz | hw.ESMRAMC_T_EN)
        yield STEP
        sm = mch.read(hw.MCH_SMRAM) & ~(hw.SMRAM_D_LCK | hw.SMRAM_D_OPEN)
        mch.write(hw.MCH_SMRAM, sm | hw.SMRAM_G_SMRAME)
        yield STEP

    def _smm_control2(self, bsp):
        m, lpc = self.m, self.m.lpc
        smi_en = m.inl(bsp, SMI_EN_PORT)
        yield STEP
        if smi_en & hw.SMI_EN_APMC:
            yield from self._fatal(bsp, "this Q35 implementation lacks SMI")
        m.outl(bsp, SMI_EN_PORT, smi_en | hw.SMI_EN_APMC | hw.SMI_EN_GBL_SMI)
        yield STEP
        lpc.write_gen_pmcon_1(lpc.gen_pmcon_1 | hw.GEN_PMCON_1_SMI_LOCK)
        yield STEP
        m.outl(bsp, SMI_EN_PORT, m.inl(bsp, SMI_EN_PORT) & ~hw.SMI_EN_GBL_SMI)
        yield STEP
        if not m.inl(bsp, SMI_EN_PORT) & hw.SMI_EN_GBL_SMI:
            yield from self._fatal(bsp, "failed to lock down GBL_SMI_EN")
        # NegotiateSmiFeatures
        if not self.profile.negotiates_smi_features:
            return True
        files = lpc.fw_cfg_files()
        if not files:
            self.log.append("SMI feature negotiation unavailable")
            return True
        supported = lpc.read_supported()
        yield STEP
        requested = supported & (hw.SMI_F_BROADCAST | hw.SMI_F_CPU_HOTPLUG
                                 | hw.SMI_F_CPU_HOT_UNPLUG)
        lpc.write_requested(requested)
        yield STEP
        if lpc.read_features_ok() != 1:
            yield from self._fatal(bsp, "negotiating SMI features failed "
                                        f"(requested {requested:#x})")
        yield STEP
        if not requested & hw.SMI_F_CPU_HOTPLUG:
            self.log.append("CPU hotplug not negotiated")
        if not requested & hw.SMI_F_CPU_HOT_UNPLUG:
            self.log.append("CPU hot-unplug not negotiated")
        return True

    def _pismmcpu_relocate(self, bsp):
        m, prof = self.m, self.profile
        bsp.where = "firmware:pismmcpu"
        n = self.possible
        tseg_top = m.mch.tseg_base + m.mch.tseg_size
        self.smbase_tbl = [prof.smbase(i, n, m.mch.tseg_base, tseg_top) for i in range(n)]
        lowest = self.smbase_tbl[0] + hw.SMI_ENTRY_OFFSET
        if n and (m.mch.tseg_size == 0 or lowest < m.mch.tseg_base):
            yield from self._fatal(bsp, "SMRAM too small for the SMBASE tiles")
        apics = sorted(c.apic_id for c in m.cpus)        # MpInitLib order: by APIC id
        self.hp_apic = apics + [INVALID] * (n - len(apics))
        self.selector_map = [INVALID] * n
        for i, base in enumerate(self.smbase_tbl):
            self._install(base + hw.SMI_ENTRY_OFFSET, self._entry_factory(i))
        self._install(hw.FIRST_SMI_HANDLER, self._relocation_handler)
        yield STEP
        self.rebased = [False] * n
        bsp_slot = self.hp_apic.index(bsp.apic_id)
        for i, apic in enumerate(apics):
            if i == bsp_slot:
                continue
            m.ipi(bsp, apic, "smi")
            yield STEP
            while not self.rebased[i]:
                yield SPIN
        m.ipi(bsp, bsp.apic_id, "smi")        # the BSP relocates itself last
        yield STEP
        bsp.where = "firmware:pismmcpu"
        yield STEP

    def _relocation_handler(self, cpu):
        """PiSmmCpuDxeSmm's SmmInitHandler at 0x38000 during boot."""
        cpu.where = "smm:relocate"
        yield STEP
        idx = self.hp_apic.index(cpu.apic_id)
        ss = cpu.save_state()
        ss["smbase"] = self.smbase_tbl[idx]
        yield STEP
        cpu.rsm()
        self.rebased[idx] = True          # SemaphoreHook: set on the way out of RSM
        yield STEP

    def _cpu_hotplug_smm_init(self, bsp):
        if not self.at_default_smbase or self.possible <= 1:
            self.log.append("CpuHotplugSmm: unsupported, not loaded")
            return
        self._install(self.profile.pen_address, self._pen)
        self._install(hw.FIRST_SMI_HANDLER, self._first_smi_handler)
        self.gate = hw.APIC_ID_GATE_CLOSED
        self.hotplug_ready = True
        yield STEP

    # --- runtime SMM ----------------------------------------------------------------
    def _entry_factory(self, idx):
        return lambda cpu: self._smm_entry(cpu, idx)

    def _smm_entry(self, cpu, idx):
        """SmiRendezvous on the SMI entry stub of processor ``idx``."""
        m = self.m
        if cpu.is_bsp:
            cpu.where = "smm:monarch"
            sess = self.session = _Session()
            yield STEP
            if self.hotplug_ready:
                yield from self._cpu_hotplug_mmi(cpu)
            sess.released = True         # (AddProcessor/RemoveProcessor take effect here)
            yield STEP
            yield from self._rendezvous_exit(cpu, idx)
            self.session = None
            cpu.rsm()
            yield STEP
            return
        cpu.where = "smm:ap-rendezvous"
        while True:
            sess = self.session
            if sess is not None and not sess.released:
                break
            bsp = m.bsp
            if bsp is not None and not bsp.in_smm and not bsp.pending_smi:
                bsp.raise_smi()          # edk2: AP times out, pulls the BSP into SMM
                yield STEP
            else:
                yield SPIN
        while not sess.released:
            yield SPIN
        yield from self._rendezvous_exit(cpu, idx)
        cpu.rsm()
        yield STEP

    def _rendezvous_exit(self, cpu, idx):
        """SmmCpuFeaturesRendezvousExit -> EjectCpu (OVMF SmmCpuFeaturesLib)."""
        if not self.eject_handler:
            return
        m = self.m
        if cpu.is_bsp:
            cpu.where = "smm:eject"
            for i, sel in enumerate(self.selector_map):
                if sel == INVALID:
                    continue
                m.outl(cpu, HP + hw.CPUHP_SEL, sel)
                yield STEP
                m.outb(cpu, HP + hw.CPUHP_STAT, hw.CPUHP_STAT_EJECT)
                self.selector_map[i] = INVALID
                yield STEP
            self.eject_handler = False
            return
        if idx < len(self.selector_map) and self.selector_map[idx] != INVALID:
            cpu.where = "smm:ejected-hlt"
            while True:
                yield HALT               # cli; hlt until QEMU removes the CPU
        if self.profile.delay_smm_exit:
            cpu.where = "smm:delay-exit"
            while self.eject_handler:
                yield SPIN

    def _cpu_hotplug_mmi(self, cpu):
        m = self.m
        cpu.where = "smm:cpuhotplugmmi"
        if m.inb(cpu, hw.APM_CNT_PORT) != hw.APM_CNT_CPU_HOTPLUG:
            yield STEP
            return
        yield STEP
        # QemuCpuhpCollectApicIds
        plugged, unplug = [], []
        limit = self.possible - 1
        cur = 0
        while cur < self.possible:
            pending = yield from m.cpuhp_get_next(cpu, cur)
            if pending < cur:
                break
            cur = pending
            st = m.inb(cpu, HP + hw.CPUHP_STAT)
            yield STEP
            if st & hw.CPUHP_STAT_INSERT:
                if st & hw.CPUHP_STAT_FW_REMOVE or not st & hw.CPUHP_STAT_ENABLED:
                    yield from self._fatal(cpu, "QemuCpuhpCollectApicIds: EFI_PROTOCOL_ERROR")
                target = plugged
            elif st & hw.CPUHP_STAT_FW_REMOVE:
                if not st & hw.CPUHP_STAT_ENABLED:
                    yield from self._fatal(cpu, "QemuCpuhpCollectApicIds: EFI_PROTOCOL_ERROR")
                target = unplug
            elif st & hw.CPUHP_STAT_REMOVE:
                target = None            # OSPM's business
            else:
                break                    # no event
            if target is not None:
                if len(target) >= limit:
                    yield from self._fatal(cpu, "QemuCpuhpCollectApicIds: EFI_BUFFER_TOO_SMALL")
                m.outb(cpu, HP + hw.CPUHP_CMD, hw.CPUHP_CMD_GET_ARCH_ID)
                apic = m.inl(cpu, HP + hw.CPUHP_DATA) | (m.inl(cpu, HP + hw.CPUHP_SEL) << 32)
                target.append((apic, cur))
                yield STEP
            cur += 1
        if plugged:
            yield from self._process_hot_added(cpu, plugged)
        if unplug:
            yield from self._unplug_cpus(cpu, unplug)

    def _process_hot_added(self, cpu, plugged):
        prof = self.profile
        self._install(prof.pen_address, self._pen)   # re-copy the pen
        yield STEP
        n = len(self.hp_apic)
        new_slot = 0
        for apic, _sel in plugged:
            if prof.skip_known_apic_ids and apic in self.hp_apic:
                yield STEP
                continue
            while new_slot < n and self.hp_apic[new_slot] != INVALID:
                new_slot += 1
            if new_slot == n:
                yield from self._fatal(cpu, "ProcessHotAddedCpus: EFI_OUT_OF_RESOURCES")
            self.hp_apic[new_slot] = apic
            yield from self._smbase_relocate(cpu, apic, self.smbase_tbl[new_slot])
            self.added.append((new_slot, apic))        # AddProcessor
            new_slot += 1

    def _smbase_relocate(self, bsp, apic, smbase):
        m = self.m
        bsp.where = "smm:smbase-relocate"
        if smbase > 0xFFFFFFFF:
            yield from self._fatal(bsp, "SmbaseRelocate: SMBASE above 4 GiB")
        self.about_to_leave = 0
        self.pen_flag = 0
        yield STEP
        if self.profile.directed_smi_before_init:
            m.ipi(bsp, apic, "smi")
            yield STEP
        yield from m.init_sipi_sipi(bsp, apic, self.profile.pen_address >> 12)
        self.new_smbase = smbase & 0xFFFFFFFF
        yield STEP
        old = self.gate                                # lock cmpxchg
        if old == hw.APIC_ID_GATE_CLOSED:
            self.gate = apic
        yield STEP
        if old != hw.APIC_ID_GATE_CLOSED:
            yield from self._fatal(bsp, "SmbaseRelocate: ApicIdGate: EFI_PROTOCOL_ERROR")
        bsp.where = "smm:wait-about-to-leave-smm"
        while self.about_to_leave == 0:
            yield SPIN
        bsp.where = "smm:wait-pen"
        while self.pen_flag == 0:
            yield SPIN
        bsp.where = "smm:cpuhotplugmmi"

    def _first_smi_handler(self, cpu):
        """FirstSmiHandler.nasm at 0x38000 (SMBASE still the default)."""
        cpu.where = "smm:first-smi-handler"
        apic = cpu.apic_id                             # CPUID 0xB / 1
        while True:
            if self.gate == apic:                      # lock cmpxchg gate: own id -> closed
                self.gate = hw.APIC_ID_GATE_CLOSED
                break
            yield SPIN
        yield STEP
        ss = cpu.save_state()
        field = hw.SAVE_STATE_SMBASE_FIELD if ss["revision"] & 0xFFFF else hw.SAVE_STATE_SMBASE_FIELD_32
        assert field == hw.SAVE_STATE_SMBASE_FIELD
        ss["smbase"] = self.new_smbase
        yield STEP
        self.about_to_leave = 1
        yield STEP
        cpu.rsm()
        yield STEP

    def _pen(self, cpu):
        """PostSmmPen.nasm: DS := CS; byte [0xFFF] := 1; loop { cli; hlt }."""
        cpu.where = "pen"
        yield STEP
        self.pen_flag = 1
        yield STEP
        cpu.where = "pen:hlt"
        while True:
            yield HALT

    def _unplug_cpus(self, cpu, unplug):
        found = False
        bsp_slot = self.hp_apic.index(cpu.apic_id) if cpu.apic_id in self.hp_apic else -1
        for apic, sel in unplug:
            if apic not in self.hp_apic:
                yield STEP
                continue
            slot = self.hp_apic.index(apic)
            if slot == bsp_slot:
                yield from self._fatal(cpu, "RemoveProcessor: EFI_UNSUPPORTED (BSP)")
            self.hp_apic[slot] = INVALID               # RemoveProcessor
            if self.selector_map[slot] != INVALID:
                yield from self._fatal(cpu, "UnplugCpus: EFI_ALREADY_STARTED")
            self.selector_map[slot] = sel
            self.removed.append((slot, apic))
            found = True
            yield STEP
        if found:
            self.eject_handler = True


class OvmfNoSmm(Ovmf):
    """OVMF without SMM: never relocates, never negotiates, never sets APMC_EN."""

    def __init__(self, machine, profile):
        profile = replace(profile, smm=False, negotiates_smi_features=False)
        super().__init__(machine, profile)


def make_firmware(machine, profile):
    return Ovmf(machine, profile) if profile.smm else OvmfNoSmm(machine, profile)
