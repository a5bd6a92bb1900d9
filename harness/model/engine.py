"""The model machine: CPUs + chipset + hot-plug block + firmware + guest, and the
deterministic scheduler that interleaves the CPUs' programs.

Scheduling: rounds over the CPUs in cpu-index order; per CPU and round, first an event
that can be taken (INIT, SMI) is taken, then the CPU's program runs one micro-step.
``run`` returns when no CPU can run (quiescence). It raises ``Hang`` when the machine
cannot make progress: every running CPU only spins (``SPIN``) for more than
``3 * ncpus + 3`` micro-steps in a row (nothing can change any more), or the step budget
is exhausted. A hang is sticky: the machine stays stuck until ``system_reset``.
"""
from __future__ import annotations

from .. import hw
from ..errors import Hang, QemuCrashed, Refused
from ..known_bugs import apic_id_holes, explain_lost_sci
from .chipset import MSG_CPU_EXISTS, MSG_SOCKET_RANGE, Lpc, Mch
from .cpu import SPIN, HALT, STEP, Cpu, Memory, model_defaults, parse_int
from .cpuhp import CpuHotplugBlock
from .firmware import make_firmware
from .guest import Guest
from . import microcode as ucode
from . import qemu_defects

SMI_EN_PORT = hw.SMI_EN_PORT
HP_LO = hw.CPUHP_BASE
HP_HI = hw.CPUHP_BASE + hw.CPUHP_LEGACY_LEN

# CS:EIP where a CPU in a known spot is (diagnosis, like `info registers`)
_WHERE_CS_EIP = {
    "pen:hlt": (hw.OVMF_POST_SMM_PEN >> 4, 0xC),        # observed: CS=9f00 EIP=000c
    "smm:first-smi-handler": (hw.DEFAULT_SMBASE >> 4, None),
}


class Machine:
    def __init__(self, config, sem, profile, max_steps=500_000, *, early_microcode=None,
                 hypervisor_bit=None, platform_id=0, defects):
        self.config = config
        self.defects = defects       # QEMU's own bugs, reproduced (harness.model.qemu_defects)
        self.dead = None             # QemuCrashed once the modelled QEMU has died
        self.heap_corrupted = False  # a CPU was unplugged (defects.heap_corrupted_by_unplug)
        self.vcpu_threads = 0        # vCPUs ever created (defects.tcg_contexts_not_recycled)
        self.sci_lost = None         # why the SCI's IOAPIC pin is stuck (Remote IRR set)
        # microcode (harness.model.microcode): the early cpio / <Vendor>.bin the guest's
        # loader sees, CPUID(1).ECX[31] (QEMU's "hypervisor" CPU property, on by
        # default), and the platform id (MSR 0x17) of CPUs without a "platform-id" prop
        self.early_microcode = early_microcode
        self.hypervisor_bit = (ucode.hypervisor_bit(config.cpu_props)
                               if hypervisor_bit is None else bool(hypervisor_bit))
        self.platform_id = platform_id
        self.sem = sem
        self.profile = profile
        self.max_steps = max_steps
        self.mem = Memory()
        self.mch = Mch(config.low_ram_bytes, config.tseg_mbytes)
        self.lpc = Lpc(config.smi_features, self._smi_sink)
        # default topology for -smp N,maxcpus=M: slot = socket-id = APIC id
        self.cpuhp = CpuHotplugBlock(range(config.maxcpus), on_eject=self._eject)
        self.cpus = []
        self.by_slot = {}
        self.bsp = None
        self.signature, self.default_ucode = model_defaults(config.cpu_model)
        self.firmware = make_firmware(self, profile)
        self.guest = Guest(self)
        self.steps = 0
        self.stuck = None            # (reason, diagnosis) once hung
        self.gpe_sts = False         # GPE0 status bit 2 (CPU hot-plug), cleared at reset
        self.ipi_log_len = 0
        for slot in range(config.cpus):
            self.device_add(slot, {}, hotplug=False)

    # --- CPUs -------------------------------------------------------------------------
    def device_add(self, slot, props, hotplug):
        """QEMU device_add of a CPU in ``slot`` (pre-plug checks, then plug)."""
        n = self.config.maxcpus
        if not 0 <= slot < n:
            raise Refused(MSG_SOCKET_RANGE.format(slot=slot, last=n - 1))
        if slot in self.by_slot:
            raise Refused(MSG_CPU_EXISTS.format(slot=slot, apic=slot))
        msg = self.lpc.device_add_refusal()
        if msg:
            raise Refused(msg)
        if self.heap_corrupted:
            self._die(qemu_defects.MSG_HEAP.format(what="device_add"), qemu_defects.HEAP_SOURCE)
        if (self.defects.tcg_contexts_not_recycled and self.vcpu_threads >= n
                and self.config.effective_tcg_thread == "multi"):
            self._die(qemu_defects.MSG_TCG_CONTEXTS)
        self.vcpu_threads += 1
        index = slot        # QEMU x86_cpu_pre_plug: cpu_index = its possible-CPU index
        vendor, signature, default_ucode = ucode.identity(self.config.cpu_model,
                                                          self.config.cpu_props, props)
        if signature is None:
            signature, default_ucode = self.signature, self.default_ucode
        rev = props.get("ucode-rev", self.config.cpu_props.get("ucode-rev"))
        rev = parse_int(rev) if rev is not None else default_ucode
        pid = props.get("platform-id", self.config.cpu_props.get("platform-id"))
        pid = parse_int(pid) if pid is not None else self.platform_id
        cpu = Cpu(index, apic_id=slot, slot=slot, sem=self.sem, mem=self.mem,
                  is_bsp=(index == 0), ucode_rev=rev, signature=signature,
                  vendor=vendor, platform_id=pid)
        self.cpus.append(cpu)
        self.cpus.sort(key=lambda c: c.index)
        self.by_slot[slot] = cpu
        if cpu.is_bsp:
            self.bsp = cpu
        gpe = self.cpuhp.plug(slot, hotplug)
        if gpe:
            self.gpe_sts = True
        return cpu, gpe

    def _eject(self, slot):
        cpu = self.by_slot.get(slot)
        if cpu is None:
            return
        d = self.defects
        if d.eject_aborts_single_threaded_tcg and self.config.effective_tcg_thread == "single":
            self._die(qemu_defects.MSG_THREAD_JOIN)
        if d.heap_corrupted_by_unplug:
            self.heap_corrupted = True
        del self.by_slot[slot]
        cpu.removed = True
        cpu.prog = None
        self.cpus.remove(cpu)
        self.guest.forget(cpu)

    def _die(self, message, source="qemu"):
        """The modelled QEMU aborts: this and every later request raise QemuCrashed.
        ``source``: "qemu" where the message is QEMU's own text, else what it rests on."""
        self.dead = QemuCrashed(qemu_defects.SIGABRT_STATUS, message, source)
        raise self.dead

    def cpu_by_apic(self, apic):
        return self.by_slot.get(apic)       # APIC id == slot in the default topology

    # --- interrupts -----------------------------------------------------------------
    def sci(self):
        """GPE status is set: the SCI (GSI 9, level) goes through the IOAPIC to the CPU
        Linux routed it to, whose ACPI code then runs \\_GPE._E02. Lost for good if QEMU
        cannot reach that CPU's local APIC (``harness.known_bugs.explain_lost_sci``)."""
        if self.sci_lost:
            return                           # Remote IRR still set: the pin is dead
        target = self.guest.sci_cpu()
        holes = [a for a in apic_id_holes(self.by_slot) if a < target.apic_id]
        if self.defects.logical_delivery_stops_at_apic_hole and holes:
            # Linux's flat logical id is 1 << its CPU number (the cpu index when
            # slots are filled in order, as in every scenario)
            self.sci_lost = explain_lost_sci(1 << target.index, True, [target.index],
                                             holes)
            return
        self.guest.gpe()

    def _smi_sink(self, broadcast, cpu):
        if broadcast:
            for c in self.cpus:              # every CPU that exists now
                c.raise_smi()
        else:
            (cpu or self.bsp).raise_smi()

    def ipi(self, src, apic, kind, vector=0):
        """Local APIC ICR write by ``src``: directed SMI, INIT or SIPI to ``apic``."""
        t = self.cpu_by_apic(apic)
        if t is None:
            return
        if kind == "smi":
            t.raise_smi()
        elif kind == "init":
            t.send_init()
        elif kind == "sipi":
            t.send_sipi(vector)
        else:
            raise ValueError(kind)

    def init_sipi_sipi(self, src, apic, vector):
        """The AP wake-up sequence (MpInitLib, OVMF's SmbaseRelocate, Linux's
        do_boot_cpu): INIT, then two SIPIs with ``vector``, one ICR write per step."""
        self.ipi(src, apic, "init")
        yield STEP
        self.ipi(src, apic, "sipi", vector)
        yield STEP
        self.ipi(src, apic, "sipi", vector)
        yield STEP

    def cpuhp_get_next(self, cpu, selector):
        """QEMU's CPU hot-plug block: select ``selector``, command GET_NEXT (the next
        CPU with a pending event), read its selector back; the sequence both OVMF's
        QemuCpuhpCollectApicIds and the ACPI CSCN method issue (docs/specs/
        acpi_cpu_hotplug.rst). Returns the data; a value below ``selector`` means none."""
        self.outl(cpu, HP_LO + hw.CPUHP_SEL, selector)
        self.outb(cpu, HP_LO + hw.CPUHP_CMD, hw.CPUHP_CMD_GET_NEXT)
        yield STEP
        return self.inl(cpu, HP_LO + hw.CPUHP_DATA)

    # --- port I/O ---------------------------------------------------------------------
    def outb(self, cpu, port, value, size=1):
        if port == hw.APM_CNT_PORT:
            self.lpc.write_apm_cnt(value, cpu)
        elif port == hw.APM_STS_PORT:
            self.lpc.write_apm_sts(value)
        elif HP_LO <= port < HP_HI:
            self.cpuhp.write(port - HP_LO, value, size)
        elif port == SMI_EN_PORT:
            self.lpc.write_smi_en(value)
        else:
            raise KeyError(f"port {port:#x} not modelled")

    def outl(self, cpu, port, value):
        self.outb(cpu, port, value, 4)

    def inb(self, cpu, port, size=1):
        if port == hw.APM_CNT_PORT:
            return self.lpc.apm_cnt
        if port == hw.APM_STS_PORT:
            return self.lpc.apm_sts
        if HP_LO <= port < HP_HI:
            return self.cpuhp.read(port - HP_LO, size)
        if port == SMI_EN_PORT:
            return self.lpc.smi_en
        raise KeyError(f"port {port:#x} not modelled")

    def inl(self, cpu, port):
        return self.inb(cpu, port, 4)

    # --- lifecycle ----------------------------------------------------------------------
    def power_on(self):
        """Start the firmware on the BSP (from the reset vector)."""
        bsp = self.bsp
        bsp.prog = self.firmware.boot_program(bsp)
        bsp.halted = False
        bsp.wait_sipi = False

    def system_reset(self):
        if self.heap_corrupted:
            self._die(qemu_defects.MSG_HEAP.format(what="system_reset"), qemu_defects.HEAP_SOURCE)
        self.stuck = None
        self.sci_lost = None         # the IOAPIC is reset
        self.gpe_sts = False         # acpi_gpe_reset
        self.mem.clear()
        self.mch.reset()
        self.lpc.reset()
        for c in self.cpus:
            c.reset()
        self.firmware.reset()
        self.guest.reset()
        # the hot-plug block keeps selector, mode and events across reset (unverified)

    # --- scheduler --------------------------------------------------------------------
    def run(self):
        if self.stuck:
            raise Hang(*self.stuck)
        steps = self.steps
        limit = steps + self.max_steps
        spins = 0
        while True:
            ran = False
            cpus = tuple(self.cpus)
            stall = 3 * len(cpus) + 3
            for cpu in cpus:
                if cpu.removed:
                    continue
                if (cpu.pending_smi or cpu.pending_init) and cpu.deliverable():
                    cpu.take_event()
                    steps += 1
                    spins = 0
                    ran = True
                if cpu.halted or cpu.prog is None:
                    continue
                ran = True
                try:
                    tok = next(cpu.prog)
                except StopIteration:
                    cpu.prog = None
                    cpu.halted = True
                    tok = 1
                steps += 1
                if tok == SPIN:
                    spins += 1
                else:
                    spins = 0
                    if tok == HALT:
                        cpu.halted = True
            if not ran:
                self.steps = steps
                return
            if spins > stall:
                self.steps = steps
                self._hang("no progress: CPUs spin waiting for each other")
            if steps > limit:
                self.steps = steps
                self._hang(f"step budget of {self.max_steps} micro-steps exhausted")

    def _hang(self, reason):
        spinning = [c for c in self.cpus if not c.halted and c.prog is not None]
        where = ", ".join(f"cpu{c.index} in {c.where}" for c in spinning)
        reason = f"{reason} ({where})" if where else reason
        diag = self.diagnosis(reason)
        self.stuck = (reason, diag)
        raise Hang(reason, diag)

    def diagnosis(self, reason):
        cpus = []
        for c in self.cpus:
            cs, eip = _WHERE_CS_EIP.get(c.where, (None, None))
            cpus.append({
                "index": c.index, "apic_id": c.apic_id, "in_smm": c.in_smm,
                "halted": self.cpu_halted(c), "smbase": c.smbase, "cs": cs, "eip": eip,
                "where": c.where, "wait_for_sipi": c.wait_sipi,
                "pending_smi": c.pending_smi, "pending_init": c.pending_init,
            })
        # the model's evidence is its scheduler's: no CPU can make a step that changes
        # anything (each halted, or spinning on a condition no other CPU will change)
        resets = getattr(self.firmware, "fatal_resets", None)
        evidence = {"kind": "reset-loop" if resets else "stall",
                    "source": resets or "model scheduler",
                    "cpus": [{"index": c["index"], "in_smm": c["in_smm"],
                              "halted": c["halted"], "cs": c["cs"], "rip": None}
                             for c in cpus]}
        return {"reason": reason, "cpus": cpus, "firmware_fatal": self.firmware.fatal,
                "steps": self.steps, "evidence": evidence}

    @staticmethod
    def cpu_halted(c):
        return bool(c.halted or c.prog is None)
