"""Named QEMU and OVMF builds, fetched from Debian's package registry into a cache.

Nightly firmware CI runs *new* builds; this makes each one a name a user can pass
(``--qemu qemu-11.1 --firmware ovmf-2026.08``) as well as a path. ``CATALOG`` is the one
table of them. A fetched build is unpacked into ``<cache>/builds/<name>/`` (made in a
temporary directory and renamed into place, so a killed fetch leaves nothing half
made; a lock keeps two pytest-xdist workers from fetching the same build at once) with
a ``build.json`` recording the packages, their versions and sha256, and the sha256 of
the files that run.

Apt runs with a private configuration under the cache (its own sources, lists and
archives): the system's sources are never touched. The mirror is read from the
system's apt sources. QEMU 10.0 (bookworm-backports) runs on this system's libraries
from its unpacked .debs; QEMU 11.1 (trixie-backports) needs Debian 13's libraries, so it
gets a private trixie root (mmdebstrap) and runs through that root's own loader. Each
QEMU build gets a wrapper ``bin/qemu-system-x86_64`` that ``exec``s it (so the PID the
harness watches is QEMU's) with its module and ROM directories.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .errors import ConfigError, HarnessError

log = logging.getLogger(__name__)

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
QEMU_BIN = "qemu-system-x86_64"
QEMU_DEBS = ("qemu-system-x86", "qemu-system-common", "qemu-system-data",
             "qemu-system-gui", "qemu-system-modules-opengl")


@dataclass(frozen=True)
class CatalogEntry:
    """One named build: where it comes from and how it is unpacked."""
    name: str
    kind: str                  # "qemu" | "ovmf"
    suite: str                 # Debian suite ("system": what this machine has installed)
    method: str                # "system" | "debs" | "root" (mmdebstrap) | "ovmf-deb"
    packages: tuple = ()
    version_prefix: str = ""   # the upstream release the name promises
    note: str = ""


CATALOG = (
    CatalogEntry("qemu-7.2", "qemu", "system", "system", version_prefix="7.2",
                 note="Debian 12's qemu-system-x86"),
    CatalogEntry("qemu-10.0", "qemu", "bookworm-backports", "debs", QEMU_DEBS, "10.0"),
    CatalogEntry("qemu-11.1", "qemu", "trixie-backports", "root",
                 ("qemu-system-x86", "qemu-system-common", "qemu-system-data",
                  "seabios", "ipxe-qemu"), "11.1",
                 note="a private trixie root, run through its own loader"),
    CatalogEntry("ovmf-2022.11", "ovmf", "system", "system", version_prefix="2022.11",
                 note="Debian 12's ovmf"),
    CatalogEntry("ovmf-2025.02", "ovmf", "trixie", "ovmf-deb", ("ovmf",), "2025.02"),
    CatalogEntry("ovmf-2026.08", "ovmf", "sid", "ovmf-deb", ("ovmf-generic",), "2026.08",
                 note="sid's ovmf is a metapackage; the images are in ovmf-generic"),
)
BY_NAME = {e.name: e for e in CATALOG}
SYSTEM_OVMF = Path("/usr/share/OVMF")
OVMF_CODE = "OVMF_CODE_4M.secboot.fd"
OVMF_VARS = "OVMF_VARS_4M.fd"


@dataclass(frozen=True)
class Build:
    name: str
    kind: str
    version: str
    qemu: Path | None = None
    ovmf_code: Path | None = None
    ovmf_vars: Path | None = None
    sha256: dict | None = None
    record: Path | None = None
    source: str = "fetched"     # "system" | "fetched" | "path"


def build_names(kind=None):
    return [e.name for e in CATALOG if kind is None or e.kind == kind]


def _entry(name):
    try:
        return BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown build {name!r} (known: {', '.join(build_names())})") \
            from None


def cache_root() -> Path:
    return settings.cache_dir() / "builds"


def _say(msg):
    print(f"builds: {msg}", file=sys.stderr, flush=True)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- the mirror and a private apt ---------------------------------------------------

def mirror_from_sources(texts):
    """The Debian mirror URI of the system's main suite, from the text of apt source
    files (one-line ``deb URI SUITE ...`` or deb822 ``URIs:``/``Suites:`` stanzas)."""
    for text in texts:
        for line in text.splitlines():
            m = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m and not re.search(r"-security|/security|updates", m.group(2) + m.group(1)):
                return m.group(1).rstrip("/")
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if "deb" not in fields.get("Types", "").split():
                continue
            uris, suites = fields.get("URIs", "").split(), fields.get("Suites", "").split()
            if uris and any(not re.search(r"-security|updates", s) for s in suites) \
                    and "security" not in uris[0]:
                return uris[0].rstrip("/")
    raise HarnessError("no Debian mirror found in the system's apt sources "
                       "(/etc/apt/sources.list, /etc/apt/sources.list.d/)")


def system_mirror():
    texts = []
    main = Path("/etc/apt/sources.list")
    if main.is_file():
        texts.append(main.read_text(errors="replace"))
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        texts += [p.read_text(errors="replace") for p in sorted(d.iterdir())
                  if p.suffix in (".list", ".sources")]
    return mirror_from_sources(texts)


class PrivateApt:
    """apt-get/apt-cache with their own sources, lists and archives under ``root``."""

    def __init__(self, root: Path, suite: str, mirror: str):
        self.root, self.suite, self.mirror = root, suite, mirror
        self.src = root / "sources.list.d"
        for d in (self.src, root / "lists" / "partial", root / "cache" / "archives" /
                  "partial"):
            d.mkdir(parents=True, exist_ok=True)
        (root / "status").touch()
        (self.src / f"{suite}.list").write_text(
            f"deb [signed-by={KEYRING}] {mirror} {suite} main\n")
        self.opts = ["-o", "Dir::Etc::SourceList=/dev/null",
                     "-o", f"Dir::Etc::SourceParts={self.src}",
                     "-o", f"Dir::State::Lists={root / 'lists'}",
                     "-o", f"Dir::Cache={root / 'cache'}",
                     "-o", f"Dir::State::status={root / 'status'}",
                     "-o", "APT::Sandbox::User=root", "-o", "Debug::NoLocking=1"]

    def run(self, tool, *args, cwd=None, timeout=900):
        argv = [tool, *self.opts, *args]
        log.debug("running %s", " ".join(argv))
        try:
            p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                               timeout=timeout)
        except FileNotFoundError:
            raise HarnessError(f"{tool} not found: fetching builds needs Debian's apt") \
                from None
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{tool} {' '.join(args)} timed out after {timeout} s") \
                from None
        if p.returncode != 0:
            raise HarnessError(f"{tool} {' '.join(args)} failed: {_last_line(p)}")
        return p.stdout

    def update(self):
        self.run("apt-get", "update", "-q")

    def candidate(self, package, prefix=""):
        """The highest version of ``package`` in the suite that starts with ``prefix``
        (after an epoch)."""
        out = self.run("apt-cache", "madison", package)
        versions = [line.split("|")[1].strip() for line in out.splitlines()
                    if line.count("|") >= 2 and self.suite in line.split("|")[2]]
        want = [v for v in versions if v.split(":", 1)[-1].startswith(prefix)]
        if not want:
            raise HarnessError(f"{package} {prefix}* is not in {self.suite} "
                               f"(the registry has: {', '.join(versions) or 'none'})")
        return want[0]          # madison lists the highest first

    def download(self, package, version, dest: Path):
        self.run("apt-get", "download", "-q", f"{package}={version}", cwd=dest)
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if not debs:
            raise HarnessError(f"apt-get download {package}={version} left no .deb")
        return debs[-1]


def _last_line(p):
    lines = [ln for ln in (p.stderr + "\n" + p.stdout).splitlines()
             if ln.strip() and not ln.startswith("W: Download is performed unsandboxed")]
    errs = [ln for ln in lines if ln.startswith(("E:", "Err", "error"))]
    return (errs or lines or [f"exit status {p.returncode}"])[-1].strip()


def _extract(deb: Path, root: Path):
    p = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True,
                       text=True)
    if p.returncode != 0:
        raise HarnessError(f"dpkg-deb -x {deb.name} failed: {_last_line(p)}")


# --- QEMU wrappers ------------------------------------------------------------------

def wrapper_script(root: Path, loader=False):
    """The ``#!/bin/sh`` that runs a build's QEMU from ``root``: with its module dir and
    ROMs, through the root's own loader when its libraries are not the system's."""
    lib = f"{root}/usr/lib/x86_64-linux-gnu"
    cmd = f'"{root}/usr/bin/{QEMU_BIN}"'
    if loader:
        cmd = (f'"{root}/lib64/ld-linux-x86-64.so.2" --library-path '
               f'"{root}/lib/x86_64-linux-gnu:{lib}" {cmd}')
    return ("#!/bin/sh\n# made by harness/builds.py: exec, so the PID is QEMU's\n"
            f'export QEMU_MODULE_DIR="{lib}/qemu"\n'
            f'exec {cmd} -L "{root}/usr/share/qemu" -L "{root}/usr/share/seabios" '
            f'-L "{root}/usr/lib/ipxe/qemu" "$@"\n')


def _qemu_version_line(binary):
    try:
        p = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise ConfigError(f"{binary}: not a QEMU binary ({e})") from None
    first = (p.stdout.strip().splitlines() or [""])[0]
    if p.returncode != 0 or not first.startswith("QEMU emulator version"):
        what = first or _last_line(p)
        raise ConfigError(f"{binary}: not a QEMU binary ({what[:100]!r})")
    return first


def _smoke_qemu(binary):
    """QEMU starts a q35 machine with SMM (ROMs and modules found) and answers QMP."""
    qmp = '{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n'
    try:
        p = subprocess.run([str(binary), "-M", "q35,smm=on", "-accel", "tcg", "-nodefaults",
                            "-display", "none", "-S", "-qmp", "stdio"], input=qmp,
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise HarnessError(f"{binary} does not start: {e}") from None
    if '"return"' not in p.stdout:
        raise HarnessError(f"{binary} does not start a q35 machine: {_last_line(p)}")


# --- fetching -----------------------------------------------------------------------

@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _load_record(d: Path):
    rec = d / "build.json"
    if not rec.is_file():
        return None
    try:
        r = json.loads(rec.read_text())
        return Build(name=r["name"], kind=r["kind"], version=r["version"],
                     qemu=Path(r["qemu"]) if r.get("qemu") else None,
                     ovmf_code=Path(r["ovmf_code"]) if r.get("ovmf_code") else None,
                     ovmf_vars=Path(r["ovmf_vars"]) if r.get("ovmf_vars") else None,
                     sha256=r.get("sha256"), record=rec)
    except (ValueError, KeyError, TypeError):
        return None


def _system_build(e: CatalogEntry) -> Build:
    if e.kind == "qemu":
        found = shutil.which(QEMU_BIN)
        if not found:
            raise ConfigError(f"{e.name}: {QEMU_BIN} is not installed (Debian's "
                              f"qemu-system-x86; scripts/setup.sh installs it)")
        line = _qemu_version_line(found)
        version = line.split("version", 1)[1].split()[0]
        if not version.startswith(e.version_prefix):
            raise ConfigError(f"{e.name}: the system's QEMU is {version}")
        return Build(e.name, "qemu", version, qemu=Path(found), source="system")
    code, varsf = SYSTEM_OVMF / OVMF_CODE, SYSTEM_OVMF / OVMF_VARS
    if not code.is_file() or not varsf.is_file():
        raise ConfigError(f"{e.name}: {code} is not installed (Debian's ovmf)")
    from .firmware import system_ovmf_version
    version = system_ovmf_version(code) or e.version_prefix
    if not version.startswith(e.version_prefix):
        raise ConfigError(f"{e.name}: the system's OVMF is {version}")
    return Build(e.name, "ovmf", version, ovmf_code=code, ovmf_vars=varsf, source="system")


def cached(name):
    e = _entry(name)
    if e.method == "system":
        try:
            return _system_build(e)
        except ConfigError:
            return None
    return _load_record(cache_root() / name)


def fetch(names, log=_say) -> list:
    """Fetch what is missing of ``names``; return their Builds (cached ones at once)."""
    out = []
    for name in names:
        e = _entry(name)
        if e.method == "system":
            b = _system_build(e)
            log(f"{name}: the system's, {b.version}")
            out.append(b)
            continue
        d = cache_root() / name
        with _lock(cache_root() / f".{name}.lock"):
            b = _load_record(d)
            if b is not None:
                log(f"{name}: cached, {b.version} ({d})")
                out.append(b)
                continue
            t0 = time.monotonic()
            b = _fetch(e, d, log)
            log(f"{name}: {b.version} fetched in {time.monotonic() - t0:.0f} s ({d})")
            out.append(b)
    return out


def _fetch(e: CatalogEntry, final: Path, log):
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{e.name}-", dir=final.parent))
    try:
        mirror = system_mirror()
        packages = {}
        if e.method == "root":
            root = _mmdebstrap(e, tmp, mirror, log)
            packages = _root_versions(root, e.packages)
            qemu = _write_wrapper(tmp, root, loader=True)
            files = {"qemu-system-x86_64": root / "usr/bin" / QEMU_BIN}
        else:
            apt = PrivateApt(final.parent / f".apt-{e.suite}", e.suite, mirror)
            log(f"{e.name}: apt-get update ({e.suite}, private configuration)")
            apt.update()
            debs = tmp / "debs"
            debs.mkdir()
            root = tmp / "root"
            prefix = e.version_prefix if e.kind == "qemu" else ""
            version = None
            for pkg in e.packages:
                v = version if (version and pkg.startswith("qemu-system")) else \
                    apt.candidate(pkg, prefix if pkg == e.packages[0] else "")
                if pkg == e.packages[0]:
                    version = v
                log(f"{e.name}: apt-get download {pkg}={v}")
                deb = apt.download(pkg, v, debs)
                packages[pkg] = {"version": v, "deb": deb.name, "sha256": _sha256(deb)}
                _extract(deb, root)
            if e.kind == "qemu":
                qemu = _write_wrapper(tmp, root, loader=False)
                files = {"qemu-system-x86_64": root / "usr/bin" / QEMU_BIN}
            else:
                qemu = None
                ovmf = root / "usr/share/OVMF"
                files = {OVMF_CODE: ovmf / OVMF_CODE, OVMF_VARS: ovmf / OVMF_VARS}
                for f in files.values():
                    if not f.is_file():
                        raise HarnessError(f"{e.name}: {f.name} is not in "
                                           f"{e.packages[0]} {packages[e.packages[0]]['version']}")
        if e.kind == "qemu":
            line = _qemu_version_line(qemu)
            version = line.split("version", 1)[1].split()[0]
            if not version.startswith(e.version_prefix):
                raise HarnessError(f"{e.name}: fetched QEMU says {line!r}")
            log(f"{e.name}: {line}; checking that it starts a q35 machine")
            _smoke_qemu(qemu)
        else:
            version = packages[e.packages[0]]["version"]
        shutil.rmtree(tmp / "debs", ignore_errors=True)
        rel = {k: str(v).replace(str(tmp), str(final)) for k, v in files.items()}
        record = {"name": e.name, "kind": e.kind, "suite": e.suite, "version": version,
                  "packages": packages, "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                    time.gmtime()),
                  "sha256": {k: _sha256(v) for k, v in files.items()},
                  "qemu": str(qemu).replace(str(tmp), str(final)) if qemu else None,
                  "ovmf_code": rel.get(OVMF_CODE), "ovmf_vars": rel.get(OVMF_VARS)}
        if e.kind == "qemu":      # the wrapper names its root: point it at the final place
            w = tmp / "bin" / QEMU_BIN
            w.write_text(w.read_text().replace(str(tmp), str(final)))
        (tmp / "build.json").write_text(json.dumps(record, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    b = _load_record(final)
    if e.kind == "qemu":
        _qemu_version_line(b.qemu)
    return b


def _write_wrapper(d: Path, root: Path, loader):
    w = d / "bin" / QEMU_BIN
    w.parent.mkdir(parents=True, exist_ok=True)
    w.write_text(wrapper_script(root, loader))
    w.chmod(0o755)
    return w


def _mmdebstrap(e, tmp, mirror, log):
    if not shutil.which("mmdebstrap"):
        log("installing mmdebstrap (Debian package)")
        p = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                            "mmdebstrap"], capture_output=True, text=True,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if p.returncode != 0:
            p2 = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
            p = subprocess.run(["apt-get", "install", "-y", "-qq",
                                "--no-install-recommends", "mmdebstrap"],
                               capture_output=True, text=True,
                               env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
            if p.returncode != 0:
                raise HarnessError(f"installing mmdebstrap failed: {_last_line(p or p2)}")
    root = tmp / "root"
    base = e.suite.split("-")[0]
    include = ",".join(f"{p}/{e.suite}" if p.startswith("qemu") or p == "seabios" else p
                       for p in e.packages)
    log(f"{e.name}: mmdebstrap {base} root with {e.suite} (about 1 min)")
    argv = ["mmdebstrap", "--quiet", "--variant=apt", f"--include={include}", base,
            str(root), f"deb [signed-by={KEYRING}] {mirror} {base} main",
            f"deb [signed-by={KEYRING}] {mirror} {e.suite} main"]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{e.name}: mmdebstrap timed out") from None
    if p.returncode != 0:
        raise HarnessError(f"{e.name}: mmdebstrap failed: {_last_line(p)}")
    return root


def _root_versions(root, packages):
    out = {}
    p = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
                        "-f=${Package} ${Version}\n", *packages], capture_output=True,
                       text=True)
    for line in p.stdout.splitlines():
        name, _, version = line.partition(" ")
        out[name] = {"version": version}
    return out


# --- resolving a --qemu / --firmware argument --------------------------------------

def resolve_qemu(spec, log=_say) -> Build:
    """A catalog name (fetched when missing), a path to a QEMU binary, or None: the
    system's (or $SMM_HARNESS_QEMU)."""
    spec = spec or settings.get("SMM_HARNESS_QEMU")
    if spec is None:
        found = shutil.which(QEMU_BIN)
        if not found:
            raise ConfigError(f"QEMU binary not found: {QEMU_BIN} (install Debian's "
                              f"qemu-system-x86, or name a build: {', '.join(build_names('qemu'))})")
        return Build("system", "qemu", "", qemu=Path(found), source="system")
    if spec in BY_NAME:
        e = BY_NAME[spec]
        if e.kind != "qemu":
            raise ConfigError(f"--qemu {spec}: that is a firmware build")
        b = cached(spec)
        return b if b is not None else fetch([spec], log)[0]
    path = Path(spec)
    if "/" not in spec and not path.exists():
        found = shutil.which(spec)
        if not found:
            raise ConfigError(f"--qemu {spec}: no such build or binary (builds: "
                              f"{', '.join(build_names('qemu'))})")
        path = Path(found)
    if not path.is_file():
        raise ConfigError(f"--qemu {spec}: no such file")
    if not os.access(path, os.X_OK):
        raise ConfigError(f"--qemu {spec}: not executable")
    line = _qemu_version_line(path)
    return Build(str(path), "qemu", line.split("version", 1)[1].split()[0], qemu=path,
                 source="path")


def looks_like_ovmf(path: Path):
    """A UEFI flash image: a multiple of 4 KiB, at least 1 MiB, with a firmware volume
    header ('_FVH' at offset 0x28 of a 4 KiB-aligned block)."""
    size = path.stat().st_size
    if size < 1 << 20 or size % 0x1000:
        return False
    with open(path, "rb") as f:
        for off in range(0, min(size, 8 << 20), 0x1000):
            f.seek(off + 0x28)
            if f.read(4) == b"_FVH":
                return True
    return False


def resolve_firmware(spec, vars_path=None, log=_say) -> Build:
    """A catalog name (fetched when missing) or a path to an OVMF code image."""
    if spec in BY_NAME:
        e = BY_NAME[spec]
        if e.kind != "ovmf":
            raise ConfigError(f"--firmware {spec}: that is a QEMU build")
        b = cached(spec)
        return b if b is not None else fetch([spec], log)[0]
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--firmware {spec}: no such build or file (builds: "
                          f"{', '.join(build_names('ovmf'))})")
    if not looks_like_ovmf(path):
        raise ConfigError(f"--firmware {spec}: not an OVMF image (no UEFI firmware volume)")
    from .firmware import vars_beside
    varsf = Path(vars_path) if vars_path else vars_beside(path)
    if not varsf.is_file():
        raise ConfigError(f"--firmware {spec}: vars template {varsf} not found "
                          f"(pass --ovmf-vars)")
    return Build(str(path), "ovmf", "", ovmf_code=path, ovmf_vars=varsf, source="path")


def list_builds():
    return [(e, cached(e.name)) for e in CATALOG]


# --- CLI ----------------------------------------------------------------------------

def _cmd_list(a):
    for e, b in list_builds():
        where = b.qemu or b.ovmf_code if b else ""
        state = ("system" if e.method == "system" else "cached") if b else "not fetched"
        print(f"{e.name:<14} {e.kind:<5} {e.suite:<19} {state:<12} "
              f"{b.version if b else '':<32} {where}")
    return 0


def _cmd_fetch(a):
    fetch(a.names)
    return 0


def register(subparsers):
    p = subparsers.add_parser("builds", help="named QEMU and OVMF builds (list, fetch)")
    sub = p.add_subparsers(dest="builds_command", required=True)
    ls = sub.add_parser("list", help="every named build, and whether it is here")
    ls.set_defaults(func=_cmd_list)
    f = sub.add_parser("fetch", help="fetch builds from Debian's package registry")
    f.add_argument("names", nargs="+", metavar="NAME", choices=build_names())
    f.set_defaults(func=_cmd_fetch)
