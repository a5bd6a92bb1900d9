"""Start and stop QEMU so that no QEMU process outlives the harness.

Three layers, because any one of them can be bypassed:
1. every QEMU child gets ``PR_SET_PDEATHSIG = SIGKILL``, so the kernel kills it when the
   harness process dies, however it dies (SIGKILL, crash, OOM);
2. a registry of live QEMU processes is killed at interpreter exit (``atexit``) and by
   ``install_signal_handlers()`` on SIGTERM/SIGHUP, which turns them into a clean
   KeyboardInterrupt-style unwind so traces and logs are closed properly;
3. each VM's own ``shutdown()`` (QMP quit, then SIGTERM, then SIGKILL, all bounded).
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import weakref

from .. import settings
from ..errors import ConfigError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
_live = weakref.WeakSet()


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM/SIGHUP so cleanup code runs."""


def _set_pdeathsig():
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    # own process group: a Ctrl-C in the terminal reaches the harness, which then
    # shuts QEMU down itself and keeps its logs, instead of QEMU dying first
    os.setpgrp()


def spawn(argv, stdout, stderr):
    # glibc writes its fatal messages (heap corruption: "free(): invalid next size")
    # to the controlling terminal, not to stderr, unless LIBC_FATAL_STDERR_ is set: a
    # crash must leave QEMU's words in qemu-stderr.log, whatever terminal ran us
    env = {**os.environ, "LIBC_FATAL_STDERR_": "1"}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            preexec_fn=_set_pdeathsig, close_fds=True, env=env)
    _live.add(proc)
    log.info("QEMU started (pid %d): %s", proc.pid, " ".join(map(str, argv)))
    return proc


def kill(proc, grace=3.0):
    """SIGTERM, wait ``grace`` seconds, then SIGKILL; returns the exit status."""
    if proc.poll() is None:
        try:
            proc.terminate()
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    _live.discard(proc)
    log.debug("QEMU pid %d ended, status %s", proc.pid, proc.returncode)
    return proc.returncode


def cpu_seconds(pid):
    """CPU time (user + system, seconds) a process has used: how much work QEMU did,
    whatever share of the host it got (harness.qemu.progress)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kill_all():
    for proc in list(_live):
        try:
            kill(proc, grace=1.0)
        except Exception:
            pass


atexit.register(kill_all)


def install_signal_handlers():
    """SIGTERM/SIGHUP unwind like Ctrl-C (cleanup runs, traces are closed)."""
    def handler(signum, frame):
        raise Terminated(f"terminated by signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError):
            pass   # not the main thread


def resolve_binary(path=None):
    """The QEMU binary to run: an explicit path, $SMM_HARNESS_QEMU, or the system one."""
    name = path or settings.get("SMM_HARNESS_QEMU") or "qemu-system-x86_64"
    found = shutil.which(name) if os.sep not in name else (name if os.path.isfile(name) else None)
    if not found:
        raise ConfigError(f"QEMU binary not found: {name}")
    if not os.access(found, os.X_OK):
        raise ConfigError(f"QEMU binary is not executable: {found}")
    return found


_versions = {}


def version_markers(version_output):
    """'+smm-fix' when ``--version``'s package version ends with the marker of one of our
    patch series (harness.known_bugs: a fixed build of the same release), else ''."""
    from ..known_bugs import BUGS
    first = version_output.strip().splitlines()[0] if version_output.strip() else ""
    m = re.search(r"\(([^()]*)\)\s*$", first)
    if not m:
        return ""
    tail = m.group(1).split("+")[1:]
    known = {b.fixed_by for b in BUGS if b.fixed_by}
    return "".join(f"+{t}" for t in tail if t in known)


def qemu_version(binary):
    if binary not in _versions:
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ConfigError(f"cannot run {binary} --version: {e}") from None
        m = re.search(r"version (\S+)", out)
        if not m:
            raise ConfigError(f"{binary} does not look like QEMU: {out.strip()[:80]!r}")
        _versions[binary] = m.group(1) + version_markers(out)
    return _versions[binary]


_kvm_smm = {}


def kvm_can_do_smm(binary):
    """Whether ``-accel kvm`` with ``smm=on`` starts (KVM without SMM refuses at once)."""
    if binary in _kvm_smm:
        return _kvm_smm[binary]
    ok = False
    if os.path.exists("/dev/kvm"):
        try:
            r = subprocess.run(
                [binary, "-machine", "q35,smm=on", "-accel", "kvm", "-nodefaults",
                 "-display", "none", "-S", "-qmp", "stdio"],
                input='{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n',
                capture_output=True, text=True, timeout=20)
            ok = r.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
    _kvm_smm[binary] = ok
    return ok


def resolve_accel(binary, accel):
    if accel == "auto":
        return "kvm" if kvm_can_do_smm(binary) else "tcg"
    if accel == "kvm" and not kvm_can_do_smm(binary):
        raise ConfigError("accel kvm requested, but KVM cannot run SMM guests here "
                          "('System Management Mode not supported by this hypervisor' "
                          "or no /dev/kvm); use --accel tcg")
    return accel
