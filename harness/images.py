"""Guest image recipe: a Debian kernel plus a tiny busybox initramfs running the agent.

``build_image()`` fetches Debian's ``linux-image-6.1.0-*-amd64`` (the package
``linux-image-amd64`` depends on) and ``busybox-static`` with ``apt-get download``,
unpacks them with ``dpkg-deb -x`` into a scratch directory (nothing is installed) and
writes a gzip'd newc initramfs (pure Python writer) holding busybox with its applet
links, ``/init`` and ``/agent.sh`` (from ``images/``) and the kernel modules the
harness needs (``msr.ko`` and its dependencies).

Artifacts live in ``images/build/<key>/`` (``vmlinuz``, ``initrd.gz``,
``manifest.json``); ``key`` hashes every input: package names and versions, the recipe
files, this module and ``early_cpio``. A build happens in a temporary directory that
is renamed into place, so a killed build never leaves a half image; a second call with
the same inputs only re-resolves package versions (``apt-cache``, no network).
Downloaded ``.deb`` files are kept in ``images/build/debs/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from harness.errors import HarnessError
from harness.newc import NEWC_MAGICS
from harness.newc import TreeWriter as CpioWriter  # noqa: F401  (tests build archives)

REPO = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPO / "images"
BUILD_DIR = IMAGES_DIR / "build"

KERNEL_META = "linux-image-amd64"
BUSYBOX_PKG = "busybox-static"
MODULES = ("msr",)
RECIPE_FILES = ("init", "agent.sh")

# The guest kernel's one command line (QemuVM's default too): it suits the image: serial console, silent boot (the agent owns
# ttyS0), no reboot on panic (QEMU runs with -no-reboot, so it exits), and a few
# options that shave time off a TCG boot (measured: kernel start -> agent banner went
# from ~1.0 s to ~0.6 s; rodata=off skips the W+X scan, cryptomgr.notests the crypto
# self-tests).
DEFAULT_CMDLINE = (
    "console=ttyS0,115200 quiet loglevel=3 panic=-1 nokaslr mitigations=off no_timer_check "
    "rodata=off cryptomgr.notests audit=0 i8042.noaux i8042.nokbd i8042.nopnp random.trust_cpu=on"
)


@dataclasses.dataclass(frozen=True)
class ImagePaths:
    kernel: Path
    initrd: Path
    kernel_version: str
    key: str
    cmdline: str = DEFAULT_CMDLINE


class _Apt:
    """Thin wrappers around apt-cache / apt-get with one-line errors."""

    updated = False

    @staticmethod
    def _run(argv: List[str], cwd: Optional[Path] = None, timeout: float = 600) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise HarnessError(f"{argv[0]} not found: building the guest image needs a Debian/Ubuntu host with apt")
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{' '.join(argv)} did not finish within {timeout:.0f}s")

    @staticmethod
    def last_line(proc: subprocess.CompletedProcess) -> str:
        lines = [l.strip() for l in (proc.stderr + "\n" + proc.stdout).splitlines() if l.strip()]
        errors = [l for l in lines if l.startswith("E:")]
        if errors:
            return errors[-1]
        lines = [l for l in lines if not l.startswith("W:")] or lines
        return lines[-1] if lines else f"exit status {proc.returncode}"

    @classmethod
    def update(cls, log) -> None:
        if cls.updated:
            return
        cls.updated = True
        log("images: apt-get update")
        proc = cls._run(["apt-get", "update"])
        if proc.returncode != 0:
            raise HarnessError(f"apt-get update failed: {cls.last_line(proc)}")

    @classmethod
    def kernel_package(cls, log) -> str:
        for attempt in range(2):
            proc = cls._run(["apt-cache", "depends", KERNEL_META])
            names = re.findall(r"Depends:\s*(linux-image-[0-9][^\s<>]*-amd64)\b", proc.stdout)
            if proc.returncode == 0 and names:
                return names[0]
            if attempt == 0:
                cls.update(log)
        raise HarnessError(f"cannot resolve the kernel package {KERNEL_META} depends on: {cls.last_line(proc)}")

    @classmethod
    def candidate(cls, package: str, log) -> str:
        for attempt in range(2):
            proc = cls._run(["apt-cache", "policy", package])
            m = re.search(r"Candidate:\s*(\S+)", proc.stdout)
            if proc.returncode == 0 and m and m.group(1) != "(none)":
                return m.group(1)
            if attempt == 0:
                cls.update(log)
        why = cls.last_line(proc) if proc.returncode else "no installable candidate"
        raise HarnessError(f"cannot resolve {package}: {why}")

    @classmethod
    def download(cls, package: str, version: str, debs: Path, log) -> Path:
        found = _find_deb(debs, package, version)
        if found:
            return found
        debs.mkdir(parents=True, exist_ok=True)
        log(f"images: apt-get download {package}={version}")
        with tempfile.TemporaryDirectory(dir=debs, prefix=".dl-") as tmp:
            proc = cls._run(["apt-get", "download", f"{package}={version}"], cwd=Path(tmp))
            if proc.returncode != 0 and not cls.updated:
                cls.update(log)
                proc = cls._run(["apt-get", "download", f"{package}={version}"], cwd=Path(tmp))
            got = sorted(Path(tmp).glob(f"{package}_*.deb"))
            if proc.returncode != 0 or not got:
                raise HarnessError(f"cannot download {package}={version}: {cls.last_line(proc)}")
            dest = debs / got[0].name
            os.replace(got[0], dest)
        return dest


def _deb_version(version: str) -> str:
    return version.replace(":", "%3a")


def _find_deb(debs: Path, package: str, version: str) -> Optional[Path]:
    if not debs.is_dir():
        return None
    for p in sorted(debs.glob(f"{package}_*.deb")):
        if p.name.startswith(f"{package}_{_deb_version(version)}_") or p.name.startswith(f"{package}_{version}_"):
            return p
    return None


# ---------------------------------------------------------------- kernel modules


def _modinfo_depends(ko: bytes) -> List[str]:
    """The ``depends=`` list from a module's ``.modinfo`` ELF section."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2 or ko[5] != 1:
        raise HarnessError("kernel module is not a 64-bit little-endian ELF file")
    shoff = int.from_bytes(ko[0x28:0x30], "little")
    shentsize, shnum, shstrndx = (int.from_bytes(ko[o:o + 2], "little") for o in (0x3A, 0x3C, 0x3E))

    def sh(i):
        base = shoff + i * shentsize
        name = int.from_bytes(ko[base:base + 4], "little")
        off = int.from_bytes(ko[base + 0x18:base + 0x20], "little")
        size = int.from_bytes(ko[base + 0x20:base + 0x28], "little")
        return name, off, size

    _, stroff, _ = sh(shstrndx)
    for i in range(shnum):
        name, off, size = sh(i)
        end = ko.index(b"\0", stroff + name)
        if ko[stroff + name:end] == b".modinfo":
            for item in ko[off:off + size].split(b"\0"):
                if item.startswith(b"depends="):
                    return [d for d in item[8:].decode().split(",") if d]
            return []
    return []


def _norm(name: str) -> str:
    return name.replace("-", "_")


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        try:
            return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise HarnessError(f"cannot decompress {path.name} (needs the zstd tool): {exc}")
    return data


def _resolve_modules(moddir: Path, wanted: Iterable[str]) -> List[Tuple[str, bytes]]:
    """Modules to load, dependencies first: [(relative .ko path, uncompressed bytes)]."""
    builtin = set()
    if (moddir / "modules.builtin").is_file():
        builtin = {_norm(Path(l.strip()).name.split(".ko")[0]) for l in (moddir / "modules.builtin").read_text().splitlines() if l.strip()}
    index: Dict[str, Path] = {}
    for p in (moddir / "kernel").rglob("*.ko*"):
        index.setdefault(_norm(p.name.split(".ko")[0]), p)
    order: List[Tuple[str, bytes]] = []
    seen = set()

    def visit(name: str, chain: Tuple[str, ...]):
        n = _norm(name)
        if n in seen or n in builtin:
            return
        if n in chain:
            raise HarnessError(f"kernel module dependency cycle: {' -> '.join(chain + (n,))}")
        path = index.get(n)
        if path is None:
            raise HarnessError(f"kernel module {name} is neither built in nor in {moddir.name}")
        data = _read_module(path)
        for dep in _modinfo_depends(data):
            visit(dep, chain + (n,))
        seen.add(n)
        rel = str(path.relative_to(moddir))
        rel = re.sub(r"\.ko\.(xz|gz|zst)$", ".ko", rel)
        order.append((rel, data))

    for w in wanted:
        visit(w, ())
    return order


# ---------------------------------------------------------------- build


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _apt_fingerprint() -> str:
    """Changes whenever apt's view of the archive can change (lists, sources, pins)."""
    h = hashlib.sha256()
    for root in (Path("/var/lib/apt/lists"), Path("/etc/apt")):
        try:
            entries = sorted(p for p in root.rglob("*") if p.is_file())
        except OSError:
            continue
        for p in entries:
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _resolve_packages(log, build_dir: Path) -> dict:
    """Package names + candidate versions; memoised per apt state (apt-cache is slow)."""
    memo = build_dir / "resolve.json"
    fp = _apt_fingerprint()
    try:
        cached = json.loads(memo.read_text())
        if cached.get("fingerprint") == fp:
            return cached["packages"]
    except (OSError, ValueError, KeyError):
        pass
    kpkg = _Apt.kernel_package(log)
    packages = {
        "kernel_package": kpkg,
        "kernel_version": _Apt.candidate(kpkg, log),
        "busybox_version": _Apt.candidate(BUSYBOX_PKG, log),
    }
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".resolve-{os.getpid()}.json")
        tmp.write_text(json.dumps({"fingerprint": _apt_fingerprint(), "packages": packages}))
        os.replace(tmp, memo)
    except OSError:
        pass
    return packages


def _inputs(log, build_dir: Path) -> dict:
    return {
        **_resolve_packages(log, build_dir),
        "modules": list(MODULES),
        "recipe": {name: _sha((IMAGES_DIR / name).read_bytes()) for name in RECIPE_FILES},
        "builder": _sha(Path(__file__).read_bytes()),
    }


def image_key(inputs: dict, early_cpio: Optional[bytes]) -> str:
    blob = json.dumps({**inputs, "early_cpio": _sha(early_cpio) if early_cpio is not None else None}, sort_keys=True)
    return _sha(blob.encode())[:16]


def _paths(out: Path, manifest: dict) -> ImagePaths:
    return ImagePaths(
        kernel=out / "vmlinuz",
        initrd=out / "initrd.gz",
        kernel_version=manifest["kernel_release"],
        key=manifest["key"],
        cmdline=manifest.get("cmdline", DEFAULT_CMDLINE),
    )


def _load(out: Path) -> Optional[ImagePaths]:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    paths = _paths(out, manifest)
    if paths.kernel.is_file() and paths.initrd.is_file():
        return paths
    return None


@contextlib.contextmanager
def _lock(build_dir: Path):
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _extract(deb: Path, dest: Path):
    dest.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
    except FileNotFoundError:
        raise HarnessError("dpkg-deb not found: building the guest image needs a Debian/Ubuntu host")
    if proc.returncode != 0:
        raise HarnessError(f"cannot unpack {deb.name}: {_Apt.last_line(proc)}")


def _busybox_applets(busybox: Path) -> List[str]:
    try:
        proc = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, timeout=30)
        if proc.returncode == 0:
            return [l.strip() for l in proc.stdout.splitlines() if l.strip()]
    except OSError:
        pass
    return []  # /init falls back to `busybox --install -s`


def build_initramfs(busybox: bytes, applets: List[str], modules: List[Tuple[str, bytes]], kernel_release: str) -> bytes:
    """The main (uncompressed) newc archive."""
    w = CpioWriter()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "mnt"):
        w.dir(d)
    w.chardev("dev/console", 5, 1)
    w.chardev("dev/null", 1, 3, 0o666)
    w.chardev("dev/ttyS0", 4, 64)
    w.file("bin/busybox", busybox, 0o755)
    for path in applets:
        path = path.lstrip("/")
        if path == "bin/busybox":
            continue
        depth = path.count("/")
        w.symlink(path, "../" * depth + "bin/busybox")
    w.file("init", (IMAGES_DIR / "init").read_bytes(), 0o755)
    w.file("agent.sh", (IMAGES_DIR / "agent.sh").read_bytes(), 0o755)
    load = []
    for rel, data in modules:
        w.file(f"lib/modules/{kernel_release}/{rel}", data, 0o644)
        load.append(f"{kernel_release}/{rel}")
    w.file("etc/modules.load", "".join(f"{m}\n" for m in load).encode())
    w.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    w.file("etc/group", b"root:x:0:\n")
    return w.finish()


def build_image(force: bool = False, early_cpio: Optional[bytes] = None, log: Callable[[str], None] = print,
                build_dir: Optional[Path] = None) -> ImagePaths:
    """Build (or find cached) the guest kernel + initrd. See the module docstring.

    Raises HarnessError (one line) when apt, dpkg-deb or the file system fail.
    """
    build_dir = Path(build_dir) if build_dir else BUILD_DIR
    try:
        return _build_image(force, early_cpio, log, build_dir)
    except OSError as exc:
        raise HarnessError(f"cannot build the guest image in {build_dir}: {exc}") from exc


def _build_image(force, early_cpio, log, build_dir: Path) -> ImagePaths:
    if early_cpio is not None and not isinstance(early_cpio, (bytes, bytearray)):
        raise HarnessError("early_cpio must be bytes (an uncompressed newc archive)")
    if early_cpio is not None and early_cpio[:6] not in NEWC_MAGICS:
        raise HarnessError("early_cpio is not an uncompressed newc cpio archive")
    inputs = _inputs(log, build_dir)
    key = image_key(inputs, early_cpio)
    out = build_dir / key
    if not force:
        cached = _load(out)
        if cached:
            return cached
    with _lock(build_dir):
        if not force:
            cached = _load(out)
            if cached:
                return cached
        t0 = time.monotonic()
        log(f"images: building {key} ({inputs['kernel_package']} {inputs['kernel_version']}, "
            f"busybox {inputs['busybox_version']})")
        debs = build_dir / "debs"
        kdeb = _Apt.download(inputs["kernel_package"], inputs["kernel_version"], debs, log)
        bdeb = _Apt.download(BUSYBOX_PKG, inputs["busybox_version"], debs, log)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=build_dir))
        try:
            work = tmp / "work"
            _extract(kdeb, work / "kernel")
            _extract(bdeb, work / "busybox")
            vmlinuz = sorted((work / "kernel" / "boot").glob("vmlinuz-*"))
            moddirs = sorted((work / "kernel" / "lib" / "modules").glob("*"))
            busybox = work / "busybox" / "bin" / "busybox"
            if not vmlinuz or not moddirs:
                raise HarnessError(f"{kdeb.name} holds no vmlinuz or no modules directory")
            if not busybox.is_file():
                raise HarnessError(f"{bdeb.name} holds no bin/busybox")
            moddir = moddirs[0]
            release = moddir.name
            modules = _resolve_modules(moddir, MODULES)
            main = build_initramfs(busybox.read_bytes(), _busybox_applets(busybox), modules, release)
            initrd = (bytes(early_cpio) if early_cpio is not None else b"") + gzip.compress(main, 9, mtime=0)
            stage = tmp / "image"
            stage.mkdir()
            shutil.copyfile(vmlinuz[0], stage / "vmlinuz")
            (stage / "initrd.gz").write_bytes(initrd)
            manifest = {
                "key": key,
                "kernel_release": release,
                "inputs": inputs,
                "kernel_deb": kdeb.name,
                "busybox_deb": bdeb.name,
                "modules": [rel for rel, _ in modules],
                "early_cpio_sha256": _sha(early_cpio) if early_cpio is not None else None,
                "initrd_sha256": _sha(initrd),
                "cmdline": DEFAULT_CMDLINE,
                "build_seconds": round(time.monotonic() - t0, 2),
            }
            (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            shutil.rmtree(work)
            if out.exists():  # force: move the old image away atomically, then drop it
                old = Path(tempfile.mkdtemp(prefix=f".old-{key}-", dir=build_dir))
                os.rename(out, old / "image")
                shutil.rmtree(old, ignore_errors=True)
            os.rename(stage, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"images: built {key} in {time.monotonic() - t0:.1f}s")
        result = _load(out)
        if result is None:
            raise HarnessError(f"image {out} is incomplete after the build")
        return result


# ---------------------------------------------------------------- CLI


def _cmd_build(args) -> int:
    paths = build_image(force=getattr(args, "force", False), log=lambda m: print(m, flush=True))
    print(f"kernel: {paths.kernel}")
    print(f"initrd: {paths.initrd}")
    print(f"kernel_version: {paths.kernel_version}")
    print(f"key: {paths.key}")
    print(f"cmdline: {paths.cmdline}")
    return 0


def register(subparsers) -> None:
    """Add ``images build [--force]`` to an argparse sub-parsers object."""
    p = subparsers.add_parser("images", help="guest kernel + initramfs with the console agent")
    sub = p.add_subparsers(dest="images_command", metavar="COMMAND")
    sub.required = True
    b = sub.add_parser("build", help="build (or reuse the cached) guest image; prints its paths")
    b.add_argument("--force", action="store_true", help="rebuild even if a cached image matches")
    b.set_defaults(func=_cmd_build)
