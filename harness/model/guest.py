"""What the Linux guest does that matters for SMM hot-plug (facts §1.7, §5.4, §5.5).

- Boot: onlines every present CPU with INIT-SIPI-SIPI (APIC id order), then idles.
- ACPI ``\\_GPE._E02`` -> ``\\_SB.CPUS.CSCN`` exactly as QEMU's AML does: collect
  insert events, eject requests (Notify 3, CRMV := 1); if the SMI upcall is in the
  tables and >= 1 CPU was collected, OUT 0xB2 = 4; then Notify(1) and CINS := 1.
- Eject request: offline the CPU, then ``_EJ0`` -> CEJ0: CEJF := 1 + SMI 4 when the
  firmware ejects (CPU_HOT_UNPLUG negotiated), else CEJ0 := 1 (QEMU ejects at once).
- ``online``/``offline`` as ``echo 1/0 > /sys/devices/system/cpu/cpuN/online``.
- ``smi``: OUT 0xB3 (data) then OUT 0xB2 (value) from the BSP.

Guest work runs as tasks on the BSP's idle loop. Offline CPUs sit in ``play_dead``
(a HLT loop); hot-added CPUs stay offline until ``online`` (no udev in the guest).
Waits that Linux bounds with a timeout are bounded here too (``CALLIN_TIMEOUT``).
"""
from __future__ import annotations

from collections import deque

from .. import hw
from .cpu import HALT, STEP
from .microcode import LinuxLoader

TRAMPOLINE_VECTOR = 0x99       # the model's real-mode trampoline page (arbitrary, < 1 MiB)
CALLIN_TIMEOUT = 2000          # micro-steps Linux waits for an AP (do_boot_cpu: 10 s)
HP = hw.CPUHP_BASE


class Guest:
    def __init__(self, machine):
        self.m = machine
        # early microcode loader (facts microcode §3.3): BSP at boot, APs when they start
        self.ucode = LinuxLoader(getattr(machine, "early_microcode", None),
                                 getattr(machine, "hypervisor_bit", True))
        self.reset()

    def reset(self):
        self.booted = False
        self.online = set()           # cpu indices the OS runs
        self.known = set()            # slots the OS knows as present CPUs
        self.tasks = {}               # cpu index -> deque of task generators
        self.want_dead = set()
        self.smi_upcall = False       # \_SB.PCI0.SMI0 in the DSDT
        self.fw_unplugs = False       # CEJ0 lets the firmware eject
        self.notifications = []       # (slot, event) Notify()s the OS received
        self.errors = []
        self.sci_index = None         # the CPU the SCI (IRQ 9) is routed to
        self.ucode.reset()

    # --- plumbing -------------------------------------------------------------------
    def post(self, cpu, task):
        self.tasks.setdefault(cpu.index, deque()).append(task)
        self.wake(cpu)

    @staticmethod
    def wake(cpu):
        """An IPI/interrupt for the OS: ends a HLT (not wait-for-SIPI, not in SMM)."""
        if cpu.halted and not cpu.wait_sipi and not cpu.in_smm and cpu.prog is not None:
            cpu.halted = False

    def forget(self, cpu):
        self.online.discard(cpu.index)
        self.want_dead.discard(cpu.index)
        self.tasks.pop(cpu.index, None)
        self._sci_leaves(cpu.index)

    # --- where the SCI goes ---------------------------------------------------------------
    # Linux gives IRQ 9 a vector on the least-loaded online CPU (irq_matrix_alloc); the
    # boot CPU carries the legacy vectors, so that is the first other CPU, and when its
    # CPU goes offline the IRQ moves the same way. Observed on Debian's 6.1 with 3 CPUs:
    # IOAPIC pin 9 to CPU 1, then to CPU 2 once CPU 1 was offlined.
    def _pick_sci(self, exclude=None):
        others = sorted(i for i in self.online if i not in (self.m.bsp.index, exclude))
        return others[0] if others else self.m.bsp.index

    def _sci_leaves(self, index):
        if index == self.sci_index:
            self.sci_index = self._pick_sci(exclude=index)

    def sci_cpu(self):
        return next((c for c in self.m.cpus if c.index == self.sci_index), self.m.bsp)

    # --- boot -----------------------------------------------------------------------
    def os_boot(self, bsp):
        m = self.m
        bsp.where = "os:boot"
        self.ucode.boot_bsp(bsp)             # load_ucode_bsp, before any AP starts
        # ACPI tables as QEMU built them when the firmware downloaded them (after
        # negotiation)
        self.smi_upcall = m.lpc.smi_upcall
        self.fw_unplugs = m.lpc.fw_unplugs_cpu
        m.mem.code[TRAMPOLINE_VECTOR << 12] = self._trampoline
        self.online = {bsp.index}
        self.known = {c.slot for c in m.cpus}
        yield STEP
        for cpu in sorted(m.cpus, key=lambda c: c.apic_id):
            if cpu is bsp:
                continue
            ok = yield from self._cpu_up(bsp, cpu)
            if not ok:
                self.errors.append(f"CPU{cpu.index} failed to boot")
        self.sci_index = self._pick_sci()    # acpi_os_install_interrupt_handler
        # ACPICA dispatches GPEs whose status is already set when it first enables them
        # (e.g. insert events of CPUs device_add'ed while paused): CSCN runs once now
        if m.gpe_sts:
            m.gpe_sts = False
            yield from self._cscn(bsp)
        self.booted = True
        yield from self._idle(bsp)

    def _trampoline(self, cpu):
        cpu.where = "os:start_secondary"
        self.ucode.load_ap(cpu)              # cpu_init -> load_ucode_ap
        yield STEP
        self.online.add(cpu.index)
        self.want_dead.discard(cpu.index)
        yield STEP
        yield from self._idle(cpu)

    def _idle(self, cpu):
        tasks = self.tasks
        idx = cpu.index
        while True:
            q = tasks.get(idx)
            if q:
                task = q.popleft()
                yield from task(cpu)
                continue
            if idx in self.want_dead:
                self.want_dead.discard(idx)
                self.online.discard(idx)
                self._sci_leaves(idx)        # fixup_irqs moves IRQs off a dying CPU
                cpu.where = "os:play_dead"
                yield STEP
                while True:
                    yield HALT
            cpu.where = "os:idle"
            yield HALT

    def _cpu_up(self, bsp, target):
        yield from self.m.init_sipi_sipi(bsp, target.apic_id, TRAMPOLINE_VECTOR)
        waited = 0
        while target.index not in self.online and waited < CALLIN_TIMEOUT:
            waited += 1
            yield STEP                       # time passes: a bounded wait, not a spin
        return target.index in self.online

    def _cpu_down(self, bsp, target):
        self.want_dead.add(target.index)
        self.wake(target)
        yield STEP
        waited = 0
        while target.index in self.online and waited < CALLIN_TIMEOUT:
            waited += 1
            yield STEP
        return target.index not in self.online

    # --- ACPI ---------------------------------------------------------------------------
    def gpe(self):
        """SCI for GPE bit 2: the BSP runs \\_GPE._E02 -> CSCN (status cleared)."""
        self.m.gpe_sts = False
        self.post(self.m.bsp, self._cscn)

    def _notify(self, slot, event):
        self.notifications.append((slot, event))
        if event == 1:                       # device check: Linux adds the CPU (offline)
            if self.m.cpuhp.present[slot]:
                self.known.add(slot)
        elif event == 3:                     # eject request: hot-remove work item
            self.post(self.m.bsp, lambda cpu, s=slot: self._eject(cpu, s))

    def _cscn(self, cpu):
        m = self.m
        cpu.where = "os:acpi-cscn"
        n = m.cpuhp.n
        uid = 0
        while True:                           # batches of up to 255 CPUs
            cnew = []
            more = False
            has_event = True
            while has_event and uid < n:
                has_event = False
                cdat = yield from m.cpuhp_get_next(cpu, uid)
                if cdat < uid:
                    break
                if len(cnew) >= 255:
                    more = True
                    break
                uid = cdat
                st = m.inb(cpu, HP + hw.CPUHP_STAT)
                yield STEP
                if st & hw.CPUHP_STAT_INSERT:
                    cnew.append(uid)
                    has_event = True
                elif st & hw.CPUHP_STAT_REMOVE:
                    self._notify(uid, 3)
                    m.outb(cpu, HP + hw.CPUHP_STAT, hw.CPUHP_STAT_REMOVE)
                    has_event = True
                    yield STEP
                uid += 1
            if cnew and self.smi_upcall:
                m.outb(cpu, hw.APM_CNT_PORT, hw.APM_CNT_CPU_HOTPLUG)
                yield STEP
            for u in cnew:
                self._notify(u, 1)
                m.outl(cpu, HP + hw.CPUHP_SEL, u)
                m.outb(cpu, HP + hw.CPUHP_STAT, hw.CPUHP_STAT_INSERT)
                yield STEP
            if not more:
                break
        cpu.where = "os:idle"

    def _eject(self, cpu, slot):
        m = self.m
        cpu.where = "os:acpi-eject"
        target = m.by_slot.get(slot)
        if target is not None and target.index in self.online:
            ok = yield from self._cpu_down(cpu, target)
            if not ok:
                self.errors.append(f"eject: CPU{target.index} did not go offline")
                return
        # _EJ0 -> CEJ0
        m.outl(cpu, HP + hw.CPUHP_SEL, slot)
        yield STEP
        if self.fw_unplugs:
            m.outb(cpu, HP + hw.CPUHP_STAT, hw.CPUHP_STAT_FW_REMOVE)
            yield STEP
            m.outb(cpu, hw.APM_CNT_PORT, hw.APM_CNT_CPU_HOTPLUG)
            yield STEP
        else:
            m.outb(cpu, HP + hw.CPUHP_STAT, hw.CPUHP_STAT_EJECT)
            yield STEP
        self.known.discard(slot)
        cpu.where = "os:idle"

    # --- user-visible operations (run as BSP tasks) -------------------------------------
    def online_task(self, slot, result):
        return self._online_task(slot, result, True)

    def offline_task(self, slot, result):
        return self._online_task(slot, result, False)

    def _online_task(self, slot, result, online):
        """echo 1/0 > /sys/devices/system/cpu/cpuN/online, as a BSP task."""
        def task(cpu):
            target = self.m.by_slot.get(slot)
            if target is None:
                result["error"] = f"no CPU in slot {slot}"
                return
            if (target.index in self.online) == online:
                result["ok"] = True
                return
            cpu.where = "os:cpu_up" if online else "os:cpu_down"
            change = self._cpu_up if online else self._cpu_down
            ok = yield from change(cpu, target)
            result["ok"] = ok
            if not ok:
                result["error"] = (f"CPU{target.index} failed to boot" if online
                                   else f"CPU{target.index} did not go offline")
        return task

    def smi_task(self, value, data, count):
        def task(cpu):
            m = self.m
            cpu.where = "os:port-io"
            for _ in range(count):
                if data is not None:
                    m.outb(cpu, hw.APM_STS_PORT, data)
                    yield STEP
                m.outb(cpu, hw.APM_CNT_PORT, value)
                yield STEP
        return task
