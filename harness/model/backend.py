"""``ModelBackend``: the Backend contract on top of the pure-Python model.

``semantics`` is "tcg", "kvm" or a :class:`~harness.model.cpu.CpuSemantics` (for
deliberately different machines); ``firmware`` is the identity of the image the
model stands for (:class:`harness.firmware.FirmwareIdentity`, by default that of the
image the QEMU backend would discover); ``profile_overrides`` replaces fields of the
firmware profile (e.g. ``{"smbase_stride": 0x1000}``, ``{"skip_known_apic_ids": False}``).

``guest(command)``: the model cannot run shell commands. It answers a few read-only
commands from its own state (``nproc``, ``cat /sys/devices/system/cpu/online``,
``cat /sys/devices/system/cpu/present``, ``true``) and returns ``{"rc": 0, "output": ""}``
for anything else (result key ``"modelled": False``).

Microcode (:mod:`harness.model.microcode`): ``microcode_platform`` is what WRMSR 0x79
does, "qemu" (ignored, the default unless ``semantics`` says otherwise) or "hardware"
(validated, loaded when newer); ``early_microcode`` the bytes the guest's early loader
finds (an early cpio / combined initrd, or a raw GenuineIntel.bin / AuthenticAMD.bin);
``hypervisor_bit`` overrides CPUID(1).ECX[31] (default: on, unless the machine's
``cpu_props`` say ``hypervisor=off``) — while it is on Linux loads nothing;
``platform_id`` is MSR 0x17's platform id of CPUs without a ``platform-id`` prop.
Snapshots report ``ucode_rev`` (raw MSR 0x8B), ``signature`` and, for CPUs the guest
runs, ``guest_ucode_rev`` (the revision /proc/cpuinfo shows), ``guest_msr_ucode`` (MSR
0x8B as the guest reads it), ``guest_ucode_sysfs`` (Linux's sysfs version, only while
its loader is enabled) and ``vendor``.
"""
from __future__ import annotations

from pathlib import Path

from .. import firmware as fwmod
from ..backend import UNPLUG_TIMEOUT, Backend
from ..errors import BackendError, ConfigError, Hang, NotRemoved, Refused
from ..machine import CpuPlug, MachineConfig
from ..snapshot import CpuState, Snapshot, Tseg
from .chipset import MSG_BOOT_CPU_UNPLUG, MSG_DEVICE_NOT_FOUND, MSG_LEGACY_UNPLUG
from dataclasses import replace

from .cpu import semantics as to_semantics
from .microcode import PLATFORMS as UCODE_PLATFORMS, revision_of
from .engine import Machine
from .qemu_defects import ALL as ALL_DEFECTS, QemuDefects, for_semantics as defects_for


def _defects_by_name(name):
    try:
        return ALL_DEFECTS[name]
    except KeyError:
        raise ConfigError(f"qemu_defects must be one of {', '.join(sorted(ALL_DEFECTS))}, "
                          f"got {name!r}") from None


def _ranges(nums):
    nums = sorted(nums)
    out, i = [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(out)


class ModelBackend(Backend):
    name = "model"

    def __init__(self, semantics="tcg", firmware=None, *,
                 profile_overrides=None, max_steps=500_000, microcode_platform=None,
                 early_microcode=None, hypervisor_bit=None, platform_id=0,
                 qemu_defects=None):
        self.sem = to_semantics(semantics)
        # QEMU's own bugs the model reproduces: by default those of the semantics'
        # QEMU (tcg: QEMU 7.2 TCG); a name or a QemuDefects to choose
        self.defects = (defects_for(self.sem.name) if qemu_defects is None else
                        qemu_defects if isinstance(qemu_defects, QemuDefects) else
                        _defects_by_name(qemu_defects))
        if microcode_platform is not None:
            if microcode_platform not in UCODE_PLATFORMS:
                raise ConfigError(f"microcode_platform must be one of "
                                  f"{', '.join(UCODE_PLATFORMS)}, got {microcode_platform!r}")
            self.sem = replace(self.sem, wrmsr_ucode=microcode_platform)
        self.early_microcode = bytes(early_microcode) if early_microcode else None
        self.hypervisor_bit = hypervisor_bit
        self.platform_id = platform_id
        self.firmware = firmware
        self.profile_overrides = dict(profile_overrides or {})
        self.max_steps = max_steps
        self.m = None
        self.profile = None
        self.paused = False
        self.booted = False

    # --- helpers ------------------------------------------------------------------------
    def _machine(self):
        if self.m is None:
            raise BackendError("model machine not started")
        if self.m.dead is not None:
            raise self.m.dead                # the modelled QEMU died (qemu_defects)
        return self.m

    def _running(self, what):
        m = self._machine()
        if m.stuck:
            raise Hang(*m.stuck)
        if not self.booted:
            raise ConfigError(f"{what} needs a booted guest (run the boot step first)")
        return m

    def _cpu_result(self, cpu):
        return {"index": cpu.index, "apic_id": cpu.apic_id, "smbase": cpu.smbase,
                "in_smm": cpu.in_smm}

    def _profile(self, name):
        profile = fwmod.load_profile(name)
        if profile.smm:
            if self.firmware is None:
                raise ConfigError("the model needs the identity of the firmware image it "
                                  "stands for (harness.session resolves it from the run's "
                                  "--firmware)")
            profile = profile.with_identity(self.firmware)
            if profile.layout is None:
                profile.smbase(0, 1, 0, 0)       # raises: layout unknown, say how to learn
        return profile.with_overrides(**self.profile_overrides)

    # --- Backend ------------------------------------------------------------------------
    def start(self, machine: MachineConfig, run_dir: Path, paused: bool,
              boot: str | None = None, coldplugs=()) -> dict:
        # ``boot`` (the boot cache policy) does not apply: the model boots in microseconds
        machine.validate()
        self.profile = self._profile(machine.firmware)
        try:
            self.m = Machine(machine, self.sem, self.profile, max_steps=self.max_steps,
                             early_microcode=self.early_microcode,
                             hypervisor_bit=self.hypervisor_bit,
                             platform_id=self.platform_id, defects=self.defects)
        except Refused as e:
            raise ConfigError(f"bad topology: {e.message}") from None
        self.paused = paused
        self.booted = False
        return {"cpus": len(self.m.cpus), "maxcpus": machine.maxcpus, "paused": paused}

    def coldplug(self, cpu: CpuPlug) -> dict:
        m = self._machine()
        if not self.paused or self.booted:
            raise ConfigError("coldplug is only possible while the machine is paused "
                              "(start paused, before boot)")
        c, _ = m.device_add(cpu.slot, cpu.props, hotplug=True)   # QMP device_add in -S
        return self._cpu_result(c)

    def boot(self, timeout=None) -> dict:
        m = self._machine()
        if m.stuck:
            raise Hang(*m.stuck)
        if self.booted:
            raise ConfigError("machine already booted")
        self.paused = False
        m.power_on()
        m.run()
        if not m.guest.booted:
            raise BackendError("model: guest did not boot")
        self.booted = True
        return {"online": sorted(m.guest.online), "steps": m.steps}

    def hotplug(self, cpu: CpuPlug, *more: CpuPlug) -> dict:
        """device_add of ``cpu`` and ``more`` back to back (the guest handles none of
        them in between: one SCI for all), then the guest's scan runs."""
        m = self._running("hotplug")
        plugs = (cpu, *more)
        added, raise_sci = [], False
        for p in plugs:
            c, gpe = m.device_add(p.slot, p.props, hotplug=True)
            added.append(c)
            raise_sci = raise_sci or gpe
        if raise_sci:
            m.sci()
        m.run()
        missing = [p.slot for p in plugs if p.slot not in m.guest.known]
        if missing:    # as the QEMU backend: the guest must list each one
            which = ", ".join(str(p.slot) for p in plugs)
            raise Hang(f"guest did not list the CPU hot-added in slot {which}"
                       + (f": {m.sci_lost}" if m.sci_lost else ""),
                       m.diagnosis("hot-added CPU never seen by the guest"))
        if not more:
            return self._cpu_result(added[0])
        return {"devices": [self._cpu_result(c) for c in added]}

    def unplug(self, slot: int, timeout: float | None = None) -> dict:
        m = self._running("unplug")
        cpu = m.by_slot.get(slot)
        if slot == 0 and cpu is not None:
            raise Refused(MSG_BOOT_CPU_UNPLUG)
        if cpu is None:
            raise Refused(MSG_DEVICE_NOT_FOUND.format(id=CpuPlug(slot).device_id))
        if m.cpuhp.legacy:
            raise Refused(MSG_LEGACY_UNPLUG.format(type=f"{m.config.cpu_model}-x86_64-cpu"))
        msg = m.lpc.device_del_refusal()
        if msg:
            raise Refused(msg)
        index = cpu.index
        if m.cpuhp.unplug_request(slot):
            m.gpe_sts = True
            m.sci()
        m.run()
        if slot in m.by_slot:      # the machine is quiescent: nobody will eject it now
            raise NotRemoved(slot, timeout or UNPLUG_TIMEOUT, {
                "slot": slot, "why": m.sci_lost or "the guest did not eject the CPU",
                **m.diagnosis("device_del did not complete")})
        return {"index": index, "apic_id": slot, "removed": True}

    def _guest_op(self, what, task_factory, slot):
        m = self._running(what)
        if slot not in m.by_slot:
            raise BackendError(f"{what}: no CPU in slot {slot}")
        result = {}
        m.guest.post(m.bsp, task_factory(slot, result))
        m.run()
        if result.get("error"):
            raise BackendError(f"guest: {what} slot {slot}: {result['error']}")
        cpu = m.by_slot[slot]
        return {"index": cpu.index, "online": cpu.index in m.guest.online}

    def online(self, slot: int) -> dict:
        return self._guest_op("online", self._machine().guest.online_task, slot)

    def offline(self, slot: int) -> dict:
        if slot == 0:
            self._running("offline")
            raise BackendError("guest: cpu0 cannot be taken offline")
        return self._guest_op("offline", self._machine().guest.offline_task, slot)

    def smi(self, value: int, data: int | None, count: int) -> dict:
        m = self._running("smi")
        before = {c.index: c.smi_count for c in m.cpus}
        m.guest.post(m.bsp, m.guest.smi_task(value & 0xFF, None if data is None
                                             else data & 0xFF, max(0, int(count))))
        m.run()
        return {"smis": {c.index: c.smi_count - before.get(c.index, 0) for c in m.cpus}}

    def guest(self, command: str) -> dict:
        m = self._running("guest")
        cmd = command.strip()
        if cmd == "nproc":
            return {"rc": 0, "output": f"{len(m.guest.online)}\n"}
        if cmd == "cat /sys/devices/system/cpu/online":
            return {"rc": 0, "output": _ranges(m.guest.online) + "\n"}
        if cmd == "cat /sys/devices/system/cpu/present":
            idx = [m.by_slot[s].index for s in m.guest.known if s in m.by_slot]
            return {"rc": 0, "output": _ranges(idx) + "\n"}
        if cmd in ("true", ":", ""):
            return {"rc": 0, "output": ""}
        return {"rc": 0, "output": "", "modelled": False}

    def reset(self) -> dict:
        m = self._machine()
        m.system_reset()
        self.paused = False
        self.booted = False
        return self.boot()

    def wait(self, seconds: float) -> dict:
        m = self._machine()
        if m.stuck:
            raise Hang(*m.stuck)
        m.run()
        return {}

    def snapshot(self) -> Snapshot:
        m = self._machine()
        g = m.guest
        cpus = []
        for c in sorted(m.cpus, key=lambda c: c.index):
            runs = g.booted and c.index in g.online
            guest_rev = revision_of(c.vendor, c.ucode_rev) if runs else None
            # what the guest reads: MSR 0x8B through the msr driver, and the sysfs version
            # Linux 6.1 publishes only while its loader is enabled (microcode_init)
            cpus.append(CpuState(
                index=c.index, apic_id=c.apic_id, smbase=c.smbase, in_smm=c.in_smm,
                halted=m.cpu_halted(c), smi_count=c.smi_count, pending_smi=c.pending_smi,
                pending_init=c.pending_init,
                online=(c.index in g.online) if self.booted or g.booted else None,
                qom_path=None, ucode_rev=c.ucode_rev, signature=c.signature,
                guest_ucode_rev=guest_rev, vendor=c.vendor if runs else None,
                guest_msr_ucode=c.ucode_rev if runs else None,
                guest_ucode_sysfs=guest_rev if runs and not g.ucode.disabled else None))
        regs = m.mch.registers()
        regs.update(m.lpc.registers())
        return Snapshot(cpus=cpus,
                        tseg=Tseg(base=m.mch.tseg_base, size=m.mch.tseg_size,
                                  locked=m.mch.locked),
                        registers=regs, smi_features=m.lpc.features())

    def info(self) -> dict:
        return {"backend": "model", "semantics": self.sem.name,
                "qemu_defects": self.defects.name,
                "firmware": self.profile.name if self.profile else None,
                "firmware_identity": (self.profile.identity.describe()
                                      if self.profile and self.profile.identity else None)}

    def close(self) -> None:
        self.m = None
        self.booted = False
