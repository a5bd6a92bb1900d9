"""One QEMU q35 virtual machine: process, QMP, serial console, teardown (its argument
list is :mod:`harness.qemu.cmdline`).

Modelled on QEMU's ``python/qemu/machine``: the harness owns the process, talks QMP over
a UNIX socket, reads the serial console over another, and on any failure or interrupt
the process is gone while its stderr, console log, QMP log and firmware debug log stay
in the run directory.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
import zlib
from pathlib import Path

import pexpect.fdpexpect

from ..errors import ConfigError, QemuCrashed, QemuError
from ..known_bugs import version_tuple
from ..machine import MachineConfig
from . import process
from .cmdline import KERNEL_CMDLINE, SHARED_RAM_MIN_QEMU, qemu_args
from .qmp import QmpSession

SOCK_PARENT = "/tmp" if os.path.isdir("/tmp") else None
# tmpfs for guest RAM as a shared file (cmdline.shared_ram_args): RAM, never disk
SHARED_RAM_DIR = "/dev/shm"


def shared_ram_dir(memory_mib, qemu_version, parent=SHARED_RAM_DIR):
    """(directory, None) where guest RAM can be a shared file, so that snapshots leave
    it out; (None, why not) otherwise, and the machine keeps private RAM (snapshots
    then carry it, as before). tmpfs allocates on write and a full one kills QEMU with
    SIGBUS on the guest's next touch, so it must have room for all of the guest's RAM."""
    try:
        if version_tuple(qemu_version) < SHARED_RAM_MIN_QEMU:
            return None, (f"QEMU {qemu_version} < "
                          f"{'.'.join(map(str, SHARED_RAM_MIN_QEMU))} has no "
                          f"-machine memory-backend")
    except ValueError:
        return None, f"QEMU version {qemu_version!r} unknown"
    try:
        st = os.statvfs(parent)
    except OSError as e:
        return None, f"{parent}: {e.strerror}"
    if not os.access(parent, os.W_OK | os.X_OK):
        return None, f"{parent} is not writable"
    free_mib = st.f_bavail * st.f_frsize >> 20
    if free_mib < memory_mib:
        return None, f"{parent} has {free_mib} MiB free, the guest {memory_mib} MiB"
    return parent, None


def last_words(stderr_text):
    """The last non-empty stderr line that is not a warning (``PROG: warning: ...``)."""
    lines = [line for line in stderr_text.splitlines()
             if line.strip() and not WARNING_LINE.match(line)]
    return lines[-1] if lines else ""


WARNING_LINE = re.compile(r"^\S+: warning: ")


class QemuVM:
    def __init__(self, *, binary, machine: MachineConfig, firmware, profile, run_dir,
                 accel, kernel=None, initrd=None, cmdline=KERNEL_CMDLINE, ram_dir=None):
        self.binary = binary
        self.machine = machine
        self.firmware = firmware          # firmware.FirmwareImages
        self.profile = profile            # firmware.FirmwareProfile
        self.run_dir = Path(run_dir)
        self.accel = accel
        self.kernel, self.initrd, self.cmdline = kernel, initrd, cmdline
        # guest RAM as a shared file in this tmpfs directory (None: private RAM); QEMU
        # unlinks its file as soon as it has created it, so nothing is left to clean
        self.ram_dir = ram_dir
        # a boot cache entry (harness.qemu.bootcache) to start from: its VARS file
        # instead of the template, and -incoming defer (the backend loads its stream)
        self.incoming = None
        self.proc = None
        self.qmp = None
        self.console = None
        self._console_sock = None
        self._console_log = None
        self.exitcode = None
        # UNIX socket paths must fit in 108 bytes (sun_path), which a run directory deep
        # in a pytest tmp tree or a user's --trace-dir easily exceeds: sockets live in a
        # short private directory instead (as QEMU's python/qemu/machine does).
        self.sock_dir = Path(tempfile.mkdtemp(prefix="smmh-", dir=SOCK_PARENT))

    # --- command line --------------------------------------------------------------
    def paths(self):
        d, sock = self.run_dir, self.sock_dir
        return {"qmp": sock / "qmp.sock", "console": sock / "console.sock",
                "vars": d / "OVMF_VARS.fd", "stderr": d / "qemu-stderr.log",
                "stdout": d / "qemu-stdout.log", "console_log": d / "console.log",
                "qmp_log": d / "qmp.log", "debugcon": d / "firmware-debug.log",
                "ram_dir": self.ram_dir}

    def command_line(self):
        args = qemu_args(self.binary, self.machine, self.firmware, self.accel, self.paths(),
                         self.kernel, self.initrd, self.cmdline)
        return args + (["-incoming", "defer"] if self.incoming is not None else [])

    # --- lifecycle -----------------------------------------------------------------
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def launch(self, timeout=20.0):
        """Start QEMU paused (-S), connect QMP and the console. Raises QemuError with
        QEMU's own stderr when it refuses to start."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        p = self.paths()
        shutil.copyfile(self.incoming.vars if self.incoming is not None
                        else self.firmware.vars_template, p["vars"])
        (self.run_dir / "qemu-cmdline.txt").write_text(
            " ".join(self.command_line()) + "\n")
        deadline = time.monotonic() + timeout
        with open(p["stdout"], "wb") as out, open(p["stderr"], "wb") as err:
            self.proc = process.spawn(self.command_line(), out, err)
        try:
            self.qmp = QmpSession(p["qmp"], p["qmp_log"])
            self.qmp.connect(deadline, self.alive)
            self.qmp.on_failure = self.raise_if_crashed
            self._connect_console(deadline)
        except QemuError:
            self.shutdown()
            raise QemuError(self.failure_text() or "QEMU did not start") from None
        return self

    def raise_if_crashed(self, grace=3.0):
        """QMP lost QEMU: if the process is exiting, say so with its own last words."""
        try:
            self.proc.wait(grace)
        except Exception:
            return
        raise QemuCrashed(self.proc.returncode, self.failure_text())

    def failure_text(self):
        """QEMU's last stderr line that is not a warning: what it says when it refuses to
        start or dies. A warning is not the reason (QEMU 7.2.22 warns "Blocked re-entrant
        IO on MemoryRegion: acpi-cpu-hotplug" and then dies of the unplug heap corruption
        without a word): only warnings, or nothing, is an empty message."""
        try:
            text = self.paths()["stderr"].read_text(errors="replace")
        except OSError:
            return ""
        return last_words(text)

    def _connect_console(self, deadline):
        path = str(self.paths()["console"])
        while time.monotonic() < deadline:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                self._console_sock = s
                self._console_log = open(self.paths()["console_log"], "ab")
                self.console = pexpect.fdpexpect.fdspawn(s.fileno(), timeout=10,
                                                         encoding=None)
                self.console.logfile_read = self._console_log
                return
            except OSError:
                s.close()
                if not self.alive():
                    raise QemuError("QEMU exited before the console socket opened")
                time.sleep(0.05)
        raise QemuError("console socket did not open in time")

    def shutdown(self, timeout=5.0):
        """Quit QEMU (QMP quit, then signals), close everything. Safe to call twice."""
        if self.proc is not None and self.alive() and self.qmp is not None:
            try:
                self.qmp.cmd("quit", timeout=2)
            except Exception:
                pass
            try:
                self.proc.wait(timeout)
            except Exception:
                pass
        if self.proc is not None:
            self.exitcode = process.kill(self.proc)
        if self.qmp is not None:
            self.qmp.close()
        if self.console is not None:
            try:
                # pull whatever the console still had buffered into the log
                self.console.read_nonblocking(1 << 20, timeout=0)
            except Exception:
                pass
        if self._console_sock is not None:
            self._console_sock.close()
            self._console_sock = None
        if self._console_log is not None and not self._console_log.closed:
            self._console_log.close()
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    def console_text(self):
        """The guest console output read so far."""
        log = self._console_log
        if log is not None and not log.closed:
            log.flush()
        try:
            return self.paths()["console_log"].read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def pull_console(self):
        """Read what the console has pending into its log (a wait's evidence); only
        where no guest command is waiting for its answer."""
        if self.console is None:
            return
        try:
            while self.console.read_nonblocking(1 << 16, timeout=0):
                pass
        except Exception:          # nothing pending (TIMEOUT) or closed (EOF)
            pass

    def debugcon_bytes(self):
        """Bytes the firmware has written to its debug console (port 0x402)."""
        try:
            return self.paths()["debugcon"].stat().st_size
        except OSError:
            return 0

    def flash_crc(self):
        """A CRC-32 of the firmware's variable store (the pflash VARS file, which QEMU
        writes through as the guest programs it): a firmware writing a variable inside
        a long SMI is making progress, however its CPUs look. (OVMF 2022.11's 42-48 s SMI
        153 writes nothing: the CRC stayed the same through it, recorded.)"""
        try:
            return zlib.crc32(self.paths()["vars"].read_bytes())
        except OSError:
            return 0

    def console_tail(self, lines=30):
        try:
            text = self.paths()["console_log"].read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # --- helpers used by the backend -----------------------------------------------
    def hotpluggable_cpus(self):
        """query-hotpluggable-cpus sorted by topology: index in the list = slot."""
        cpus = self.qmp.cmd("query-hotpluggable-cpus")
        def key(c):
            pr = c["props"]
            return tuple(pr.get(k, 0) for k in ("socket-id", "die-id", "core-id", "thread-id"))
        return sorted(cpus, key=key)

    def slot_props(self, slot):
        slots = self.hotpluggable_cpus()
        if not 0 <= slot < len(slots):
            raise ConfigError(f"CPU slot {slot} out of range: this machine has "
                              f"{len(slots)} possible CPUs (0..{len(slots) - 1})")
        return slots[slot]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
