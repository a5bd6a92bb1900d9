"""The harness's own guest kernel: Linux from Debian's ``linux`` source package,
configured with only what the scenarios use (``images/kernel.config``) and an LZ4
decompressor, built once and cached.

Why: Debian's distribution kernel is XZ-compressed (about 2.5 s in the decompressor's
dictionary-copy loop under TCG) and brings up everything a distribution needs (about
2.1 s of Linux before the agent answers). Neither is under test. The scenarios need
x86_64 SMP with APIC/x2APIC, ACPI CPU hot-plug (processor driver, processor container,
eject), the 8250 console, ``/dev/cpu/N/msr``, ``/dev/port``, microcode (early loading
from the initrd, sysfs), an initramfs and the pseudo file systems busybox mounts.

How, the way :mod:`harness.source_build` gets QEMU's source: the private ``deb-src``
apt configuration of :mod:`harness.builds` for the host's Debian suite (the mirror read
from the system's apt sources), ``apt-get source --download-only``, every file checked
against the ``.dsc``'s sha256, ``dpkg-source -x`` (Debian's patches applied), then
``make tinyconfig``, the fragment appended, ``make olddefconfig``; every line of the
fragment must survive that as written (the build names the ones that did not), and
``make -j2 bzImage`` with ccache (when installed) and a progress line per 10 %.

The cache, under ``$SMM_HARNESS_CACHE/kernel/``: ``src/`` keeps the downloaded source
package, ``<key>/`` a built kernel (``bzImage``, ``config``, ``manifest.json``), where
the key hashes the source package's files, the fragment and :data:`RECIPE`. The source
version is resolved once (``resolve.json``: the newest ``linux`` of the suite) and kept,
so later uses need no network; ``images build --force`` resolves it again. A build runs
in a temporary directory renamed into place, under a lock.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from harness import settings
from harness.errors import HarnessError
from harness.hostio import exclusive_lock, replace_dir, run_logged, sha256_file

from .initramfs import IMAGES_DIR

_log = logging.getLogger(__name__)

Log = Callable[[str], None]

PACKAGE = "linux"
FRAGMENT = IMAGES_DIR / "kernel.config"
#: how the fragment is applied and what is built; part of the cache key
RECIPE = {"base": "tinyconfig", "target": "bzImage", "image": "arch/x86/boot/bzImage",
          "steps": 1}
#: build tools beyond what harness.source_build's QEMU build installs
BUILD_DEPENDS = ("gcc", "make", "flex", "bison", "bc", "libelf-dev", "libssl-dev", "lz4",
                 "dpkg-dev", "xz-utils", "ccache")
#: compiler lines ("  CC      kernel/fork.o") of one build of the fragment (measured),
#: the 100 % of the progress lines
EXPECTED_OBJECTS = 964
#: fixed build identity, so the bytes do not depend on who built them where
KBUILD_ENV = {"KBUILD_BUILD_USER": "harness", "KBUILD_BUILD_HOST": "smm-hotplug-harness",
              "KBUILD_BUILD_TIMESTAMP": "Thu Jan  1 00:00:00 UTC 1970"}


@dataclasses.dataclass(frozen=True)
class Kernel:
    image: Path          # bzImage
    release: str         # uname -r
    key: str
    version: str         # the source package's Debian version


def kernel_dir() -> Path:
    return settings.cache_dir() / "kernel"


def fragment_settings(text: str) -> Dict[str, str]:
    """{CONFIG_X: value} of a fragment; ``# CONFIG_X is not set`` is ``n``."""
    out: Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"(CONFIG_\w+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
            continue
        m = re.match(r"# (CONFIG_\w+) is not set$", line)
        if m:
            out[m.group(1)] = "n"
    return out


def config_problems(wanted: Dict[str, str], config_text: str) -> List[str]:
    """The fragment's settings a resolved ``.config`` does not have, as
    ``CONFIG_X=want (got)``; an absent symbol counts as ``n``."""
    have = fragment_settings(config_text)
    return [f"{k}={v} (got {have.get(k, 'n')})" for k, v in wanted.items()
            if have.get(k, "n") != v]


def kernel_key(source_files: Dict[str, str], fragment: bytes) -> str:
    h = hashlib.sha256()
    for name in sorted(source_files):
        h.update(f"{name} {source_files[name]}\n".encode())
    h.update(hashlib.sha256(fragment).hexdigest().encode())
    h.update(json.dumps(RECIPE, sort_keys=True).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- source


def _private_apt():
    from harness import builds
    codename = builds.system_codename()
    if not codename:
        raise HarnessError("cannot tell the Debian release of this host (no VERSION_CODENAME "
                           "in /etc/os-release): the harness kernel is built from its "
                           "linux source package")
    apt = builds.PrivateApt(builds.cache_root(), codename, builds.system_mirror(), "deb-src")
    apt.prepare()
    return apt


def resolve_version(log: Log, refresh: bool = False) -> str:
    """The ``linux`` source version to build: resolved once, then kept (``resolve.json``)."""
    from harness import builds
    memo = kernel_dir() / "resolve.json"
    if not refresh:
        try:
            return json.loads(memo.read_text())["version"]
        except (OSError, ValueError, KeyError):
            pass
    apt = _private_apt()
    version = builds.pick_version(apt.madison([PACKAGE]), PACKAGE, None, source=True)
    if version is None or refresh:
        apt.update("kernel", log)
        version = builds.pick_version(apt.madison([PACKAGE]), PACKAGE, None, source=True)
    if version is None:
        raise HarnessError(f"no {PACKAGE} source package in Debian {apt.suite}'s deb-src lists")
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".resolve-{os.getpid()}.json")
    tmp.write_text(json.dumps({"package": PACKAGE, "version": version, "suite": apt.suite}) + "\n")
    os.replace(tmp, memo)
    return version


def _dsc_name(version: str) -> str:
    return f"{PACKAGE}_{version.split(':', 1)[-1]}.dsc"


def source_files(version: str, log: Log) -> Dict[str, str]:
    """Download the source package into ``kernel/src/`` unless its files are there
    with the .dsc's sha256; returns {file: sha256}, the .dsc included."""
    from harness.source_build import dsc_files
    src = kernel_dir() / "src"
    src.mkdir(parents=True, exist_ok=True)
    dsc = src / _dsc_name(version)

    def checked() -> Optional[Dict[str, str]]:
        if not dsc.is_file():
            return None
        files = dsc_files(dsc.read_text())
        for name, digest in files.items():
            if not (src / name).is_file() or sha256_file(src / name) != digest:
                return None
        files[dsc.name] = sha256_file(dsc)
        return files

    files = checked()
    if files:
        return files
    apt = _private_apt()
    log(f"images: kernel: apt-get source --download-only {PACKAGE}={version} (about 140 MB)")
    argv = ["apt-get", *apt.options(), "-q", "source", "--download-only", f"{PACKAGE}={version}"]
    for attempt in range(2):
        proc = subprocess.run(argv, cwd=src, capture_output=True, text=True, timeout=1800)
        if proc.returncode == 0 or attempt:
            break
        apt.update("kernel", log)
    if proc.returncode != 0:
        from harness.hostio import last_line
        raise HarnessError(f"apt-get source {PACKAGE}={version} failed: {last_line(proc)}")
    files = checked()
    if not files:
        raise HarnessError(f"{PACKAGE} {version}: the downloaded files do not match the "
                           f".dsc's sha256 (in {src})")
    return files


# ---------------------------------------------------------------- build


def _run(argv, log_file: Path, cwd: Path, env=None, timeout: float = 1800) -> None:
    _log.debug("run: %s (log %s)", " ".join(map(str, argv)), log_file)
    with open(log_file, "ab") as out:
        try:
            proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        except FileNotFoundError:
            raise HarnessError(f"{argv[0]} not found (the kernel build needs "
                               f"{' '.join(BUILD_DEPENDS)})") from None
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{argv[0]} did not finish within {timeout:.0f} s "
                               f"(log: {log_file})") from None
    if proc.returncode != 0:
        tail = [l for l in log_file.read_text(errors="replace").splitlines() if l.strip()][-3:]
        raise HarnessError(f"{Path(str(argv[0])).name} {argv[1] if len(argv) > 1 else ''} "
                           f"failed (exit {proc.returncode}): {' | '.join(tail)} "
                           f"(log: {log_file})")


def _make_with_progress(tree: Path, log_file: Path, env, log: Log, jobs: int) -> int:
    """``nice make -jN bzImage``; a progress line per 10 % of :data:`EXPECTED_OBJECTS`
    compiler lines. Returns how many objects were compiled."""
    argv = ["nice", "-n", "10", "make", f"-j{jobs}", RECIPE["target"]]
    _log.debug("run: %s in %s", " ".join(argv), tree)
    state = {"shown": 0, "count": 0}
    t0 = time.monotonic()

    def progress(raw):
        if raw.startswith(b"  CC "):
            state["count"] += 1
            pct = min(99, state["count"] * 100 // EXPECTED_OBJECTS)
            if pct // 10 > state["shown"]:
                state["shown"] = pct // 10
                log(f"images: kernel: compiling, about {pct} % ({state['count']} objects, "
                    f"{time.monotonic() - t0:.0f} s)")
    run_logged(argv, tree, env, log_file, progress, 7200, "kernel: make")
    count = state["count"]
    return count


def _load(out: Path) -> Optional[Kernel]:
    try:
        m = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    image = out / "bzImage"
    if not image.is_file():
        return None
    return Kernel(image=image, release=m["release"], key=m["key"], version=m["version"])


def cached_kernel(version: Optional[str] = None) -> Optional[Kernel]:
    """The built kernel for the resolved version and today's fragment, if cached (no
    download, no build): what a quick ``build_image()`` uses."""
    try:
        version = version or json.loads((kernel_dir() / "resolve.json").read_text())["version"]
        src = kernel_dir() / "src"
        from harness.source_build import dsc_files
        dsc = src / _dsc_name(version)
        files = dsc_files(dsc.read_text())
        files[dsc.name] = sha256_file(dsc)
    except (OSError, ValueError, KeyError, HarnessError):
        return None
    return _load(kernel_dir() / kernel_key(files, FRAGMENT.read_bytes()))


def build_kernel(log: Log = print, force: bool = False, jobs: int = 2) -> Kernel:
    """The harness kernel, built on first use (a few minutes; see the module docstring),
    then from the cache."""
    if not force:
        quick = cached_kernel()
        if quick:
            return quick
    version = resolve_version(log, refresh=force)
    root = kernel_dir()
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / ".lock"):
        files = source_files(version, log)
        fragment = FRAGMENT.read_bytes()
        key = kernel_key(files, fragment)
        out = root / key
        if not force:
            done = _load(out)
            if done:
                return done
        for stale in root.glob(f".tmp-{key}-*"):       # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        from harness.source_build import ensure_build_depends
        ensure_build_depends("kernel", log, BUILD_DEPENDS)
        t0 = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
        try:
            work, logs = tmp / "work", tmp / "logs"
            work.mkdir()
            logs.mkdir()
            log(f"images: kernel: building {PACKAGE} {version} with images/kernel.config "
                f"(key {key}; unpacking the source, about a minute)")
            src = root / "src"
            # dpkg-source copies the orig tarball next to the tree: a hard link is free
            for name in files:
                if name.endswith(".tar.xz") or name.endswith(".tar.gz"):
                    try:
                        os.link(src / name, work / name)
                    except OSError:
                        pass
            _run(["nice", "-n", "10", "dpkg-source", "--no-check", "-x",
                  str(src / _dsc_name(version)), str(work / "src")],
                 logs / "dpkg-source.log", cwd=work, timeout=1800)
            tree = work / "src"
            env = dict(os.environ, **KBUILD_ENV)
            ccache = shutil.which("ccache")
            if ccache:
                env.update(PATH="/usr/lib/ccache:" + env.get("PATH", ""),
                           CCACHE_BASEDIR=str(tree), CCACHE_NOHASHDIR="true")
            _run(["make", RECIPE["base"]], logs / "config.log", cwd=tree, env=env)
            config = tree / ".config"
            with open(config, "ab") as f:
                f.write(b"\n" + fragment)
            _run(["make", "olddefconfig"], logs / "config.log", cwd=tree, env=env)
            problems = config_problems(fragment_settings(fragment.decode()),
                                       config.read_text())
            if problems:
                raise HarnessError(f"kernel: images/kernel.config does not hold after "
                                   f"olddefconfig on {PACKAGE} {version}: "
                                   f"{', '.join(problems)} (a dependency is missing)")
            log(f"images: kernel: make -j{jobs} {RECIPE['target']}"
                f"{' (ccache)' if ccache else ''}")
            objects = _make_with_progress(tree, logs / "make.log", env, log, jobs)
            release = subprocess.run(["make", "-s", "kernelrelease"], cwd=tree, env=env,
                                     capture_output=True, text=True).stdout.strip()
            stage = tmp / "kernel"
            stage.mkdir()
            shutil.copyfile(tree / RECIPE["image"], stage / "bzImage")
            shutil.copyfile(config, stage / "config")
            seconds = round(time.monotonic() - t0, 1)
            manifest = {"key": key, "package": PACKAGE, "version": version,
                        "release": release, "source_files": files,
                        "fragment_sha256": hashlib.sha256(fragment).hexdigest(),
                        "recipe": RECIPE, "objects": objects, "ccache": bool(ccache),
                        "build_seconds": seconds,
                        "bzImage_sha256": sha256_file(stage / "bzImage")}
            (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            replace_dir(stage, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"images: kernel: built {release} in {seconds:.0f} s ({objects} objects compiled)")
        done = _load(out)
        if done is None:
            raise HarnessError(f"kernel {out} is incomplete after the build")
        return done

