"""The real backend: scenario steps on a real QEMU q35 + OVMF + Linux guest.

Every wait has a deadline, and a deadline only bounds a wait: a hang is what the
machine shows (harness.qemu.progress: every CPU at one place, no console or firmware
output, or a reset loop), sampled while the boot or hot-add is waited for, and once a
wait has run out. Without that evidence a wait that runs out is ``StillProgressing``
(an error, never an expected hang). With it, the backend collects a diagnosis (HMP
``info registers -a`` per CPU: SMM, HLT, CS:RIP; ``query-cpus-fast``; a migration-stream
snapshot with every CPU's SMBASE; the console tail), keeps it in the run directory, and
raises ``Hang`` with the evidence.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import replace
from pathlib import Path

from .. import bootpolicy
from .. import firmware as fwmod
from .. import known_bugs, settings
from .. import hw
from ..backend import UNPLUG_TIMEOUT, Backend
from ..errors import (BackendError, Hang, NotRemoved, QemuCrashed, QemuError, Refused,
                      StillProgressing)
from ..machine import CpuPlug, MachineConfig
from ..microcode.cpuid import cpuid_signature
from ..snapshot import Snapshot
from . import process
from .progress import (SAMPLE_INTERVAL, SMI_READ_EVERY, CpuPlace, ProgressMonitor, Sample,
                       console_progress)
from .qmp import QmpCommandError
from .vm import QemuVM, shared_ram_dir

_log = logging.getLogger(__name__)


# Deadlines in seconds, for TCG on a 2-core machine (KVM is faster, never slower).
COMMAND_TIMEOUT = 30.0
HOTPLUG_TIMEOUT = 30.0
AGENT_PROBE = 4.0          # an unanswered agent probe makes us look at the CPUs
MIGRATE_TIMEOUT = 60.0
# once a wait has run out: how long to keep looking for evidence that the machine hangs
# (more than a stall window on a host giving QEMU a third of a core)
EVIDENCE_WAIT = 45.0
# ... and up to this long while the samples show a machine at one place that has not yet
# done the work the verdict asks (a slow host gives QEMU too little CPU to show it in
# EVIDENCE_WAIT: a throttled sparse cold-plug hang took 18 s of wall time per 5 s of
# QEMU CPU, and a CPU moving to another spin place starts its run again)
EVIDENCE_MAX = 120.0
EVIDENCE_STEP = 10.0
# A CPU caught in SMM may just be servicing a legitimate SMI (an EFI variable call,
# another CPU's 0xB2 write): "left in SMM" means still there after this long.
SMM_SETTLE = 2.0
SMM_SETTLE_POLL = 0.25
# known bugs that make a migration after an unplug kill or stall QEMU: snapshots come
# from QMP/HMP only on builds that have one of them
MIGRATION_UNSAFE_AFTER_UNPLUG = ("unplug-heap-corruption", "migration-stalls-after-unplug")
# after an unplug's slot empties, how long QEMU must stay alive for it to count
EJECT_SETTLE = 1.0
# while an unplug is awaited, the SCI is looked at this often; found stuck this many
# looks in a row (sent by the IOAPIC, held by no local APIC: irq_diag.lost_sci), the
# unplug is lost: no EOI can come, so the level-triggered SCI never fires again
LOST_SCI_LOOK_EVERY = 1.0
LOST_SCI_LOOKS = 3
# Agent snippet: one line per Linux CPU: "<n> <ACPI path> <online>"; then /proc/cpuinfo.
# Per CPU: its ACPI path and online state, then what it reports as its microcode: MSR
# 0x8B read through the msr driver (8 bytes at offset 0x8B of /dev/cpu/N/msr; the image
# loads msr.ko) and Linux's sysfs version (absent while the loader is disabled, e.g.
# with the hypervisor bit: Linux 6.1 microcode_init); then /proc/cpuinfo.
CPU_LIST_CMD = (
    'for d in /sys/devices/system/cpu/cpu[0-9]*; do n=${d##*cpu}; '
    'echo "cpu $n $(cat $d/firmware_node/path 2>/dev/null) $(cat $d/online 2>/dev/null || echo 1)"; '
    f'echo "ucode $n $(dd if=/dev/cpu/$n/msr bs=8 count=1 skip={hw.MSR_IA32_BIOS_SIGN_ID} '
    'iflag=skip_bytes 2>/dev/null | od -An -tx8) $(cat $d/microcode/version 2>/dev/null)"; '
    'done; cat /proc/cpuinfo')


def parse_cpu_list(text):
    """Guest CPU view -> {slot: {"linux": n, "online": bool, "apic_id", "microcode",
    "signature", "vendor", "msr_ucode", "sysfs_ucode"}}; the slot comes from the ACPI
    processor path \\_SB_.CPUS.Cxxx (hex); values the guest did not give are None."""
    cpus, by_linux, ucode = {}, {}, {}
    for line in text.splitlines():
        m = re.match(r"cpu (\d+) \S*\.C([0-9A-Fa-f]+) (\d)\s*$", line)
        if m:
            slot = int(m.group(2), 16)
            cpus[slot] = {"linux": int(m.group(1)), "online": m.group(3) == "1"}
            by_linux[int(m.group(1))] = slot
            continue
        words = line.split()
        if len(words) >= 2 and words[0] == "ucode" and words[1].isdigit():
            msr = sysfs = None                    # od prints 16 hex digits; sysfs 0x..
            for w in words[2:]:
                try:
                    if len(w) == 16 and not w.startswith("0x"):
                        msr = int(w, 16)
                    else:
                        sysfs = int(w, 0)
                except ValueError:
                    pass
            ucode[int(words[1])] = (msr, sysfs)
    for n, slot in by_linux.items():
        msr, sysfs = ucode.get(n, (None, None))
        cpus[slot].update(msr_ucode=msr, sysfs_ucode=sysfs)
    info, cur = {}, None
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if k == "processor":
            cur = info.setdefault(int(v), {})
        elif cur is not None and k == "vendor_id":
            cur[k] = v
        elif cur is not None and k in ("apicid", "microcode", "cpu family", "model",
                                       "stepping"):
            try:
                cur[k] = int(v, 0)
            except ValueError:
                pass
    for n, i in info.items():
        slot = by_linux.get(n)
        if slot is None:
            continue
        c = cpus[slot]
        c["apic_id"] = i.get("apicid")
        c["microcode"] = i.get("microcode")
        c["vendor"] = i.get("vendor_id")
        if {"cpu family", "model", "stepping"} <= i.keys():
            c["signature"] = cpuid_signature(i["cpu family"], i["model"], i["stepping"])
    return cpus


class QemuBackend(Backend):
    name = "qemu"

    def __init__(self, qemu=None, ovmf_code=None, ovmf_vars=None, firmware_version=None,
                 early_cpio=None, keep_streams=False, boot_cache=None):
        self.qemu_path = qemu
        self.boot_cache = boot_cache    # "on" | "off" | None: SMM_HARNESS_BOOT_CACHE
        self._policy = None             # the scenario's boot policy (bootpolicy), if any
        self._cache = self._cache_key = self._cache_inputs = None
        self._claim = None              # bootcache.Claim: this run boots the entry's machine
        self._resumed = None            # the bootcache.Entry this machine started from
        self._boot_thread = None        # TCG threading of a boot that ran otherwise than
        #                                 the machine says (_boot_machine), else None
        self._boot_note = "fresh"
        self._coldplugged = False       # a cold-plug the cache key does not name
        self._announced = []            # the cold-plugs start() was told of, in order
        self._plugged = 0               # cold-plugs done so far
        self._resumed_plugs = {}        # slot -> device_add result, added before resuming
        self.ovmf_code, self.ovmf_vars = ovmf_code, ovmf_vars
        self.firmware_version = firmware_version
        self.early_cpio = early_cpio
        self.keep_streams = keep_streams
        self.vm = None
        self.agent = None
        self.hung = None          # the Hang once the guest stopped answering
        self.running = False
        self.booted = False
        # QEMU with the unplug heap corruption (known_bugs: QEMU 7.2) aborts ("free():
        # invalid next size") when migrated after a CPU was unplugged: from then on its
        # snapshots come from QMP/HMP only (no SMBASE); newer QEMU is migrated as ever.
        self.unplugged = False
        self._nsnap = 0
        # snapshots leave guest RAM out (shared RAM, migrated with x-ignore-shared)
        self.ram_left_out = False
        self._guest_reports = []    # the guest kernel's own stall reports (console)

    # --- set-up ----------------------------------------------------------------------
    def start(self, machine: MachineConfig, run_dir: Path, paused: bool,
              boot: str | None = None, coldplugs=()) -> dict:
        """``boot``: the scenario's boot policy (harness.bootpolicy). ``resume-ok``
        starts from the boot cache when it holds this machine (and saves it there after
        a fresh boot when not); ``fresh`` and None (a caller that is no scenario) never
        touch the cache. ``coldplugs`` (the scenario's cold-plugs before its boot) are
        part of the machine's cache key; a resumed machine gets them by ``device_add``
        before its stream loads, as the boot that saved it did before it ran, and the
        cold-plug steps then report them."""
        machine.validate()
        binary = process.resolve_binary(self.qemu_path)
        version = process.qemu_version(binary)
        accel = process.resolve_accel(binary, machine.accel)
        profile, images = fwmod.resolve(machine.firmware, self.ovmf_code, self.ovmf_vars,
                                        version=self.firmware_version)
        from .image import build_image   # builds on first use, cached after
        image = build_image(early_cpio=self.early_cpio, log=_log.info,
                            guest_kernel=machine.guest_kernel)
        ram_dir, why = shared_ram_dir(machine.memory_mib, version)

        def make_vm(m=machine):
            return QemuVM(binary=binary, machine=m, firmware=images, profile=profile,
                          run_dir=run_dir, accel=accel, kernel=image.kernel,
                          initrd=image.initrd, cmdline=image.cmdline, ram_dir=ram_dir)
        self._make_vm = make_vm
        self._announced = list(coldplugs)
        boot_machine = self._boot_machine(boot, machine, accel)
        entry = self._cache_lookup(boot, binary, version, boot_machine, images, accel, image)
        self.vm = make_vm()
        if entry is not None:
            self._resume(entry, make_vm)
        else:
            if boot_machine is not machine:
                self.vm = make_vm(boot_machine)
                self._boot_thread = boot_machine.tcg_thread
                self._boot_note += (f"; booted with TCG thread={self._boot_thread}, to "
                                    f"go on with thread={machine.effective_tcg_thread}")
            self.vm.launch()
        self._ram_dir, self._ram_why = ram_dir, why
        self._configure_migration()
        self._info = {"qemu": binary, "qemu_version": version, "accel": accel,
                      "firmware": profile.name, "firmware_code": str(images.code),
                      "firmware_identity": (profile.identity.describe()
                                            if profile.identity else None),
                      "firmware_descriptor": str(images.descriptor or ""),
                      "kernel": getattr(image, "kernel_version", None),
                      "guest_kernel": image.guest_kernel,
                      "boot": self._boot_note}
        if self._cache_key:
            self._info["boot_cache_key"] = self._cache_key
        return dict(self._info)

    def _configure_migration(self):
        """Migrations at full speed, and without guest RAM where it is a shared file."""
        try:
            self.vm.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        except QemuError:
            pass
        why = self._ram_why
        if self._ram_dir is not None:
            why = self._set_ignore_shared(True)
        self.ram_left_out = why is None
        if why:
            _log.info("snapshots carry all guest RAM: %s", why)

    # --- the boot cache (harness.qemu.bootcache) ------------------------------------------
    def _boot_machine(self, boot, machine, accel):
        """The machine to boot: ``machine``, or for a multi-threaded TCG machine whose boot
        may resume (its boot only a precondition) the same machine single-threaded. The
        threading is QEMU's, not the guest's: a migration stream carries no trace of it,
        so the booted machine is saved to the boot cache and goes on in a QEMU with the
        scenario's threading (:meth:`_go_on_threaded`). Why: on this 2-core host a 3- and
        4-vCPU OVMF boot takes 25 to 90 s multi-threaded (firmware spin-waits starve the
        vCPU they wait for; OVMF 2022.11's SMI 153 alone 42-48 s) and about 10 s
        single-threaded. Scenarios say ``tcg_thread: multi`` for what comes after the
        boot (QEMU 7.2 aborts when firmware ejects a CPU single-threaded)."""
        if (boot == bootpolicy.RESUME_OK and accel == "tcg"
                and machine.effective_tcg_thread == "multi"
                and settings.boot_cache(self.boot_cache)):
            return replace(machine, tcg_thread="single")
        return machine

    def _cache_lookup(self, boot, binary, version, machine, images, accel, image):
        """The cache entry to start from, or None; sets what the trace says of the boot."""
        self._policy = boot
        self._boot_note = "fresh"
        if boot is None:
            return None
        if boot != bootpolicy.RESUME_OK:
            self._boot_note = "fresh (the boot is under test)"
            return None
        if not settings.boot_cache(self.boot_cache):
            self._boot_note = "fresh (boot cache off)"
            return None
        from . import bootcache
        self._cache = bootcache.BootCache()
        self._cache_inputs = bootcache.key_inputs(binary, version, machine, images, accel,
                                                  image.kernel, image.initrd, image.cmdline,
                                                  coldplugs=self._announced)
        self._cache_key = bootcache.key_of(self._cache_inputs)
        entry = self._cache.lookup(self._cache_key)
        if entry is None:
            # another worker may be booting this very machine: wait for it, then resume
            self._claim = self._cache.claim(self._cache_key, settings.boot_timeout())
            entry = self._cache.lookup(self._cache_key)
            if entry is not None:
                self._release_claim()
        if entry is None:
            self._boot_note = f"fresh (not in the boot cache yet: {self._cache_key})"
        return entry

    def _release_claim(self):
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    def _resume(self, entry, make_vm):
        """Launch from ``entry``; if its stream does not load, remove the entry and
        launch fresh instead (the trace says so)."""
        from . import bootcache
        self.vm.incoming = entry
        try:
            self.vm.launch()
            # the cold-plugged CPUs exist before the stream loads, as in the saved boot
            added = {cpu.slot: self._device_add(cpu) for cpu in self._announced}
            secs = bootcache.load(self.vm, entry)
        except (QemuError, Refused) as e:
            self.vm.shutdown()
            for name in ("qemu-stderr.log", "qemu-cmdline.txt"):
                p = self.vm.run_dir / name
                if p.exists():
                    p.replace(self.vm.run_dir / f"resume-failed-{name}")
            self._cache.invalidate(entry.key, str(e))
            self._boot_note = f"fresh (boot cache entry {entry.key} did not load: {e})"
            self.vm = make_vm()
            self.vm.launch()
            return
        self._resumed = entry
        self._resumed_plugs = added
        self._load_seconds = round(secs, 2)
        self._boot_note = f"resumed from cache {entry.key}"

    def _save_boot(self, boot_seconds) -> dict:
        """After a fresh boot of a resume-ok scenario: save the machine as the entry
        its key lacks. A failed save is said in the boot's result, never a verdict; a
        QEMU that died of it is an error of the harness."""
        from . import bootcache
        if self._cache is None or self._coldplugged:
            return {}
        try:
            return self._save_claimed(bootcache, boot_seconds)
        finally:
            self._release_claim()

    def _save_claimed(self, bootcache, boot_seconds) -> dict:
        try:
            e = bootcache.save(self.vm, self._cache, self._cache_key, self._cache_inputs,
                               getattr(self.agent, "banner", None), boot_seconds)
        except (QemuError, OSError) as err:       # OSError: the cache's disk is full
            if not self.vm.alive():
                raise QemuError(f"QEMU died while its boot was saved to the boot cache: "
                                f"{self.vm.failure_text()}") from None
            return {"boot_cache": f"not saved: {err}"}
        if e is None:
            return {"boot_cache": "not saved"}
        self._info["boot"] = f"fresh (saved to the boot cache as {e.key})"
        return {"boot_cache": f"saved {e.key}"}

    def info(self) -> dict:
        return dict(getattr(self, "_info", {}))

    def _set_ignore_shared(self, on):
        """Migrations leave shared guest RAM (cmdline.shared_ram_args) out, or send it.
        Returns None, or why QEMU refused (then RAM is sent: slower, still correct)."""
        try:
            self.vm.qmp.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "x-ignore-shared", "state": on}])
        except QmpCommandError as e:
            return f"QEMU refused the capability x-ignore-shared: {e.desc}"
        return None

    def _migration_unsafe(self):
        if not self.unplugged or settings.migrate_after_unplug():
            return False
        return any(known_bugs.get(b).affects(self._info.get("accel"),
                                             self._info.get("qemu_version"))
                   for b in MIGRATION_UNSAFE_AFTER_UNPLUG)

    def _qmp(self, command, **args):
        """A QMP command whose refusal is a scenario outcome (Refused)."""
        try:
            return self.vm.qmp.cmd(command, **args)
        except QmpCommandError as e:
            raise Refused(e.desc) from None

    def _require_alive(self):
        if self.hung is not None:
            raise Hang(f"machine already hung: {self.hung.reason}", self.hung.diagnosis)
        if not self.vm.alive():
            raise QemuCrashed(self.vm.proc.poll(), self.vm.failure_text())

    def _device_add(self, cpu: CpuPlug):
        slot = self.vm.slot_props(cpu.slot)
        if "qom-path" in slot:
            raise Refused(f"CPU slot {cpu.slot} is already occupied "
                          f"({slot['qom-path']})")
        args = {"driver": slot["type"], "id": cpu.device_id, **slot["props"]}
        args.update({k: v for k, v in cpu.props.items()})
        self._qmp("device_add", **args)
        return {"device": cpu.device_id, "props": slot["props"]}

    def coldplug(self, cpu: CpuPlug) -> dict:
        if self.booted:
            raise BackendError("cold-plug after boot")
        if self._resumed is not None:
            # added before the stream loaded (_resume), if the scenario announced it
            if cpu.slot not in self._resumed_plugs or cpu not in self._announced:
                raise BackendError(f"cold-plug of slot {cpu.slot} into a machine resumed "
                                   f"from the boot cache, which was not booted with it")
            return self._resumed_plugs.pop(cpu.slot)
        if cpu not in self._announced[self._plugged:self._plugged + 1]:
            self._coldplugged = True     # not the machine the cache key names
        self._plugged += 1
        return self._device_add(cpu)

    # --- the guest ---------------------------------------------------------------------
    def _agent_run(self, command, timeout=COMMAND_TIMEOUT, what=None):
        self._require_alive()
        try:
            rc, out = self.agent.run(command, timeout=timeout)
        except Hang:
            raise self._prove_hang(what or f"guest did not answer {command[:40]!r} "
                                   f"within {timeout:.0f} s") from None
        except BackendError:      # the console closed: QEMU died under us?
            self.vm.raise_if_crashed()
            raise
        return rc, out

    def boot(self, timeout=None) -> dict:
        """Continue the machine and wait for the guest agent. A machine resumed from
        the boot cache is continued where the earlier boot stopped: its agent already
        runs, so it is probed (after a newline that ends any half-read line) instead of
        awaited. The result has the same fields either way, and says which it was."""
        from .agent import GuestAgent
        timeout = timeout or settings.boot_timeout()
        t0 = time.monotonic()
        self._qmp("cont")
        self.running = True
        self.agent = GuestAgent(self.vm.console)
        resumed = self._resumed is not None
        what = ("guest resumed from the boot cache did not answer its agent" if resumed
                else "guest did not boot to its agent")
        try:
            if resumed:
                try:
                    self.vm.console.send(b"\n")
                except OSError as e:
                    raise BackendError(f"guest console: {e}") from None
            self._await_banner(what, timeout, probe_after=0.0 if resumed else None)
        except BackendError as e:
            if isinstance(e, (Hang, StillProgressing)):
                raise
            self.vm.raise_if_crashed()
            raise QemuError(f"console closed during boot ({e}); "
                            f"QEMU: {self.vm.failure_text()}") from None
        self.booted = True
        seconds = round(time.monotonic() - t0, 2)
        if resumed:
            return {"boot_seconds": seconds, "banner": self._resumed.meta().get("banner"),
                    "boot": "resumed", "boot_cache": self._resumed.key,
                    "load_seconds": self._load_seconds}
        res = {"boot_seconds": seconds, "banner": getattr(self.agent, "banner", None),
               "boot": "fresh"}
        if self._policy == bootpolicy.RESUME_OK:
            res.update(self._save_boot(seconds))
        if self._boot_thread is not None:
            res.update(self._go_on_threaded(what, timeout))
        return res

    # the logs of a QEMU that booted the machine and handed it on (_go_on_threaded)
    HANDED_ON_LOGS = ("console_log", "stderr", "stdout", "qmp_log", "debugcon")

    def _go_on_threaded(self, what, timeout) -> dict:
        """The machine booted single-threaded (:meth:`_boot_machine`) and was saved to
        the boot cache: go on from that entry in a QEMU with the scenario's own TCG
        threading, as a later run would resume it. The booting QEMU's logs stay in the
        run directory under ``booted-single-thread-``."""
        from . import bootcache
        from .agent import GuestAgent
        entry = (self._cache.lookup(self._cache_key)
                 if self._cache is not None and not self._coldplugged else None)
        if entry is None:
            raise BackendError(f"the machine booted with TCG thread={self._boot_thread} "
                               f"could not be saved to the boot cache, so it cannot go on "
                               f"with the scenario's threading (--boot-cache off boots "
                               f"with it)")
        t0 = time.monotonic()
        self.vm.shutdown()
        paths = self.vm.paths()
        for name in (*self.HANDED_ON_LOGS, "cmdline"):
            p = paths.get(name, self.vm.run_dir / "qemu-cmdline.txt")
            if p.exists():
                p.replace(p.with_name(f"booted-single-thread-{p.name}"))
        self.vm = self._make_vm()
        self.vm.incoming = entry
        self.vm.launch()
        for cpu in self._announced:     # as the saved boot had them before it ran
            self._device_add(cpu)
        bootcache.load(self.vm, entry)
        self._configure_migration()
        self._qmp("cont")
        self.agent = GuestAgent(self.vm.console)
        try:
            self.vm.console.send(b"\n")
        except OSError as e:
            raise BackendError(f"guest console: {e}") from None
        self._await_banner(f"{what} (after going on multi-threaded)", timeout,
                           probe_after=0.0)
        self._info["boot"] = (f"fresh with TCG thread={self._boot_thread} (saved to the "
                              f"boot cache as {entry.key}), went on with thread="
                              f"{self.vm.machine.effective_tcg_thread} from it")
        return {"booted_with_tcg_thread": self._boot_thread,
                "went_on_seconds": round(time.monotonic() - t0, 2)}

    def _await_banner(self, what, timeout, probe_after=None):
        """Wait for the agent's banner while watching the machine. Once ``timeout`` runs
        out, go on watching (EVIDENCE_WAIT s, more while the machine is at one place:
        :meth:`_evidence_waits`; SMI counts read more often) for
        evidence of a hang with the banner still welcome: a boot that ends then was
        slow, not hung (on a loaded host a boot finished ten seconds into that watch,
        and the idle guest after it looked like a stall). Raises the Hang the samples
        prove, or StillProgressing."""
        monitor = ProgressMonitor()
        watched = 0.0
        for k, limit in enumerate(self._evidence_waits(timeout, monitor)):
            try:
                return self.agent.wait_ready(limit, tick=lambda: self._watch(monitor, what),
                                             tick_every=SAMPLE_INTERVAL,
                                             probe_after=probe_after)
            except Hang as e:
                if e is self.hung:           # proven while waiting
                    raise
            watched += limit if k else 0.0
            if not self.vm.alive():          # a dead QEMU is a crash (its words)
                self.vm.raise_if_crashed()
            monitor.smi_read_every = SMI_READ_EVERY
        raise StillProgressing(f"{what} within {timeout:.0f} s and {watched:.0f} s "
                               f"more of watching", monitor.progress_text())

    @staticmethod
    def _evidence_waits(timeout, monitor):
        """The waits of a wait that watches for a hang: ``timeout``, then EVIDENCE_WAIT,
        then steps of EVIDENCE_STEP up to EVIDENCE_MAX while the samples show the
        machine at one place without the verdict's work done yet."""
        yield timeout
        yield EVIDENCE_WAIT
        more = EVIDENCE_WAIT
        while more < EVIDENCE_MAX and monitor.on_its_way():
            step = min(EVIDENCE_STEP, EVIDENCE_MAX - more)
            yield step
            more += step

    def guest_cpus(self):
        rc, out = self._agent_run(CPU_LIST_CMD)
        return parse_cpu_list(out)

    def hotplug(self, cpu: CpuPlug, *more: CpuPlug) -> dict:
        """device_add of ``cpu`` (and of ``more``, back to back, before the guest has
        handled the first), then wait until the guest lists every one of them."""
        self._require_alive()
        plugs = (cpu, *more)
        added = [self._device_add(c) for c in plugs]
        res = dict(added[0]) if not more else {"devices": added}
        slots = [c.slot for c in plugs]
        which = ", ".join(map(str, slots))
        # The guest's ACPI GPE handler runs the CPU scan (and the SMI upcall); the new
        # CPU is handled once the guest lists it. A firmware hang shows as silence.
        deadline = time.monotonic() + HOTPLUG_TIMEOUT
        monitor = ProgressMonitor()
        while True:
            left = deadline - time.monotonic()
            what = f"guest stopped answering after the hot-add of slot {which}"
            if left <= 0:
                raise self._prove_hang(f"guest did not list the CPU hot-added in slot "
                                       f"{which} within {HOTPLUG_TIMEOUT:.0f} s", monitor)
            try:
                # the machine is sampled while the guest's answer is awaited: a hang is
                # proven as soon as the samples show it, not a probe timeout at a time
                rc, out = self.agent.run(CPU_LIST_CMD, timeout=min(left, AGENT_PROBE),
                                         tick=lambda: self._watch(monitor, what),
                                         tick_every=SAMPLE_INTERVAL)
            except Hang as e:
                if e is self.hung:           # proven by the samples
                    raise
                self._watch(monitor, what)
                continue
            except BackendError:      # the console closed: QEMU died under us?
                self.vm.raise_if_crashed()
                raise
            cpus = parse_cpu_list(out)
            if all(s in cpus for s in slots):
                if more:
                    res["guest_cpus"] = [cpus[s]["linux"] for s in slots]
                else:
                    res["guest_cpu"] = cpus[cpu.slot]["linux"]
                return res
            time.sleep(0.2)

    def unplug(self, slot: int, timeout: float | None = None) -> dict:
        self._require_alive()
        timeout = timeout or UNPLUG_TIMEOUT
        info = self.vm.slot_props(slot)
        path = info.get("qom-path")
        if not path:
            raise Refused(f"no CPU in slot {slot} to unplug")
        self._qmp("device_del", id=path)
        self.unplugged = True
        # QEMU 7.2 emits DEVICE_DELETED only for the CPU's lapic child, not for the CPU
        # itself: the slot losing its qom-path is what says the CPU is gone.
        start = time.monotonic()
        deadline, next_look, stuck = start + timeout, start + LOST_SCI_LOOK_EVERY, 0
        while "qom-path" in self.vm.slot_props(slot):
            if not self.vm.alive():
                self._require_alive()
            now = time.monotonic()
            if now >= next_look:
                # the evidence decides, not the clock: an SCI no local APIC holds while
                # the IOAPIC waits for its EOI is lost for good (QEMU's lost-SCI finding)
                next_look = now + LOST_SCI_LOOK_EVERY
                stuck = stuck + 1 if self._sci_stuck() else 0
                if stuck >= LOST_SCI_LOOKS:
                    raise self._not_removed(slot, timeout, now - start,
                                            f"the SCI found stuck {stuck} times in a row, "
                                            f"{LOST_SCI_LOOK_EVERY:g} s apart")
            if now > deadline:
                # still there: the guest hangs, or declined, or never heard of it
                raise self._not_removed(slot, timeout, now - start,
                                        f"the slot still held the CPU after {timeout:g} s")
            time.sleep(0.1)
        # The slot empties inside the unrealize that ejects the CPU; QEMU can still die
        # in that same unrealize (single-threaded TCG's thread join): an unplug counts
        # as done only once QEMU has answered QMP afterwards and is still alive.
        settle = time.monotonic() + EJECT_SETTLE
        while time.monotonic() < settle:
            self._require_alive()
            time.sleep(0.05)
        try:
            self.vm.qmp.cmd("query-status")
        except QemuError:
            pass
        self._require_alive()
        return {"removed": path}

    def _sci_stuck(self) -> bool:
        """One look at the SCI between IOAPIC and local APICs (HMP only, nothing kept):
        sent and held by no CPU. A look that fails (a CPU leaving as it is taken) is
        no evidence."""
        try:
            return self._interrupt_evidence(None, strict=True)[1] is not None
        except (QemuError, ValueError, KeyError):
            return False

    def _not_removed(self, slot, timeout, waited, decided_by) -> NotRemoved:
        """The unplug's verdict once the CPU is known to stay: the guest must still
        answer (else it is the guest that hangs), and the diagnosis says where the
        request got lost, what decided it and after how long."""
        self._agent_run("true", timeout=10, what=f"guest stopped answering after "
                        f"device_del of slot {slot}")
        return NotRemoved(slot, timeout, {**self._unplug_diagnosis(slot),
                                          "decided_after_s": round(waited, 1),
                                          "decided_by": decided_by})

    def _unplug_diagnosis(self, slot) -> dict:
        """Why an unplug request got nowhere: the guest's view of the CPU hot-plug GPE
        and the SCI, and where the SCI is between IOAPIC and local APICs. Kept in
        ``unplug-<slot>/`` of the run directory; best effort, never a new failure."""
        bundle = self.vm.run_dir / f"unplug-{slot}"
        bundle.mkdir(exist_ok=True)
        d = {"slot": slot}
        try:
            gpe = f"/sys/firmware/acpi/interrupts/gpe{hw.CPU_HOTPLUG_GPE_BIT:02X}"
            rc, out = self._agent_run(f"cat {gpe} /sys/firmware/acpi/interrupts/sci",
                                      timeout=10, what="guest stopped answering")
            lines = out.split("\n")
            d["guest_gpe"] = lines[0].strip() if lines else ""
            d["guest_sci_count"] = lines[1].strip() if len(lines) > 1 else ""
            ioapic, lost = self._interrupt_evidence(bundle)
            d["ioapic_remote_irr"] = ioapic["remote_irr"]
            if lost:
                d["lost_sci"] = lost
                d["why"] = lost["text"]
            elif "STS" not in d["guest_gpe"].split():
                d["why"] = ("the guest handled the hot-plug GPE but did not eject the CPU "
                            f"(gpe{hw.CPU_HOTPLUG_GPE_BIT:02X}: {d['guest_gpe']})")
        except Exception as e:             # diagnosis is best effort
            d["error"] = f"{type(e).__name__}: {e}"
        (bundle / "diagnosis.json").write_text(json.dumps(d, indent=2, default=str))
        return d

    def _set_online(self, slot, value):
        cpus = self.guest_cpus()
        if slot not in cpus:
            raise BackendError(f"the guest does not know a CPU in slot {slot}")
        n = cpus[slot]["linux"]
        rc, out = self._agent_run(f"echo {value} > /sys/devices/system/cpu/cpu{n}/online",
                                  what=f"guest stopped answering while setting cpu{n} "
                                  f"online={value}")
        if rc != 0:
            raise BackendError(f"guest could not set cpu{n} (slot {slot}) online={value}: "
                               f"{out.strip()[-200:]}")
        return {"linux_cpu": n}

    def online(self, slot: int) -> dict:
        return self._set_online(slot, 1)

    def offline(self, slot: int) -> dict:
        return self._set_online(slot, 0)

    def smi(self, value, data, count) -> dict:
        out = []
        if data is not None:
            out.append(f"printf '\\{data:03o}' | dd of=/dev/port bs=1 "
                       f"seek={hw.APM_STS_PORT} count=1 "
                       f"2>/dev/null || exit 1")
        out.append(f"printf '\\{value:03o}' | dd of=/dev/port bs=1 "
                   f"seek={hw.APM_CNT_PORT} count=1 "
                   f"2>/dev/null || exit 1")
        body = "; ".join(out)
        cmd = f"i=0; while [ $i -lt {count} ]; do {body}; i=$((i+1)); done"
        rc, text = self._agent_run(cmd, timeout=COMMAND_TIMEOUT + count * 0.5,
                                   what=f"guest stopped answering after writing "
                                   f"{value:#04x} to port 0xB2")
        if rc != 0:
            raise BackendError(f"guest could not write port 0xB2: {text.strip()[-200:]}")
        return {"written": count}

    def guest(self, command: str) -> dict:
        rc, out = self._agent_run(command)
        return {"rc": rc, "output": out}

    def reset(self) -> dict:
        self._require_alive()
        t0 = time.monotonic()
        self._qmp("system_reset")
        try:
            self._await_banner("guest did not come back after system_reset",
                               settings.boot_timeout())
        except BackendError as e:
            if not isinstance(e, (Hang, StillProgressing)):
                self.vm.raise_if_crashed()
            raise
        return {"boot_seconds": round(time.monotonic() - t0, 2)}

    def wait(self, seconds: float) -> dict:
        self._require_alive()
        time.sleep(seconds)
        return {}

    # --- looking from outside -------------------------------------------------------------
    def _migrate_snapshot(self, keep=False, full=False):
        """Stop, migrate to ``snapshot-N.mig`` in the run directory, parse, continue.
        The stream leaves shared guest RAM out (a few MB) unless ``full``: then it
        carries all of it (a hang's diagnosis keeps one to look into)."""
        from .migstream import parse_stream
        from .snapshot_decode import decode_snapshot
        self._nsnap += 1
        path = self.vm.run_dir / f"snapshot-{self._nsnap}.mig"
        status = self.vm.qmp.cmd("query-status")
        was_running = status.get("running")
        if was_running:
            self.vm.qmp.cmd("stop")
        with_ram = full and self.ram_left_out
        if with_ram:
            self._set_ignore_shared(False)
        try:
            self.vm.qmp.cmd("migrate", uri=f"exec:cat > {path}")
            deadline = time.monotonic() + MIGRATE_TIMEOUT
            while True:
                st = self.vm.qmp.cmd("query-migrate").get("status")
                if st == "completed":
                    break
                if st in ("failed", "cancelled"):
                    raise QemuError(f"snapshot migration {st}: "
                                    f"{self.vm.qmp.cmd('query-migrate').get('error-desc')}")
                if time.monotonic() > deadline:
                    raise QemuError(f"snapshot migration not completed within "
                                    f"{MIGRATE_TIMEOUT:.0f} s")
                time.sleep(0.005)
        finally:
            if with_ram:
                self._set_ignore_shared(True)
            if was_running:
                self.vm.qmp.cmd("cont")
        snap = decode_snapshot(parse_stream(path))
        if not (keep or self.keep_streams):
            path.unlink(missing_ok=True)
        return snap, path

    def _enrich(self, snap: Snapshot, guest=True):
        """QOM (paths, ucode-rev) and the guest's view (online, microcode)."""
        fast = {c["cpu-index"]: c for c in self.vm.qmp.cmd("query-cpus-fast")}
        for c in snap.cpus:
            f = fast.get(c.index)
            if f:
                c.qom_path = f["qom-path"]
                try:
                    c.ucode_rev = self.vm.qmp.cmd("qom-get", path=f["qom-path"],
                                                  property="ucode-rev")
                except QemuError:
                    pass
        if guest and self.booted and self.hung is None:
            gcpus = self.guest_cpus()
            by_apic = {}
            slots = self.vm.hotpluggable_cpus()
            for slot, g in gcpus.items():
                if slot < len(slots):
                    by_apic[slots[slot]["props"].get("socket-id")] = g
            for c in snap.cpus:
                g = by_apic.get(c.apic_id)
                c.online = bool(g and g["online"])
                if g:
                    c.guest_ucode_rev = g.get("microcode")
                    c.signature = g.get("signature")
                    c.vendor = g.get("vendor")
                    if c.online:
                        c.guest_msr_ucode = g.get("msr_ucode")
                        c.guest_ucode_sysfs = g.get("sysfs_ucode")
        return snap

    def snapshot(self) -> Snapshot:
        """The machine's state; taken again (for up to SMM_SETTLE s) while a CPU is in
        SMM, unless the machine is known to hang, so that a snapshot shows CPUs left
        in SMM rather than ones passing through it."""
        self._require_alive()
        deadline = time.monotonic() + SMM_SETTLE
        while True:
            if self._migration_unsafe():
                snap = self._qmp_snapshot()
            else:
                snap, _ = self._migrate_snapshot()
            if (self.hung is not None or not any(c.in_smm for c in snap.cpus)
                    or time.monotonic() >= deadline):
                return self._enrich(snap)
            time.sleep(SMM_SETTLE_POLL)

    def _qmp_snapshot(self) -> Snapshot:
        """Per CPU: index, APIC id, in SMM, halted, from query-cpus-fast and HMP."""
        from ..snapshot import CpuState
        from .hmp_diag import parse_info_registers
        regs = {c["index"]: c for c in parse_info_registers(
            self.vm.qmp.hmp("info registers -a"))}
        cpus = []
        for f in sorted(self.vm.qmp.cmd("query-cpus-fast"), key=lambda c: c["cpu-index"]):
            r = regs.get(f["cpu-index"], {})
            cpus.append(CpuState(index=f["cpu-index"], apic_id=f["props"].get("socket-id"),
                                 smbase=None, in_smm=bool(r.get("in_smm")),
                                 halted=bool(r.get("halted"))))
        return Snapshot(cpus=cpus, source="qmp")

    def _interrupt_evidence(self, bundle, strict=False):
        """(IOAPIC state, lost-SCI explanation or None) from HMP ``info pic`` and
        ``info lapic`` of every CPU, the texts kept in ``bundle`` (a directory, or None).
        ``strict``: a local APIC whose state could not be read is a ValueError (it may be
        the one that holds the SCI)."""
        from .irq_diag import lost_sci, parse_ioapic, parse_lapic
        pic = self.vm.qmp.hmp("info pic")
        if bundle:
            (bundle / "info-pic.txt").write_text(pic)
        apic_ids = [c["props"].get("socket-id") for c in self.vm.qmp.cmd("query-cpus-fast")]
        lapics = []
        for a in apic_ids:
            text = self.vm.qmp.hmp(f"info lapic {a}")
            if bundle:
                (bundle / f"info-lapic-{a}.txt").write_text(text)
            lapics.append(parse_lapic(text))
            if strict and lapics[-1]["cpu"] is None:
                raise ValueError(f"info lapic {a}: {text.strip()[:80]!r}")
        ioapic = parse_ioapic(pic)
        return ioapic, lost_sci(ioapic, lapics, apic_ids)

    # --- is it a hang? --------------------------------------------------------------------
    def _sample(self, smis=False) -> Sample:
        """Where every CPU is, how much work QEMU did, what guest and firmware printed;
        with ``smis``, also how many SMIs each CPU took (a migration: only while hang
        evidence is gathered, and never where migrating is unsafe)."""
        from .hmp_diag import parse_info_registers
        counts = None
        if smis and not self._migration_unsafe():
            try:
                snap, _ = self._migrate_snapshot()
                counts = {c.index: c.smi_count or 0 for c in snap.cpus}
            except QemuError:            # no count this time; the places still tell
                self._require_alive()
        regs = parse_info_registers(self.vm.qmp.hmp("info registers -a"))
        console, self._guest_reports = console_progress(self.vm.console_text())
        return Sample(t=time.monotonic(), cpu_seconds=process.cpu_seconds(self.vm.proc.pid),
                      cpus=tuple(CpuPlace(c["index"], bool(c["in_smm"]), bool(c["halted"]),
                                          c["cs"], c["eip"]) for c in regs),
                      console=console, debugcon=self.vm.debugcon_bytes(),
                      flash=self.vm.flash_crc(),
                      resets=self.vm.qmp.guest_resets, smis=counts)

    def _watch(self, monitor, what):
        """One sample into ``monitor``; raises the Hang once the samples prove it."""
        if not self.vm.alive():
            self._require_alive()
        monitor.add(self._sample(smis=monitor.smi_read_due()))
        evidence = monitor.verdict()
        if evidence is not None:
            evidence.guest_reports = list(self._guest_reports[-4:])
            raise self._hang(what, evidence)

    def _prove_hang(self, what, monitor=None) -> Hang:
        """A wait ran out: watch the machine (EVIDENCE_WAIT s, up to EVIDENCE_MAX while
        it is at one place without the verdict's work done yet) for evidence that it
        hangs. Returns the Hang if there is some; a machine that is still making
        progress (or not yet provably not) raises StillProgressing: slow is not hung."""
        monitor = monitor or ProgressMonitor()
        start = time.monotonic()
        monitor.smi_read_every = SMI_READ_EVERY
        while True:
            if not self.vm.alive():      # a dead QEMU is a crash (its words), never a hang
                self.vm.raise_if_crashed()
            self.vm.pull_console()
            try:
                self._watch(monitor, what)
            except Hang as e:
                return e
            watched = time.monotonic() - start
            if watched >= EVIDENCE_WAIT and not (watched < EVIDENCE_MAX and
                                                 monitor.on_its_way()):
                raise StillProgressing(what, monitor.progress_text())
            time.sleep(SAMPLE_INTERVAL)

    def _hang(self, reason, evidence) -> Hang:
        """Collect the diagnosis bundle, remember the machine is stuck, return a Hang."""
        reason = f"{reason}: {evidence.text()}"
        d = {"reason": reason, "evidence": evidence.to_dict()}
        bundle = self.vm.run_dir / "hang"
        bundle.mkdir(exist_ok=True)
        cpus = []
        try:
            from .hmp_diag import parse_info_registers
            text = self.vm.qmp.hmp("info registers -a")
            (bundle / "info-registers.txt").write_text(text)
            cpus = parse_info_registers(text)
        except Exception as e:           # diagnosis is best effort, never a new failure
            d["info_registers_error"] = str(e)
        try:
            d["query_cpus_fast"] = self.vm.qmp.cmd("query-cpus-fast")
        except Exception as e:
            d["query_cpus_fast_error"] = str(e)
        try:
            if self._migration_unsafe():
                snap, path = self._qmp_snapshot(), None
            else:
                snap, path = self._migrate_snapshot(keep=True, full=True)
            self._enrich(snap, guest=False)
            d["snapshot"] = snap.to_dict()
            d["snapshot_stream"] = str(path) if path else None
            regs = {c.get("index"): c for c in cpus}
            merged = []
            for c in snap.cpus:
                r = regs.get(c.index, {})
                merged.append({"index": c.index, "apic_id": c.apic_id, "smbase": c.smbase,
                               "in_smm": c.in_smm, "halted": c.halted,
                               "cs": r.get("cs"), "eip": r.get("eip")})
            cpus = merged
        except Exception as e:
            d["snapshot_error"] = str(e)
        d["cpus"] = cpus
        try:                             # a lost SCI explains a guest that never hears
            _, lost = self._interrupt_evidence(bundle)
            if lost:
                d["lost_sci"] = lost
                reason = d["reason"] = f"{reason}: {lost['text']}"
        except Exception as e:
            d["interrupts_error"] = str(e)
        d["console_tail"] = self.vm.console_tail(20)
        (bundle / "diagnosis.json").write_text(json.dumps(d, indent=2, default=str))
        self.hung = Hang(reason, d)
        return self.hung

    def close(self) -> None:
        self._release_claim()
        if self.vm is not None:
            self.vm.shutdown()
