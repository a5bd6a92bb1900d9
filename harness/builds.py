"""Named QEMU and OVMF builds (``qemu-11.1``, ``ovmf-2025.02`` ...), fetched from Debian's
package registry into a cache, so that a run can say which build it targets and anyone
can get the same one with ``python -m harness builds fetch NAME``.

Why these builds and how each runs on a Debian 12 host is measured in
``shared/design/builds.md``; :data:`CATALOG` (:mod:`harness.build_catalog`) is that
table, one row per build, so a new build (a source-built ``qemu-7.2-smm-fix``, a newer
OVMF) is one more row. Debian's version rules are :mod:`harness.debian_versions`; this
module fetches, caches and resolves builds.

How a build is obtained:

* ``system`` rows name what Debian 12 installs (QEMU 7.2, OVMF 2022.11); nothing is
  fetched, the row only checks that the installed version is the one the name promises.
* ``debs`` rows download ``.deb`` files of one suite (``apt-get download``) and unpack
  them with ``dpkg-deb -x`` into a private root: bookworm-backports' QEMU runs on the
  host's own libraries, arch-all OVMF packages need nothing at all.
* the ``mmdebstrap`` row builds a whole trixie root (QEMU 11.1 is linked against
  Debian 13's libraries) and runs QEMU through that root's own dynamic loader.
* ``source`` rows build QEMU from the suite's source package with one of our patch
  series (``contrib/qemu/``) applied: :mod:`harness.source_build`.

Nothing is installed into the system and the system's apt sources are never touched:
package versions are looked up and downloaded through a private apt configuration per
suite under the cache (its own sources, lists, package cache and an empty dpkg status).
The mirror is the one the system's own sources use for its Debian release, read from
``/etc/apt/sources.list{,.d}``, so a build comes from wherever this machine gets Debian.

The cache is ``$SMM_HARNESS_CACHE/builds`` (default ``~/.cache/smm-hotplug-harness/builds``),
one directory per build name holding ``build.json`` (what was fetched: package versions
and ``.deb`` sha256s, runnable paths, image hashes, the version string) and, for QEMU,
``bin/qemu-system-x86_64``: a ``#!/bin/sh`` wrapper that ``exec``s the real binary with
its ROM and module directories, so the PID the harness sees is QEMU's. A build is made
in a temporary directory and renamed into place (a killed fetch leaves nothing half
done), under a per-build ``fcntl`` lock (pytest-xdist workers asking for the same build
wait for one fetch). A cached build is recognised from its ``build.json`` alone: no apt
runs at all.

Failures are one line: :class:`~harness.errors.ConfigError` for a user's mistake (an
unknown build name, a path that is not QEMU or OVMF), :class:`~harness.errors.HarnessError`
for a download or unpack that failed (with apt's last meaningful line).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import hw, settings
from .errors import ConfigError, HarnessError
from . import hostio
from .build_catalog import (BY_NAME, CATALOG, OVMF_CODE, OVMF_VARS, QEMU_BINARY,  # noqa: F401
                            CatalogEntry, _lookup, build_names, catalog_entry)
from .debian_versions import (compare_versions, deb_filename_version,  # noqa: F401
                              madison_versions, parse_dpkg_status, pick_version,
                              upstream_matches)
from .hostio import exclusive_lock as _lock, last_line, sha256_file

_log = logging.getLogger(__name__)

Log = Callable[[str], None]

#: Debian's archive keys. bookworm's debian-archive-keyring also holds trixie's keys,
#: and sid's Release is signed by keys it holds (checked 2026-12-01), so every suite
#: below is verified; no source needs ``[trusted=yes]``.
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MULTIARCH = "x86_64-linux-gnu"
RECORD = "build.json"
WRAPPER = "bin/qemu-system-x86_64"
RECORD_FORMAT = 1
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))

# ROM directories, in QEMU's search order: its own data, then the SeaBIOS and iPXE ROMs
# Debian's QEMU also looks for (where the root has them; else QEMU falls back to its
# built-in directories, i.e. the host's seabios and ipxe-qemu)
QEMU_DATADIRS = ("usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu")
QEMU_MODULE_DIR = f"usr/lib/{MULTIARCH}/qemu"

# QMP session that proves a QEMU starts a q35 machine: every library, module and ROM
# (bios-256k.bin, kvmvapic.bin, ...) a q35 machine needs at start-up is found.
QMP_PROBE_INPUT = '{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n'
QMP_PROBE_ARGS = ("-M", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
                  "-qmp", "stdio")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- builds


@dataclass(frozen=True)
class Build:
    """A runnable build. ``version`` is QEMU's version number ("11.1.3") or the OVMF
    package version ("2025.02-8+deb13u1", from which :mod:`harness.firmware` tells the
    edk2 release); "" when unknown. ``qemu`` is the wrapper of a fetched QEMU (or the
    binary itself), ``sha256`` maps the real binary or images to their hashes,
    ``record`` is the build.json of a fetched build, ``source`` "system" | "fetched" |
    "path"."""
    name: str
    kind: str
    version: str
    qemu: Optional[Path] = None
    ovmf_code: Optional[Path] = None
    ovmf_vars: Optional[Path] = None
    sha256: Dict[str, str] = field(default_factory=dict, hash=False)
    record: Optional[Path] = None
    source: str = "fetched"

    @property
    def path(self) -> Optional[Path]:
        """The one path to show for the build."""
        return self.qemu if self.kind == "qemu" else self.ovmf_code

    def describe(self) -> str:
        return f"{'QEMU' if self.kind == 'qemu' else 'OVMF'} {self.version or '(version unknown)'}"


def cache_root() -> Path:
    """Where fetched builds live: ``$SMM_HARNESS_CACHE/builds`` or the user's cache."""
    return settings.cache_dir() / "builds"


_hashes: Dict[Tuple[str, int, int], str] = {}


def _hash_cached(path: Path) -> str:
    """sha256 of a file, memoised by (path, size, mtime): system builds are hashed once."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _hashes:
        _hashes[key] = sha256_file(path)
    return _hashes[key]


# ---------------------------------------------------------------- small tools


def _run(argv: Sequence[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run a tool quietly (output captured); one-line errors when it cannot run."""
    _log.debug("run: %s", " ".join(shlex.quote(str(a)) for a in argv))
    return hostio.run_tool(argv, timeout, ": fetching builds needs a Debian host with "
                           "apt and dpkg", capture_output=True, text=True, **kw)


def _mount_points() -> List[str]:
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 4:
            out.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4]))
    return out


def _remove_tree(path: Path) -> None:
    """rmtree that refuses a tree with something mounted in it (a root left by a
    killed mmdebstrap could hold a bind mount of the host's /dev)."""
    if not path.exists() and not path.is_symlink():
        return
    real = os.path.realpath(path)
    mounted = [m for m in _mount_points() if m == real or m.startswith(real + "/")]
    if mounted:
        raise HarnessError(f"{path} has {mounted[0]} mounted in it; unmount it, then "
                           f"remove {path}")
    shutil.rmtree(path)


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- apt sources


@dataclass(frozen=True)
class SourceEntry:
    types: Tuple[str, ...]
    uris: Tuple[str, ...]
    suites: Tuple[str, ...]
    components: Tuple[str, ...] = ()


def parse_one_line_sources(text: str) -> List[SourceEntry]:
    """Entries of a one-line-style ``sources.list``: ``deb [opts] URI SUITE COMP...``."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        kind, rest = tokens[0], tokens[1:]
        if kind not in ("deb", "deb-src"):
            continue
        if rest and rest[0].startswith("["):
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) < 2:
            continue
        out.append(SourceEntry((kind,), (rest[0],), (rest[1],), tuple(rest[2:])))
    return out


def parse_deb822_sources(text: str) -> List[SourceEntry]:
    """Entries of a deb822 ``.sources`` file (``Types:``, ``URIs:``, ``Suites:`` ...);
    paragraphs with ``Enabled: no`` are left out."""
    out = []
    paragraphs: List[Dict[str, str]] = [{}]
    key = None
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if not raw.strip():
            if paragraphs[-1]:
                paragraphs.append({})
            key = None
            continue
        if raw[0] in " \t" and key:
            paragraphs[-1][key] += " " + raw.strip()
            continue
        k, sep, v = raw.partition(":")
        if not sep:
            continue
        key = k.strip().lower()
        paragraphs[-1][key] = v.strip()
    for p in paragraphs:
        if not p or p.get("enabled", "yes").lower() == "no":
            continue
        entry = SourceEntry(tuple(p.get("types", "").split()), tuple(p.get("uris", "").split()),
                            tuple(p.get("suites", "").split()),
                            tuple(p.get("components", "").split()))
        if entry.types and entry.uris and entry.suites:
            out.append(entry)
    return out


def mirror_from_sources(files: Iterable[Tuple[str, str]], codename: str) -> Optional[str]:
    """The URI of the first ``deb`` entry whose suite is ``codename`` (the system's main
    Debian suite), from (file name, text) pairs; ``.sources`` files are deb822."""
    for name, text in files:
        entries = (parse_deb822_sources(text) if name.endswith(".sources")
                   else parse_one_line_sources(text))
        for e in entries:
            if "deb" in e.types and codename in e.suites:
                for uri in e.uris:
                    if re.match(r"(https?|file):", uri):
                        return uri.rstrip("/")
    return None


def system_codename(os_release: Path = Path("/etc/os-release")) -> Optional[str]:
    try:
        text = os_release.read_text()
    except OSError:
        return None
    m = re.search(r'^VERSION_CODENAME="?([a-z]+)"?\s*$', text, re.M)
    return m.group(1) if m else None


def _system_source_files(paths=None) -> List[Tuple[str, str]]:
    out = []
    for p in paths or APT_SOURCES:
        files = ([p] if p.is_file() else
                 sorted(f for f in p.glob("*") if f.suffix in (".list", ".sources"))
                 if p.is_dir() else [])
        for f in files:
            try:
                out.append((f.name, f.read_text()))
            except OSError:
                continue
    return out


def system_mirror() -> str:
    """The Debian mirror this machine uses, as its apt sources say."""
    codename = system_codename()
    if not codename:
        raise HarnessError("cannot tell the Debian release of this host (no VERSION_CODENAME "
                           "in /etc/os-release): fetching builds needs a Debian host")
    uri = mirror_from_sources(_system_source_files(), codename)
    if not uri:
        raise HarnessError(f"no 'deb' source for Debian {codename} in /etc/apt/sources.list "
                           f"or /etc/apt/sources.list.d/: cannot tell which mirror to fetch "
                           f"builds from")
    return uri


def private_sources(mirror: str, suites: Iterable[str], types: str = "deb",
                    components: Sequence[str] = ("main",)) -> str:
    """deb822 text of the private apt sources for ``suites`` (amd64, signed): binary
    packages, or source packages with ``types`` "deb-src"; ``main`` unless told otherwise
    (intel-microcode lives in ``non-free-firmware``)."""
    comps = " ".join(components)
    return "".join(
        f"Types: {types}\nURIs: {mirror}\nSuites: {s}\nComponents: {comps}\n"
        f"Architectures: amd64\nSigned-By: {KEYRING}\n\n" for s in suites)


class PrivateApt:
    """apt-get / apt-cache on a private configuration for one suite under the cache:
    its own sources, lists, package cache and an empty dpkg status, so the system's
    apt state is neither read for candidates nor written."""

    _updated: set = set()       # private apt dirs whose lists this process refreshed

    def __init__(self, cache: Path, suite: str, mirror: str, types: str = "deb",
                 components: Sequence[str] = ("main",)):
        self.suite, self.mirror, self.types = suite, mirror, types
        self.components = tuple(components)
        name = suite if types == "deb" else f"{suite}-{types}"
        if self.components != ("main",):
            name += "-" + "-".join(self.components)
        self.dir = cache / ".apt" / name

    def options(self) -> List[str]:
        d = self.dir
        return ["-o", "Dir::Etc::SourceList=/dev/null",
                "-o", f"Dir::Etc::SourceParts={d / 'sources.list.d'}",
                "-o", "Dir::Etc::Preferences=/dev/null",
                "-o", f"Dir::Etc::PreferencesParts={d / 'preferences.d'}",
                "-o", f"Dir::State={d / 'state'}",
                "-o", f"Dir::State::Lists={d / 'lists'}",
                "-o", f"Dir::State::status={d / 'status'}",
                "-o", f"Dir::Cache={d / 'cache'}",
                "-o", "APT::Sandbox::User=root",
                "-o", "Acquire::Languages=none",
                "-o", "APT::Get::AllowUnauthenticated=false"]

    def prepare(self) -> None:
        if not KEYRING.is_file():
            raise HarnessError(f"{KEYRING} not found: install Debian's debian-archive-keyring")
        for sub in ("sources.list.d", "preferences.d", "state", "lists/partial",
                    "cache/archives/partial"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "status").touch()
        src = self.dir / "sources.list.d" / f"{self.suite}.sources"
        text = private_sources(self.mirror, [self.suite], self.types, self.components)
        if not src.is_file() or src.read_text() != text:
            _write_atomic(src, text)

    def update(self, who: str, log: Log) -> None:
        """Refresh the lists once per process (a fetch wants the suite's current state)."""
        if str(self.dir) in self._updated:
            return
        log(f"builds: {who}: apt-get update {self.suite} (private lists)")
        proc = _run(["apt-get", *self.options(), "-q", "update"], timeout=600)
        if proc.returncode != 0 or "E:" in proc.stderr:
            raise HarnessError(f"{who}: apt-get update of {self.suite} failed: {last_line(proc)}")
        self._updated.add(str(self.dir))

    def madison(self, packages: Sequence[str]) -> str:
        proc = _run(["apt-cache", *self.options(), "madison", *packages], timeout=120)
        if proc.returncode != 0:
            raise HarnessError(f"apt-cache madison {' '.join(packages)} failed: {last_line(proc)}")
        return proc.stdout

    def download(self, who: str, specs: Sequence[str], dest: Path) -> None:
        proc = _run(["apt-get", *self.options(), "-q", "download", *specs], cwd=dest,
                    timeout=1200)
        if proc.returncode != 0:
            raise HarnessError(f"{who}: apt-get download failed: {last_line(proc)}")


# ---------------------------------------------------------------- files of a root


def in_root(root: Path, rel: str) -> Path:
    """``rel`` inside ``root`` with every symlink resolved *within* the root: an
    absolute link target (``/lib/x86_64-linux-gnu/...``) means the root's file, never
    the host's (which the kernel would follow to: the host's loader with the root's
    libc does not run)."""
    parts = [p for p in rel.split("/") if p]
    done: List[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, part)
        if here.is_symlink():
            hops += 1
            if hops > 40:
                raise HarnessError(f"too many symlinks resolving {rel} in {root}")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(part)
    return root.joinpath(*done)


def _rel(path: Path, base: Path) -> str:
    return str(path.relative_to(base))


def wrapper_script(build_dir: Path, layout: Dict[str, object], title: str = "") -> str:
    """The ``bin/qemu-system-x86_64`` of a fetched QEMU: ``exec`` (so the PID the harness
    sees is QEMU's) of the real binary, through the root's loader when the build has
    one, with the build's module directory and its ROM directories first."""
    def p(rel):
        return shlex.quote(str(build_dir / str(rel)))
    lines = ["#!/bin/sh"]
    if title:
        lines.append(f"# {title}")
    lines.append("# generated by harness/builds.py; runs the build in the directory above")
    lines.append(f"QEMU_MODULE_DIR={p(layout['module_dir'])}")
    lines.append("export QEMU_MODULE_DIR")
    binary = p(layout["binary"])
    data = " ".join(f"-L {p(d)}" for d in layout["datadirs"])
    if layout.get("loader"):
        libpath = shlex.quote(":".join(str(build_dir / str(d))
                                       for d in layout.get("library_path") or []))
        lines.append(f'exec {p(layout["loader"])} --library-path {libpath} {binary} '
                     f'{data} "$@"')
    else:
        lines.append(f'exec {binary} {data} "$@"')
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- checks of binaries and images


def version_line(binary: Union[str, Path], timeout: float = 20) -> str:
    """First line of ``BINARY --version``; ConfigError(reason) if it does not run."""
    try:
        proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        raise ConfigError(f"cannot run it: {e}") from None
    out = (proc.stdout or "").strip()
    if proc.returncode != 0 or not out:
        raise ConfigError(f"--version failed: {last_line(proc)}")
    return out.splitlines()[0].strip()


def qemu_version_number(line: str) -> Optional[str]:
    """'QEMU emulator version 11.1.3 (Debian ...)' -> '11.1.3'; None if not QEMU."""
    m = re.search(r"QEMU emulator version (\d+\.\d+(?:\.\d+)?)", line)
    return m.group(1) if m else None


def qmp_probe(binary: Union[str, Path], timeout: float = 30) -> Optional[str]:
    """None if ``binary`` starts a q35 machine and answers QMP; else why not (one line)."""
    try:
        proc = subprocess.run([str(binary), *QMP_PROBE_ARGS], input=QMP_PROBE_INPUT,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"no QMP answer within {timeout:.0f} s"
    except OSError as e:
        return str(e)
    if proc.returncode != 0 or '"return"' not in proc.stdout:
        return last_line(proc)
    return None


FVH_OFFSET = hw.FVH_SIGNATURE_OFFSET
BLOCK = hw.FLASH_BLOCK_SIZE


def ovmf_image_problem(path: Union[str, Path], min_size: int = 1 << 20) -> Optional[str]:
    """None if ``path`` looks like an OVMF flash image: a file whose size is a multiple
    of 4 KiB and at least ``min_size``, with a UEFI firmware volume header (``_FVH`` at
    offset 0x28) at the start of some 4 KiB block; else what is wrong."""
    p = Path(path)
    if not p.exists():
        return "no such file"
    if not p.is_file():
        return "not a regular file"
    size = p.stat().st_size
    if size % BLOCK:
        return f"size {size} is not a multiple of 4 KiB"
    if size < min_size:
        return f"size {size} is below {min_size >> 10} KiB"
    try:
        with open(p, "rb") as f:
            for off in range(0, size, BLOCK):
                f.seek(off + FVH_OFFSET)
                if f.read(4) == b"_FVH":
                    return None
    except OSError as e:
        return str(e)
    return "no UEFI firmware volume (_FVH) in it"


# ---------------------------------------------------------------- records


def make_record(entry: CatalogEntry, build_dir: Path, layout: Dict[str, object],
                packages: List[Dict[str, str]], version: str, version_number: str,
                hashes: Dict[str, str], seconds: float, **extra) -> Dict[str, object]:
    """The build.json of a fetched build. Paths under ``layout`` and the keys of
    ``sha256`` are relative to the build directory (the cache can move); ``paths``
    holds the same as absolute paths, for people."""
    absolute = {k: str(build_dir / str(v)) for k, v in layout.items()
                if isinstance(v, str) and k in ("qemu", "binary", "ovmf_code", "ovmf_vars",
                                                "loader", "root")}
    return {"format": RECORD_FORMAT, "name": entry.name, "kind": entry.kind,
            "method": entry.method, "suite": entry.suite, "base_suite": entry.base_suite,
            "packages": packages, "layout": layout, "paths": absolute, "sha256": hashes,
            "version": version, "version_number": version_number, "dir": str(build_dir),
            "fetched_at": _now(), "fetch_seconds": round(seconds, 1), **extra}


def build_from_record(record: Dict[str, object], build_dir: Path) -> Build:
    """The Build a build.json describes, with its paths under ``build_dir``."""
    layout = record["layout"]
    kind = record["kind"]

    def at(key):
        v = layout.get(key)
        return build_dir / str(v) if v else None
    hashes = {str(build_dir / k): v for k, v in (record.get("sha256") or {}).items()}
    version = str(record["version_number"] if kind == "qemu" else record["version"] or "")
    entry = _lookup(str(record.get("name")))
    if kind == "qemu" and entry is not None and entry.marker and \
            not version.endswith(f"+{entry.marker}"):
        version += f"+{entry.marker}"       # as the harness names a fixed build's version
    return Build(name=record["name"], kind=kind, version=str(version or ""),
                 qemu=at("qemu"), ovmf_code=at("ovmf_code"), ovmf_vars=at("ovmf_vars"),
                 sha256=hashes, record=build_dir / RECORD, source="fetched")


def read_record(build_dir: Path) -> Optional[Dict[str, object]]:
    try:
        record = json.loads((build_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    return record


def load_cached(name: str, cache: Optional[Path] = None) -> Optional[Build]:
    """The cached build ``name`` if its record and files are there (no apt, no network).
    A cache directory that was moved gets its wrapper rewritten for the new place."""
    entry = catalog_entry(name)
    build_dir = (cache or cache_root()) / name
    record = read_record(build_dir)
    if record is None or record.get("name") != name:
        return None
    try:
        build = build_from_record(record, build_dir)
    except (KeyError, TypeError, AttributeError):
        return None
    needed = [p for p in (build.qemu, build.ovmf_code, build.ovmf_vars) if p is not None]
    layout = record["layout"]
    if entry.kind == "qemu":
        needed.append(build_dir / str(layout["binary"]))
    if not needed or not all(p.exists() for p in needed):
        _log.debug("cached %s is incomplete: %s", name, [str(p) for p in needed if not p.exists()])
        return None
    if entry.method == "source":
        from .source_build import stale
        why = stale(record, str(entry.patches))
        if why:
            _log.info("cached %s is stale: %s", name, why)
            return None
    if entry.kind == "qemu":
        _refresh_wrapper(build_dir, record)
    return build


def _refresh_wrapper(build_dir: Path, record: Dict[str, object]) -> None:
    """Keep a cached QEMU's wrapper what this module would write now: after the cache
    directory moved, or after a change of the wrapper (an atomic rename, harmless to a
    QEMU already running from it)."""
    layout = dict(record["layout"])
    if "datadirs" not in layout:      # records of the first version had one ROM directory
        root = build_dir / str(layout.get("root", "root"))
        layout["datadirs"] = [_rel(in_root(root, d), build_dir) for d in QEMU_DATADIRS
                              if d == QEMU_DATADIRS[0] or in_root(root, d).is_dir()]
        layout.pop("datadir", None)
    text = wrapper_script(build_dir, layout, str(record["version"]))
    wrapper = build_dir / WRAPPER
    try:
        current = wrapper.read_text()
    except OSError:
        current = None
    moved = record.get("dir") != str(build_dir)
    if current == text and not moved and layout == record["layout"]:
        return
    _log.debug("rewriting the wrapper of %s (moved: %s)", build_dir, moved)
    _write_atomic(wrapper, text, 0o755)
    record = dict(record, dir=str(build_dir), layout=layout,
                  paths={k: str(build_dir / str(v)) for k, v in layout.items()
                         if isinstance(v, str)})
    _write_atomic(build_dir / RECORD, json.dumps(record, indent=2) + "\n")


# ---------------------------------------------------------------- system builds


def _dpkg_version(package: str) -> Optional[str]:
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def system_build(entry: CatalogEntry) -> Build:
    """The installed build a ``system`` row names; ConfigError if it is missing or is
    another version than the name says."""
    paths = [Path(f) for f in entry.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pkg = "qemu-system-x86" if entry.kind == "qemu" else "ovmf"
        raise ConfigError(f"{entry.name} is the system's {entry.kind.upper()}, but "
                          f"{missing[0]} is missing (install Debian's {pkg})")
    if entry.kind == "qemu":
        try:
            number = qemu_version_number(version_line(paths[0]))
        except ConfigError as e:
            raise ConfigError(f"{entry.name}: {paths[0]}: {e}") from None
        if not number or not upstream_matches(number, entry.version):
            raise ConfigError(f"{entry.name} is the system's QEMU {entry.version}, but "
                              f"{paths[0]} is QEMU {number or '(unknown)'}")
        return Build(entry.name, "qemu", number, qemu=paths[0],
                     sha256={str(paths[0]): _hash_cached(paths[0])}, source="system")
    version = _dpkg_version(entry.packages[0]) if entry.packages else None
    if version and not upstream_matches(version, entry.version):
        raise ConfigError(f"{entry.name} is the system's OVMF {entry.version}, but the "
                          f"installed {entry.packages[0]} is {version}")
    return Build(entry.name, "ovmf", version or "", ovmf_code=paths[0], ovmf_vars=paths[1],
                 sha256={str(p): _hash_cached(p) for p in paths[:2]}, source="system")


# ---------------------------------------------------------------- fetching


def _resolve_versions(entry: CatalogEntry, apt: PrivateApt, log: Log) -> Dict[str, str]:
    """{package: version} to fetch: the newest of the suite with the row's prefix."""
    apt.prepare()
    apt.update(entry.name, log)
    madison = apt.madison(entry.packages)
    out = {}
    for pkg in entry.packages:
        v = pick_version(madison, pkg, entry.version, source=entry.method == "source")
        if v is None:
            have = madison_versions(madison, pkg)
            raise HarnessError(f"{entry.name}: {entry.suite} has no {pkg} {entry.version}.x"
                               + (f" (it has {', '.join(have)})" if have else
                                  f" ({pkg} is not in {entry.suite})"))
        out[pkg] = v
    _log.debug("%s: versions %s", entry.name, out)
    return out


def _download_specs(versions: Dict[str, str]) -> str:
    items = list(versions.items())
    first = f"{items[0][0]}={items[0][1]}"
    rest = [p for p, v in items[1:]]
    if not rest:
        return first
    same = all(v == items[0][1] for _, v in items[1:])
    return f"{first} {' '.join(rest)}" + (" (same version)" if same else "")


def _fetch_debs(entry: CatalogEntry, stage: Path, apt: PrivateApt, log: Log):
    """Download the row's .debs at the resolved versions and unpack them into
    ``stage/root``; returns the package list for the record."""
    versions = _resolve_versions(entry, apt, log)
    debs = stage / "debs"
    debs.mkdir()
    log(f"builds: {entry.name}: apt-get download {_download_specs(versions)}")
    apt.download(entry.name, [f"{p}={v}" for p, v in versions.items()], debs)
    root = stage / "root"
    root.mkdir()
    packages = []
    for pkg, version in versions.items():
        found = sorted(debs.glob(f"{pkg}_{deb_filename_version(version)}_*.deb")) or \
            sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            raise HarnessError(f"{entry.name}: apt-get download left no {pkg} .deb")
        deb = found[0]
        proc = _run(["dpkg-deb", "-x", deb, root], timeout=300)
        if proc.returncode != 0:
            raise HarnessError(f"{entry.name}: cannot unpack {deb.name}: {last_line(proc)}")
        packages.append({"name": pkg, "version": version, "deb": deb.name,
                         "sha256": sha256_file(deb)})
    shutil.rmtree(debs)
    return packages


def _ensure_mmdebstrap(who: str, log: Log) -> str:
    found = shutil.which("mmdebstrap")
    if found:
        return found
    log(f"builds: {who}: installing Debian's mmdebstrap (apt-get install)")
    argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends",
            "-o", "DPkg::Lock::Timeout=300", "mmdebstrap"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = _run(argv, timeout=900, env=env)
    if proc.returncode != 0:
        _run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "-q", "update"], timeout=600, env=env)
        proc = _run(argv, timeout=900, env=env)
    found = shutil.which("mmdebstrap")
    if proc.returncode != 0 or not found:
        raise HarnessError(f"{who}: cannot install mmdebstrap: {last_line(proc)}")
    return found


def _can_unshare_mounts() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "unchanged", "--",
                               "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _fetch_mmdebstrap(entry: CatalogEntry, stage: Path, apt: PrivateApt, log: Log):
    """A private ``base_suite`` root with the row's packages from ``suite``, made by
    mmdebstrap; returns the package list (every package of the root, .deb sha256s)."""
    versions = _resolve_versions(entry, apt, log)
    tool = _ensure_mmdebstrap(entry.name, log)
    root = stage / "root"
    include = [f"{p}={v}" for p, v in versions.items()] + list(entry.companions)
    sources = [f"deb [signed-by={KEYRING}] {apt.mirror} {s} main"
               for s in (entry.base_suite, entry.suite)]
    # unshare mode as root: its mounts (/proc, /dev ...) live in a private mount
    # namespace and vanish with it, so a killed fetch leaves no mount in the cache
    mode = "unshare" if _can_unshare_mounts() else "root"
    about = f" (about {entry.minutes} min)" if entry.minutes else ""
    log(f"builds: {entry.name}: mmdebstrap {entry.base_suite} root with "
        f"{_download_specs(versions)}{about}")
    argv = [tool, "-q", f"--mode={mode}", "--variant=apt",
            "--aptopt=Acquire::Languages \"none\"",
            # keep every .deb (the essential set too) to record its sha256; deleted below
            "--skip=essential/unlink", "--skip=cleanup/apt/cache",
            f"--include={','.join(include)}", entry.base_suite, root, *sources]
    proc = _run(argv, timeout=1800)
    if proc.returncode != 0:
        raise HarnessError(f"{entry.name}: mmdebstrap failed: {last_line(proc)}")
    installed = parse_dpkg_status((root / "var/lib/dpkg/status").read_text())
    archives = root / "var/cache/apt/archives"
    debs = {}
    for deb in sorted(archives.glob("*.deb")):
        debs[deb.name.split("_", 1)[0]] = deb
    packages = []
    for pkg, version in sorted(installed.items()):
        deb = debs.get(pkg)
        packages.append({"name": pkg, "version": version,
                         "deb": deb.name if deb else None,
                         "sha256": sha256_file(deb) if deb else None})
    for deb in archives.glob("*.deb"):
        deb.unlink()
    for pkg, version in versions.items():
        if installed.get(pkg) != version:
            raise HarnessError(f"{entry.name}: the root has {pkg} "
                               f"{installed.get(pkg, '(not installed)')}, not {version}")
    return packages, {"requested": include, "mmdebstrap_mode": mode}


def _qemu_layout(entry: CatalogEntry, stage: Path) -> Dict[str, object]:
    root = stage / "root"
    binary = in_root(root, QEMU_BINARY)
    if not binary.is_file():
        raise HarnessError(f"{entry.name}: the packages hold no {QEMU_BINARY}")
    layout: Dict[str, object] = {
        "root": "root", "qemu": WRAPPER, "binary": _rel(binary, stage),
        "datadirs": [_rel(in_root(root, d), stage) for d in QEMU_DATADIRS
                     if d == QEMU_DATADIRS[0] or in_root(root, d).is_dir()],
        "module_dir": _rel(in_root(root, QEMU_MODULE_DIR), stage),
        "loader": None, "library_path": []}
    if entry.method == "mmdebstrap":
        loader = in_root(root, "lib64/ld-linux-x86-64.so.2")
        if not loader.is_file():
            raise HarnessError(f"{entry.name}: the root has no lib64/ld-linux-x86-64.so.2")
        libdirs = []
        for d in (f"lib/{MULTIARCH}", f"usr/lib/{MULTIARCH}"):
            real = _rel(in_root(root, d), stage)
            if real not in libdirs:
                libdirs.append(real)
        layout.update(loader=_rel(loader, stage), library_path=libdirs)
    return layout


def _verify_qemu(entry: CatalogEntry, stage: Path, layout: Dict[str, object], log: Log) -> str:
    """Run the wrapper as it will run: ``--version`` must be the promised release and a
    q35 machine must start and answer QMP. Returns the --version line."""
    wrapper = stage / WRAPPER
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(wrapper, wrapper_script(stage, layout, f"{entry.name} (being verified)"), 0o755)
    try:
        line = version_line(wrapper)
    except ConfigError as e:
        raise HarnessError(f"{entry.name}: the fetched QEMU does not run: {e}") from None
    number = qemu_version_number(line)
    if not number or not upstream_matches(number, entry.version):
        raise HarnessError(f"{entry.name}: the fetched QEMU says {line!r}, not {entry.version}")
    if entry.marker and f"+{entry.marker})" not in line:
        raise HarnessError(f"{entry.name}: the built QEMU says {line!r}, without "
                           f"+{entry.marker} (configure's --with-pkgversion was not applied)")
    log(f"builds: {entry.name}: checking that QEMU {number} starts q35 (TCG, QMP)")
    why = qmp_probe(wrapper)
    if why:
        raise HarnessError(f"{entry.name}: the fetched QEMU {number} does not start q35: {why}")
    return line


def _build(entry: CatalogEntry, cache: Path, log: Log) -> Build:
    """Fetch ``entry`` into a temporary directory, check it, rename it into place."""
    final = cache / entry.name
    for stale in cache.glob(f".tmp-{entry.name}-*"):   # left by a killed fetch
        _log.debug("removing %s", stale)
        _remove_tree(stale)
    t0 = time.monotonic()
    stage = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=cache))
    try:
        apt = PrivateApt(cache, entry.suite, system_mirror(),
                         "deb-src" if entry.method == "source" else "deb")
        extra: Dict[str, object] = {}
        if entry.method == "debs":
            packages = _fetch_debs(entry, stage, apt, log)
        elif entry.method == "mmdebstrap":
            packages, extra = _fetch_mmdebstrap(entry, stage, apt, log)
        elif entry.method == "source":
            from . import source_build
            source_build.patches(str(entry.patches))      # the series is there: say so now
            version = _resolve_versions(entry, apt, log)[entry.packages[0]]
            packages, extra = source_build.build_qemu(entry, stage, apt, version, log)
        else:
            raise HarnessError(f"{entry.name}: unknown build method {entry.method!r}")
        if entry.kind == "qemu":
            layout = (source_build.layout() if entry.method == "source"
                      else _qemu_layout(entry, stage))
            line = _verify_qemu(entry, stage, layout, log)
            number = qemu_version_number(line) or ""
            hashes = {str(layout["binary"]): sha256_file(stage / str(layout["binary"]))}
            _write_atomic(stage / WRAPPER, wrapper_script(final, layout, line), 0o755)
        else:
            root = stage / "root"
            layout = {"root": "root"}
            for key, rel in (("ovmf_code", entry.files[0]), ("ovmf_vars", entry.files[1])):
                path = in_root(root, rel)
                why = ovmf_image_problem(path, (1 << 20) if key == "ovmf_code" else BLOCK)
                if why:
                    raise HarnessError(f"{entry.name}: {rel} in the package: {why}")
                layout[key] = _rel(path, stage)
            hashes = {str(layout[k]): sha256_file(stage / str(layout[k]))
                      for k in ("ovmf_code", "ovmf_vars")}
            line = packages[0]["version"]
            number = line
        record = make_record(entry, final, layout, packages, line, number, hashes,
                             time.monotonic() - t0, **extra)
        (stage / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if final.exists() or final.is_symlink():   # an incomplete earlier build
            old = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-old-", dir=cache))
            os.rename(final, old / "build")
            _remove_tree(old)
        os.rename(stage, final)
    finally:
        if stage.exists():
            _remove_tree(stage)
    build = load_cached(entry.name, cache)
    if build is None:
        raise HarnessError(f"{entry.name}: {final} is incomplete right after the fetch")
    log(f"builds: {entry.name}: fetched {build.describe()} in {time.monotonic() - t0:.0f} s "
        f"({build.path})")
    return build


def _fetch_one(entry: CatalogEntry, log: Log, force: bool = False) -> Build:
    if not entry.fetched:
        build = system_build(entry)
        log(f"builds: {entry.name}: system, {build.describe()} ({build.path})")
        return build
    cache = cache_root()
    build = None if force else load_cached(entry.name, cache)
    if build is None:
        with _lock(cache / ".locks" / f"{entry.name}.lock"):
            # another worker may have fetched it while this one waited for the lock
            build = None if force else load_cached(entry.name, cache)
            if build is None:
                try:
                    return _build(entry, cache, log)
                except OSError as e:
                    raise HarnessError(f"{entry.name}: cannot fetch into {cache}: {e}") from None
    log(f"builds: {entry.name}: cached, {build.describe()} ({build.path})")
    return build


def cached(name: str) -> Optional[Build]:
    """The build ``name`` if it is here (installed, or in the cache), else None; never
    fetches, runs no apt."""
    entry = catalog_entry(name)
    if entry.fetched:
        return load_cached(name)
    try:
        return system_build(entry)
    except ConfigError as err:
        _log.debug("%s: %s", name, err)
        return None


def fetch(names: Iterable[str], log: Log = _say, force: bool = False) -> List[Build]:
    """The named builds, fetching the ones not in the cache (all of them again with
    ``force``); every name is checked before anything is fetched (ConfigError names
    the known builds)."""
    wanted = list(dict.fromkeys(names))
    entries = [catalog_entry(n) for n in wanted]
    return [_fetch_one(e, log, force) for e in entries]


# ---------------------------------------------------------------- resolving --qemu / --firmware


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or spec.startswith(".") or os.path.exists(spec)


def qemu_from_path(path: Union[str, Path], what: Optional[str] = None) -> Build:
    """A QEMU binary given by path: it must exist, be executable, and say it is QEMU."""
    what = what or f"--qemu {path}"
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what}: not a QEMU binary (no such file)")
    if not p.is_file() or not os.access(p, os.X_OK):
        raise ConfigError(f"{what}: not a QEMU binary (not an executable file)")
    try:
        line = version_line(p)
    except ConfigError as e:
        raise ConfigError(f"{what}: not a QEMU binary ({e})") from None
    number = qemu_version_number(line)
    if not number:
        raise ConfigError(f"{what}: not a QEMU binary (--version says {line[:80]!r})")
    p = Path(os.path.abspath(p))
    return Build(name=str(p), kind="qemu", version=number, qemu=p,
                 sha256={str(p): _hash_cached(p)}, source="path")


def resolve_qemu(spec: Optional[Union[str, Path]] = None, log: Log = _say) -> Build:
    """The QEMU to run: a catalog name (fetched first if not cached), a path to a QEMU
    binary, or None for ``$SMM_HARNESS_QEMU`` if set, else the system's QEMU."""
    if spec is None:
        spec = settings.get("SMM_HARNESS_QEMU") or None
    if spec is None:
        found = shutil.which("qemu-system-x86_64")
        if not found:
            raise ConfigError("QEMU binary not found: qemu-system-x86_64 (install Debian's "
                              "qemu-system-x86, or give --qemu)")
        for e in CATALOG:
            if e.kind == "qemu" and e.method == "system" and \
                    os.path.realpath(found) == os.path.realpath(e.files[0]):
                try:
                    return system_build(e)
                except ConfigError:
                    break            # another version than the row's: just a binary
        build = qemu_from_path(found, f"system QEMU {found}")
        return dataclasses.replace(build, source="system")
    spec = str(spec)
    if _lookup(spec):
        return fetch([catalog_entry(spec, "qemu").name], log)[0]
    if _looks_like_path(spec):
        return qemu_from_path(spec)
    found = shutil.which(spec)
    if found:
        return qemu_from_path(found, f"--qemu {spec}")
    raise ConfigError(f"unknown QEMU build {spec!r} (known: {', '.join(build_names('qemu'))}; "
                      f"or give the path of a QEMU binary)")


def firmware_from_path(code: Union[str, Path], vars_path: Optional[Union[str, Path]] = None,
                       what: Optional[str] = None) -> Build:
    """An OVMF code image given by path, with its vars template (given, or guessed
    beside it as OVMF builds lay them out)."""
    what = what or f"--firmware {code}"
    code = Path(os.path.abspath(code))
    why = ovmf_image_problem(code)
    if why:
        raise ConfigError(f"{what}: not an OVMF image ({why})")
    from .firmware import vars_beside     # the one rule of the package, kept there
    tmpl = Path(os.path.abspath(vars_path)) if vars_path else vars_beside(code)
    if not tmpl.is_file():
        raise ConfigError(f"{what}: vars template not found: {tmpl} (give it explicitly)")
    why = ovmf_image_problem(tmpl, BLOCK)
    if why:
        raise ConfigError(f"{what}: vars template {tmpl}: not an OVMF vars image ({why})")
    version = ""
    try:
        from .firmware import system_ovmf_version
        version = system_ovmf_version(code) or ""
    except ImportError:
        pass
    return Build(name=str(code), kind="ovmf", version=version, ovmf_code=code, ovmf_vars=tmpl,
                 sha256={str(code): _hash_cached(code), str(tmpl): _hash_cached(tmpl)},
                 source="path")


def resolve_firmware(spec: Optional[Union[str, Path]] = None,
                     vars_path: Optional[Union[str, Path]] = None, log: Log = _say) -> Build:
    """The OVMF images to run: a catalog name (fetched first if not cached) or a path
    to a code image (``vars_path`` or the vars template beside it); None is the
    system's OVMF row."""
    if spec is None:
        entry = next(e for e in CATALOG if e.kind == "ovmf" and e.method == "system")
        build = system_build(entry)
    elif _lookup(str(spec)):
        build = fetch([catalog_entry(str(spec), "ovmf").name], log)[0]
    elif _looks_like_path(str(spec)):
        return firmware_from_path(spec, vars_path)
    else:
        raise ConfigError(f"unknown OVMF build {str(spec)!r} (known: "
                          f"{', '.join(build_names('ovmf'))}; or give the path of an OVMF "
                          f"code image)")
    if vars_path:
        tmpl = Path(os.path.abspath(vars_path))
        why = ovmf_image_problem(tmpl, BLOCK)
        if why:
            raise ConfigError(f"vars template {tmpl}: not an OVMF vars image ({why})")
        build = dataclasses.replace(build, ovmf_vars=tmpl,
                                    sha256={**build.sha256, str(tmpl): _hash_cached(tmpl)})
    return build


# ---------------------------------------------------------------- listing and CLI


def list_builds() -> List[Tuple[Union[Build, CatalogEntry], bool]]:
    """Every catalog row: (its Build, True) when present (installed or cached), else
    (the row, False). Runs no apt."""
    out: List[Tuple[Union[Build, CatalogEntry], bool]] = []
    for e in CATALOG:
        b = cached(e.name)
        out.append((b, True) if b else (e, False))
    return out


def _cmd_list(args) -> int:
    rows = []
    for item, present in list_builds():
        e = catalog_entry(item.name)
        suite = f"{e.suite} (system)" if not e.fetched else e.suite
        if present:
            state = "installed" if item.source == "system" else "cached"
            rows.append((e.name, e.kind, suite, state, item.version or "?", str(item.path)))
        else:
            rows.append((e.name, e.kind, suite, "-" if e.fetched else "missing",
                         "-", f"(builds fetch {e.name})" if e.fetched else ", ".join(e.files)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5])
    return 0


def _cmd_fetch(args) -> int:
    fetch(args.names, force=args.force)
    return 0


def register(subparsers) -> None:
    """Add ``builds list`` and ``builds fetch NAME...`` to an argparse sub-parsers object."""
    p = subparsers.add_parser("builds", help="named QEMU and OVMF builds: list, fetch")
    sub = p.add_subparsers(dest="builds_command", metavar="COMMAND")
    sub.required = True
    lp = sub.add_parser("list", help="every build: kind, suite, cached or not, version, path")
    lp.set_defaults(func=_cmd_list)
    fp = sub.add_parser("fetch", help="fetch builds into the cache (a cached one is reused)")
    fp.add_argument("names", nargs="+", metavar="NAME", choices=build_names(),
                    help=f"one of: {', '.join(build_names())}")
    fp.add_argument("--force", action="store_true",
                    help="fetch again even if cached (replaces the cached build)")
    fp.set_defaults(func=_cmd_fetch)
