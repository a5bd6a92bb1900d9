"""The booted-machine cache: boot each distinct machine once, start later scenarios from it.

Why: a TCG scenario is mostly its firmware boot (8.5 s to the guest's shell here, README
"Speed"), and most scenarios boot one of a handful of identical machines only to get to
the hot-plug they are about. A scenario that says ``boot: resume-ok``
(harness/bootpolicy.py; the loader refuses it where the boot is under test) starts from
what an earlier boot left: a migration stream taken once the guest agent answered, and
the OVMF VARS file as it was at that moment (pflash VARS is a file the VM writes, so it
is part of the machine). QEMU is started with the same arguments plus ``-incoming
defer``, loads the stream (``migrate-incoming exec:cat FILE``) and is then continued as a
fresh boot would be; the guest agent is probed instead of awaited.

The first scenario to need an entry boots fresh (its relocation is checked as always)
and saves the entry right after its boot. Scenarios whose boot is under test neither
read nor write the cache.

An entry is keyed by content, never by name or path: the sha256 of the QEMU binary (and
of what a build's wrapper script execs), QEMU's version string, the firmware CODE image
and VARS template, the guest kernel and initrd, and QEMU's argument list for the machine
with the run's own paths (sockets, VARS copy, logs) replaced by placeholders. A rebuilt
QEMU, another firmware, another guest image or any machine argument (CPUs, memory,
TSEG, SMI features, CPU properties, TCG threading, extra arguments) is another key. Not
in the key: QEMU's ROM and module directories (-L), which only change with the binary
that a version string names.

Layout: ``$SMM_HARNESS_BOOT_CACHE_DIR/<key>/`` (default ``$SMM_HARNESS_CACHE/boot``) holds ``stream.mig``, ``OVMF_VARS.fd``,
``meta.json`` (the key's inputs, the agent's banner, when and how fast it booted) and
the boot's ``console.log`` and ``firmware-debug.log`` (copied into a resumed run's
directory as ``cached-boot-*.log``, so its run directory still shows how the machine
booted). An entry is written into a private temporary directory and renamed into place:
renaming a directory onto an existing one fails, so when two pytest-xdist workers race
to save the same key the first one wins and the other discards its copy; a reader only
ever sees complete entries. An entry that does not load (a QEMU that refuses its stream)
is removed and the scenario boots fresh, saying why.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from ..errors import QemuError
from ..hostio import sha256_file
from .cmdline import qemu_args

_log = logging.getLogger(__name__)

FORMAT = 1                 # bump when what an entry holds or means changes
STREAM, VARS, META = "stream.mig", "OVMF_VARS.fd", "meta.json"
LOGS = {"console.log": "console_log", "firmware-debug.log": "debugcon"}
MIGRATE_TIMEOUT = 120.0    # writing or loading one stream (a 3 GiB guest: ~300 MB)


class _Placeholders(dict):
    """The run's own paths in QEMU's argument list, as placeholders in the key: any
    path qemu_args asks for (VARS copy, sockets, logs, and whatever per-run file a later
    argument adds) is ``@NAME``, so no run directory ever makes a key of its own."""

    def __missing__(self, name):
        return f"@{name.upper()}"


PLACEHOLDER_PATHS = _Placeholders()

_digests: dict = {}


def file_digest(path) -> str:
    """sha256 of a file's content, remembered per (device, inode, size, mtime) so that a
    QEMU binary is read once per process, not once per scenario."""
    st = os.stat(path)
    ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if ident not in _digests:
        _digests[ident] = sha256_file(path)
    return _digests[ident]


def binary_digest(path) -> str:
    """The QEMU binary's content. A fetched build's ``qemu-system-x86_64`` is a shell
    wrapper that execs the real binary (through its root's loader): then the digest
    covers the wrapper and every absolute file path it names, so a rebuilt binary behind
    an unchanged wrapper is another key."""
    digest = file_digest(path)
    with open(path, "rb") as f:
        if f.read(2) != b"#!":
            return digest
    parts = [digest]
    text = Path(path).read_text(errors="replace")
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        for w in words:
            w = w.split("=", 1)[1] if "=" in w and not w.startswith("/") else w
            if w.startswith("/") and os.path.isfile(w):
                parts.append(f"{w}:{file_digest(w)}")
    return "+".join(parts)


def key_inputs(binary, qemu_version, machine, firmware, accel, kernel=None, initrd=None,
               cmdline=None, coldplugs=()) -> dict:
    """What an entry depends on (``firmware``: a FirmwareImages; ``coldplugs``: the
    CpuPlugs device_add-ed before the boot, in order). Pure but for reading the files'
    content; the key is :func:`key_of` of it."""
    kw = {} if cmdline is None else {"cmdline": cmdline}
    args = qemu_args(str(binary), machine, firmware, accel, PLACEHOLDER_PATHS, kernel,
                     initrd, **kw)
    files = {str(firmware.code): f"@CODE:{file_digest(firmware.code)}"}
    if kernel:
        files[str(kernel)] = f"@KERNEL:{file_digest(kernel)}"
        files[str(initrd)] = f"@INITRD:{file_digest(initrd)}"
    norm = ["@QEMU"]
    for a in args[1:]:
        for path, token in files.items():
            a = a.replace(path, token)
        norm.append(a)
    inputs = {"format": FORMAT, "qemu": binary_digest(binary), "qemu_version": qemu_version,
              "vars_template": file_digest(firmware.vars_template), "args": norm}
    if coldplugs:        # absent otherwise: the keys of machines without any stay as they were
        inputs["coldplug"] = [{"slot": c.slot, "props": dict(sorted(c.props.items()))}
                              for c in coldplugs]
    return inputs


def key_of(inputs: dict) -> str:
    """A short stable name for ``inputs`` (80 bits of their sha256: collisions among a
    cache's few dozen entries are not a concern)."""
    import hashlib
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


@dataclass
class Entry:
    key: str
    dir: Path

    @property
    def stream(self) -> Path:
        return self.dir / STREAM

    @property
    def vars(self) -> Path:
        return self.dir / VARS

    def meta(self) -> dict:
        try:
            return json.loads((self.dir / META).read_text())
        except (OSError, ValueError):
            return {}

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file())


def default_root() -> Path:
    return settings.boot_cache_dir()


class Claim:
    """A held :meth:`BootCache.claim`; :meth:`release` is idempotent."""

    def __init__(self, f):
        self._f = f

    def release(self):
        if self._f is not None:
            self._f.close()               # closing the file drops the flock
            self._f = None


class BootCache:
    """Entries under ``root`` (default: settings.boot_cache_dir())."""

    def __init__(self, root=None):
        self.root = Path(root) if root else default_root()

    def lookup(self, key) -> Entry | None:
        """The complete entry for ``key``, or None."""
        e = Entry(key, self.root / key)
        if all((e.dir / n).is_file() for n in (STREAM, VARS, META)):
            return e
        return None

    def claim(self, key, timeout) -> "Claim | None":
        """The right to boot ``key``'s machine fresh and save it: an exclusive lock
        (``.KEY.lock``, flock, so a dead holder releases it) held until released. While
        another process (an xdist worker, another run) holds it, wait for it up to
        ``timeout`` s: it is booting the same machine, and on two cores two boots at once
        take as long as both one after the other, while the one that waited then resumes
        in a second. None if the wait ran out (then boot fresh anyway)."""
        self.root.mkdir(parents=True, exist_ok=True)
        f = open(self.root / f".{key}.lock", "a")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return Claim(f)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.close()
                    return None
                time.sleep(0.2)

    def staging(self, key) -> Path:
        """A private directory to write an entry for ``key`` into."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.root))

    def publish(self, staging: Path, key) -> Entry | None:
        """Rename ``staging`` into place; None (and ``staging`` removed) if another
        process published ``key`` first."""
        final = self.root / key
        try:
            os.rename(staging, final)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            return self.lookup(key)
        return Entry(key, final)

    def invalidate(self, key, why):
        """Remove an entry that did not load (a renamed-away copy, so a concurrent
        reader keeps its open files)."""
        _log.warning("boot cache entry %s removed: %s", key, why)
        src = self.root / key
        try:
            trash = Path(tempfile.mkdtemp(prefix=f".trash-{key}-", dir=self.root))
            os.rename(src, trash / key)
            shutil.rmtree(trash, ignore_errors=True)
        except OSError:
            pass

    def entries(self) -> list:
        if not self.root.is_dir():
            return []
        return [Entry(p.name, p) for p in sorted(self.root.iterdir())
                if p.is_dir() and not p.name.startswith(".")]

    def clear(self) -> tuple:
        """Remove every entry and leftover staging directory: (entries, bytes) freed."""
        n, size = 0, 0
        if not self.root.is_dir():
            return 0, 0
        for p in list(self.root.iterdir()):
            if p.is_dir():
                if not p.name.startswith("."):
                    n += 1
                size += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
                shutil.rmtree(p, ignore_errors=True)
        return n, size


# --- moving a machine in and out -----------------------------------------------------

def _wait_migration(qmp, alive, what, timeout):
    deadline = time.monotonic() + timeout
    while True:
        info = qmp.cmd("query-migrate")
        st = info.get("status")
        if st == "completed":
            return
        if st in ("failed", "cancelled"):
            raise QemuError(f"{what} {st}: {info.get('error-desc', '')}".rstrip(": "))
        if not alive():
            raise QemuError(f"QEMU exited during {what}")
        if time.monotonic() > deadline:
            raise QemuError(f"{what} not completed within {timeout:.0f} s")
        time.sleep(0.02)


def _capabilities_off(qmp, names):
    """Turn off migration capabilities (names) that are on; returns those it turned off.
    A stream that leaves RAM out (x-ignore-shared with shared memory backends) cannot
    stand alone, so the cache's streams are taken without it."""
    try:
        caps = qmp.cmd("query-migrate-capabilities")
    except QemuError:
        return []
    on = [c["capability"] for c in caps if c.get("capability") in names and c.get("state")]
    if on:
        qmp.cmd("migrate-set-capabilities",
                capabilities=[{"capability": c, "state": False} for c in on])
    return on


def save(vm, cache: BootCache, key, inputs, banner, boot_seconds,
         timeout=MIGRATE_TIMEOUT) -> Entry | None:
    """Stop the booted ``vm``, write its migration stream and VARS file as entry ``key``,
    continue it. Returns the entry (another process's if it won the race)."""
    if cache.lookup(key):
        return cache.lookup(key)
    staging = cache.staging(key)
    t0 = time.monotonic()
    try:
        was_running = vm.qmp.cmd("query-status").get("running")
        if was_running:
            vm.qmp.cmd("stop")
        restore = []
        try:
            restore = _capabilities_off(vm.qmp, ("x-ignore-shared",))
            vm.qmp.cmd("migrate", uri=f"exec:cat > {shlex.quote(str(staging / STREAM))}")
            _wait_migration(vm.qmp, vm.alive, "boot cache migration", timeout)
            # stopped: the VARS file is what the stream's flash holds
            shutil.copyfile(vm.paths()["vars"], staging / VARS)
        finally:
            if restore:
                vm.qmp.cmd("migrate-set-capabilities",
                           capabilities=[{"capability": c, "state": True} for c in restore])
            if was_running:
                vm.qmp.cmd("cont")
        for name, which in LOGS.items():
            try:
                shutil.copyfile(vm.paths()[which], staging / name)
            except OSError:
                pass
        meta = {"key": key, "inputs": inputs, "banner": banner,
                "boot_seconds": boot_seconds, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "save_seconds": round(time.monotonic() - t0, 2),
                "stream_bytes": (staging / STREAM).stat().st_size}
        (staging / META).write_text(json.dumps(meta, indent=1))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return cache.publish(staging, key)


def load(vm, entry: Entry, timeout=MIGRATE_TIMEOUT) -> float:
    """Load ``entry``'s stream into ``vm`` (launched with ``-incoming defer``); returns
    the seconds it took. The machine is then paused where the earlier boot stopped.
    Raises QemuError (QEMU's words where it has some) if the stream does not load."""
    t0 = time.monotonic()
    try:
        vm.qmp.cmd("migrate-incoming", uri=f"exec:cat {shlex.quote(str(entry.stream))}")
        deadline = time.monotonic() + timeout
        while True:
            status = vm.qmp.cmd("query-status").get("status")
            if status != "inmigrate":
                break
            if time.monotonic() > deadline:
                raise QemuError(f"boot cache stream not loaded within {timeout:.0f} s")
            time.sleep(0.02)
        if status not in ("paused", "prelaunch"):
            raise QemuError(f"after loading the boot cache stream QEMU is {status!r}")
    except QemuError as e:
        words = vm.failure_text() if not vm.alive() else ""
        text = str(e) if not words or words in str(e) else f"{e}: QEMU: {words}"
        raise QemuError(text) from None
    for name in LOGS:
        try:
            shutil.copyfile(entry.dir / name, vm.run_dir / f"cached-boot-{name}")
        except OSError:
            pass
    return time.monotonic() - t0


# --- python -m harness cache ---------------------------------------------------------

def register(sub):
    p = sub.add_parser("cache", help="the booted-machine cache: list or clear its entries")
    p.add_argument("action", choices=("list", "clear"))
    p.set_defaults(func=_cmd_cache)


def _cmd_cache(a):
    cache = BootCache()
    if a.action == "clear":
        n, size = cache.clear()
        print(f"boot cache {cache.root}: removed {n} entries, {size / 1e6:.0f} MB")
        return 0
    entries = cache.entries()
    total = 0
    for e in entries:
        m, size = e.meta(), e.size()
        total += size
        print(f"{e.key}  {size / 1e6:6.0f} MB  QEMU {(m.get('inputs') or {}).get('qemu_version')}"
              f"  booted {m.get('boot_seconds')} s  {m.get('created')}")
        inputs = m.get("inputs") or {}
        plugs = "".join(f" +slot{c['slot']}" for c in inputs.get("coldplug", []))
        print(f"    {_machine_summary(inputs.get('args', []))}{plugs}")
    print(f"boot cache {cache.root}: {len(entries)} entries, {total / 1e6:.0f} MB")
    return 0


def _machine_summary(args) -> str:
    """The arguments that tell machines apart (-smp, -m, -cpu, -accel, -global)."""
    out = []
    for flag, val in zip(args, args[1:]):
        if flag in ("-smp", "-m", "-cpu", "-accel") or (
                flag == "-global" and not val.startswith(("driver=cfi", "isa-debugcon"))):
            out.append(f"{flag} {val}")
    return " ".join(out)
