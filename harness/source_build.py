"""QEMU built from Debian's source package with our own patch series applied
(``qemu-7.2-smm-fix``): the builds of :mod:`harness.builds` whose ``method`` is
``source``.

Why: the runtime hot-add of a vCPU hangs on every QEMU release under TCG (known bug
``tcg-init-in-smm``), so the firmware's hot-add path can only be seen on a QEMU whose
TCG treats INIT, SIPI and SMI the way hardware and KVM do. ``contrib/qemu/<version>/``
holds that patch series (``git format-patch`` files applied in name order); this module
gets the source package through the same private apt configuration as every other
build (a ``deb-src`` source of the row's suite), applies the series, configures an
``x86_64-softmmu``-only QEMU and builds the one binary.

The build says what it is: ``configure --with-pkgversion`` puts the Debian version and
the series name in ``--version`` (``QEMU emulator version 7.2.22 (Debian
1:7.2+dfsg-7+deb12u18+smm-fix)``), which is how :mod:`harness.known_bugs` tells a fixed
build from an unfixed one of the same release, whether it was built here or by hand.

The cache key is content: the sha256 of the source package's files (the ``.dsc``
names them with their hashes) and of every patch. A changed patch makes the cached
build stale (``builds`` rebuilds it); a new source upload in the suite is picked up by
``builds fetch --force``. ccache is used when installed (``scripts/setup.sh`` installs
it), so a rebuild after a small patch change takes a minute, not a quarter of an hour.

The source package ships no ROM blobs (``--disable-install-blobs``): the wrapper points
QEMU at the host's ``/usr/share/qemu``, ``/usr/share/seabios`` and ``/usr/lib/ipxe/qemu``
(Debian's qemu-system-data, seabios and ipxe-qemu), as ``shared/design/tcg-hotadd.md``
measured.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .errors import ConfigError, HarnessError
from . import hostio
from .hostio import last_line, run_logged, sha256_file

_log = logging.getLogger(__name__)

Log = Callable[[str], None]

#: where our patch series live, one directory per QEMU release they apply to
CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "qemu"

#: Debian packages a minimal x86_64-softmmu TCG build needs (tcg-hotadd.md, measured)
BUILD_DEPENDS = ("gcc", "make", "ninja-build", "meson", "pkg-config", "python3-venv",
                 "libglib2.0-dev", "libpixman-1-dev", "libslirp-dev", "libfdt-dev",
                 "zlib1g-dev", "flex", "bison", "patch", "ccache")

#: configure: one target, TCG (and KVM, which costs nothing), no docs, tools or blobs
CONFIGURE = ("--target-list=x86_64-softmmu", "--without-default-features",
             "--enable-tcg", "--enable-kvm", "--disable-docs", "--disable-werror",
             "--disable-tools", "--disable-guest-agent", "--disable-debug-info",
             "--disable-install-blobs")

#: ROM directories of the host's Debian packages, in QEMU's search order
HOST_DATADIRS = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")

BINARY = "qemu/qemu-system-x86_64"


def patch_dir(series: str) -> Path:
    return CONTRIB / series


def patches(series: str) -> List[Path]:
    """The series' patch files in the order they apply; ConfigError if there are none."""
    d = patch_dir(series)
    found = sorted(d.glob("*.patch")) if d.is_dir() else []
    if not found:
        raise ConfigError(f"no patch series in {d} (a source build needs "
                          f"contrib/qemu/{series}/*.patch from the project's checkout)")
    return found


def series_digest(series: str) -> str:
    """sha256 over the series' file names and contents: the patches' part of the key."""
    h = hashlib.sha256()
    for p in patches(series):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def content_key(source_files: Dict[str, str], series: str) -> str:
    """The cache key: source package files (name -> sha256), the patches, configure."""
    h = hashlib.sha256()
    for name in sorted(source_files):
        h.update(f"{name} {source_files[name]}\n".encode())
    h.update(series_digest(series).encode())
    h.update(" ".join(CONFIGURE).encode())
    return h.hexdigest()


def pkgversion(debian_version: str, marker: str) -> str:
    """What ``--version`` shows in parentheses: ``Debian 1:7.2+dfsg-7+deb12u18+smm-fix``."""
    return f"Debian {debian_version}+{marker}"


# ---------------------------------------------------------------- steps


def _run(argv, log_file: Path, cwd: Optional[Path] = None, env=None, timeout=3600):
    """Run a build tool with its output in ``log_file``; HarnessError with the log's
    last lines when it fails."""
    _log.debug("run: %s (log %s)", " ".join(map(str, argv)), log_file)
    with open(log_file, "ab") as out:
        proc = hostio.run_tool(argv, timeout, f" (install the build dependencies: "
                               f"{' '.join(BUILD_DEPENDS)})", log=log_file, cwd=cwd,
                               env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = [l for l in log_file.read_text(errors="replace").splitlines() if l.strip()][-3:]
        raise HarnessError(f"{Path(str(argv[0])).name} failed (exit {proc.returncode}): "
                           f"{' | '.join(tail)} (log: {log_file})")
    return proc


def _missing_build_depends(packages=BUILD_DEPENDS) -> List[str]:
    missing = []
    for pkg in packages:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not proc.stdout.endswith(" installed"):
            missing.append(pkg)
    return missing


def ensure_build_depends(who: str, log: Log, packages=BUILD_DEPENDS) -> None:
    """Install the missing build dependencies (``packages``, QEMU's by default) with
    the system's apt (as root)."""
    missing = _missing_build_depends(packages)
    if not missing:
        return
    if os.geteuid() != 0:
        raise HarnessError(f"{who}: missing build dependencies {' '.join(missing)} "
                           f"(install them as root: apt-get install {' '.join(missing)})")
    log(f"builds: {who}: installing build dependencies: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends",
            "-o", "DPkg::Lock::Timeout=300", *missing]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "-q", "update"], capture_output=True, env=env, timeout=600)
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise HarnessError(f"{who}: cannot install build dependencies: {last_line(proc)}")


def dsc_files(dsc_text: str) -> Dict[str, str]:
    """{file name: sha256} of a .dsc's Checksums-Sha256 field."""
    out: Dict[str, str] = {}
    inside = False
    for line in dsc_text.splitlines():
        if line.startswith("Checksums-Sha256:"):
            inside = True
        elif inside and line[:1] in (" ", "\t") and len(line.split()) == 3:
            digest, _size, name = line.split()
            out[name] = digest
        elif inside:
            break
    if not out:
        raise HarnessError("the .dsc has no Checksums-Sha256 field")
    return out


def fetch_source(who: str, apt, package: str, version: str, dest: Path, log: Log
                 ) -> Tuple[Path, Dict[str, str]]:
    """``apt-get source --download-only`` into ``dest`` (checked against the signed
    Sources index by apt), then ``dpkg-source -x``; returns the unpacked tree and
    {file: sha256} of the source package, the .dsc included."""
    log(f"builds: {who}: apt-get source {package}={version}")
    proc = subprocess.run(["apt-get", *apt.options(), "-q", "source", "--download-only",
                           f"{package}={version}"], cwd=dest, capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        raise HarnessError(f"{who}: apt-get source {package}={version} failed: "
                           f"{last_line(proc)}")
    upstream = version.split(":", 1)[-1]
    dscs = sorted(dest.glob(f"{package}_{upstream}.dsc"))
    if not dscs:
        raise HarnessError(f"{who}: apt-get source left no {package}_{upstream}.dsc")
    dsc = dscs[0]
    files = dsc_files(dsc.read_text())
    for name, digest in files.items():
        got = sha256_file(dest / name)
        if got != digest:
            raise HarnessError(f"{who}: {name}: sha256 {got} is not the .dsc's {digest}")
    files[dsc.name] = sha256_file(dsc)
    tree = dest / "src"
    _run(["dpkg-source", "--no-check", "-x", dsc.name, str(tree)], dest / "dpkg-source.log",
         cwd=dest, timeout=900)
    return tree, files


def apply_series(who: str, tree: Path, series: str, log_file: Path, log: Log) -> List[Dict]:
    """Apply the series with ``patch -p1`` (which also takes git format-patch files);
    the first patch that does not apply stops the build, named."""
    applied = []
    for p in patches(series):
        log(f"builds: {who}: applying {p.name}")
        try:
            _run(["patch", "-p1", "--forward", "--batch", "-i", str(p)], log_file, cwd=tree,
                 timeout=120)
        except HarnessError as e:
            raise HarnessError(f"{who}: {p.name} does not apply to the source: {e}") from None
        applied.append({"file": f"contrib/qemu/{series}/{p.name}",
                        "sha256": sha256_file(p)})
    return applied


def meson_requirement(tree: Path) -> Optional[Tuple[int, ...]]:
    """The lowest meson the source asks for (``meson_version: '>=1.5.0'`` in its
    meson.build), as a version tuple; None if it does not say."""
    try:
        text = (tree / "meson.build").read_text(errors="replace")[:4000]
    except OSError:
        return None
    m = re.search(r"meson_version\s*:\s*'>=\s*([0-9.]+)'", text)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def _system_meson() -> Optional[Tuple[int, ...]]:
    try:
        out = subprocess.run(["meson", "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"(\d+(?:\.\d+)*)", out)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def python_with_meson(who: str, need: Tuple[int, ...], cache: Path, log: Log) -> Path:
    """A Python for QEMU's configure whose site-packages hold a meson >= ``need``: a
    venv under the cache with meson from PyPI (QEMU >= 9 wants a newer meson than
    Debian 12's 1.0; its configure takes meson from the Python it is given)."""
    want = ".".join(map(str, need))
    venv = cache / ".tools" / f"meson-{want}"
    py = venv / "bin" / "python3"
    probe = [str(py), "-c", "import mesonbuild.coredata as c; print(c.version)"]
    try:
        ok = subprocess.run(probe, capture_output=True, text=True, timeout=60)
        if ok.returncode == 0:
            return py
    except (OSError, subprocess.SubprocessError):
        pass
    log(f"builds: {who}: a Python with meson >= {want} (pip, into {venv})")
    venv.parent.mkdir(parents=True, exist_ok=True)
    for argv in (["python3", "-m", "venv", "--clear", str(venv)],
                 [str(py), "-m", "pip", "install", "-q", f"meson>={want}"]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            lines = [l for l in (proc.stderr + proc.stdout).splitlines()
                     if l.strip() and not l.startswith("WARNING")]
            raise HarnessError(f"{who}: cannot make a Python with meson >= {want}: "
                               f"{lines[-1] if lines else proc.returncode}")
    return py


def _ninja_with_progress(who: str, build: Path, log_file: Path, log: Log, env) -> None:
    """ninja's ``[N/M]`` lines become a progress line every 10 %."""
    argv = ["ninja", "qemu-system-x86_64"]
    _log.debug("run: %s in %s", " ".join(argv), build)
    shown = [-1]

    def progress(raw):
        m = re.match(rb"\[(\d+)/(\d+)\]", raw)
        if m:
            pct = int(m.group(1)) * 100 // max(int(m.group(2)), 1)
            if pct // 10 > shown[0]:
                shown[0] = pct // 10
                log(f"builds: {who}: compiling, {pct} % "
                    f"({m.group(1).decode()}/{m.group(2).decode()})")
    run_logged(argv, build, env, log_file, progress, 3600, f"{who}: ninja")


def build_qemu(entry, stage: Path, apt, version: str, log: Log) -> Tuple[List[Dict], Dict]:
    """Fetch the source package at ``version``, apply ``entry.patches``, configure and
    build; leaves ``stage/qemu/qemu-system-x86_64`` and returns (package list, the
    record's extra fields). The source and build trees are removed afterwards."""
    who = entry.name
    t0 = time.monotonic()
    ensure_build_depends(who, log)
    work = stage / "work"
    work.mkdir()
    logs = stage / "logs"
    logs.mkdir()
    tree, files = fetch_source(who, apt, entry.packages[0], version, work, log)
    applied = apply_series(who, tree, entry.patches, logs / "patch.log", log)
    env = dict(os.environ)
    ccache = shutil.which("ccache")
    if ccache:
        # paths relative to the (temporary) work directory, so a rebuild in another
        # temporary directory hits the cache
        env.update(PATH="/usr/lib/ccache:" + env.get("PATH", ""), CCACHE_BASEDIR=str(work),
                   CCACHE_NOHASHDIR="true")
    build = work / "build"
    build.mkdir()
    pv = pkgversion(version, entry.marker)
    extra_args = []
    need = meson_requirement(tree)
    have = _system_meson()
    if need and (have is None or have < need):
        extra_args.append(f"--python={python_with_meson(who, need, stage.parent, log)}")
    log(f"builds: {who}: configure (x86_64-softmmu, TCG; pkgversion {pv!r}"
        f"{', ccache' if ccache else ''})")
    _run([tree / "configure", *CONFIGURE, *extra_args, f"--with-pkgversion={pv}"],
         logs / "configure.log", cwd=build, env=env, timeout=900)
    about = f" (about {entry.minutes} min on 2 cores without ccache)" if entry.minutes else ""
    log(f"builds: {who}: ninja qemu-system-x86_64{about}")
    _ninja_with_progress(who, build, logs / "ninja.log", log, env)
    (stage / "qemu").mkdir()
    shutil.copy2(build / "qemu-system-x86_64", stage / BINARY)
    shutil.rmtree(work)
    seconds = time.monotonic() - t0
    packages = [{"name": f"{entry.packages[0]} (source)", "version": version, "deb": None,
                 "sha256": files.get(f"{entry.packages[0]}_{version.split(':', 1)[-1]}.dsc")}]
    extra = {"source_files": files, "patches": applied, "series": entry.patches,
             "content_key": content_key(files, entry.patches),
             "patches_sha256": series_digest(entry.patches),
             "configure": list(CONFIGURE) + [f"--with-pkgversion={pv}"],
             "build_seconds": round(seconds, 1), "ccache": bool(ccache)}
    return packages, extra


def layout() -> Dict[str, object]:
    """The wrapper's layout: our binary, the host's ROM directories, no modules."""
    return {"root": None, "qemu": "bin/qemu-system-x86_64", "binary": BINARY,
            "datadirs": [d for d in HOST_DATADIRS if d == HOST_DATADIRS[0] or Path(d).is_dir()],
            "module_dir": "qemu", "loader": None, "library_path": []}


def stale(record: Dict[str, object], series: str) -> Optional[str]:
    """Why a cached source build no longer matches the checkout's patches, else None."""
    try:
        now = series_digest(series)
    except ConfigError as e:
        return str(e)
    if record.get("patches_sha256") != now:
        return "its patches changed"
    return None
