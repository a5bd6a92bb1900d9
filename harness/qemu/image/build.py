"""The guest image, built once per set of inputs and cached: ``build_image()`` resolves
the packages (:mod:`.apt`) and the guest kernel (``debian``: the distribution's
``linux-image`` package; ``harness``: our own build, :mod:`.kernel`), and when no
cached image has the same key downloads and unpacks them, resolves the modules
(:mod:`.modules`; the harness kernel has them built in), writes the initramfs
(:mod:`.initramfs`, gzip'd, after ``early_cpio`` when given) and renames the result
into ``images/build/<key>/`` (``vmlinuz``, ``initrd.gz``, ``manifest.json``).

Why a module: the cache is what makes a VM test start in seconds. ``key`` hashes every
input: package names and versions, the recipe files, the builder's sources and
``early_cpio``. A build happens in a temporary directory that is renamed into place, so
a killed build never leaves a half image; a second call with the same inputs only
re-resolves package versions (``apt-cache``, no network). Downloaded ``.deb`` files are
kept in ``images/build/debs/``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from harness import settings
from harness.errors import HarnessError
from harness.hostio import exclusive_lock, replace_dir
from harness.newc import NEWC_MAGICS

from . import apt, initramfs, kernel as kernelmod, modules
from ..cmdline import KERNEL_CMDLINE

_log = logging.getLogger(__name__)

BUILD_DIR = initramfs.IMAGES_DIR / "build"
# the sources that decide an image's bytes: a change to any of them builds a new image
BUILDER_SOURCES = tuple(Path(m.__file__) for m in (apt, initramfs, modules)) + (
    Path(__file__), Path(__file__).parents[2] / "newc.py")


@dataclasses.dataclass(frozen=True)
class ImagePaths:
    kernel: Path
    initrd: Path
    kernel_version: str
    key: str
    cmdline: str = KERNEL_CMDLINE
    guest_kernel: str = "debian"     # settings.GUEST_KERNELS


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _inputs(log, build_dir: Path, guest_kernel: str) -> dict:
    packages = apt.resolve_packages(log, build_dir)
    if guest_kernel == "harness":
        k = kernelmod.build_kernel(log)
        kernel = {"guest_kernel": "harness", "kernel_key": k.key,
                  "kernel_source_version": k.version, "kernel_release": k.release,
                  "busybox_version": packages["busybox_version"]}
    else:
        kernel = dict(packages)   # the Debian image's key is what it always was
    return {
        **kernel,
        "modules": list(modules.MODULES),
        "recipe": {name: _sha((initramfs.IMAGES_DIR / name).read_bytes())
                   for name in initramfs.RECIPE_FILES},
        "builder": _sha(b"".join(p.read_bytes() for p in BUILDER_SOURCES)),
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
        cmdline=manifest.get("cmdline", KERNEL_CMDLINE),
        guest_kernel=manifest.get("guest_kernel", "debian"),
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


def build_image(force: bool = False, early_cpio: Optional[bytes] = None, log: Callable[[str], None] = print,
                build_dir: Optional[Path] = None, guest_kernel: Optional[str] = None) -> ImagePaths:
    """Build (or find cached) the guest kernel + initrd. See the module docstring.
    ``guest_kernel``: ``debian`` or ``harness`` (default: ``settings.guest_kernel()``,
    ``$SMM_HARNESS_GUEST_KERNEL``).

    Raises HarnessError (one line) when apt, dpkg-deb, the kernel build or the file
    system fail.
    """
    build_dir = Path(build_dir) if build_dir else BUILD_DIR
    guest_kernel = guest_kernel or settings.guest_kernel()
    if guest_kernel not in settings.GUEST_KERNELS:
        raise HarnessError(f"unknown guest kernel {guest_kernel!r} "
                           f"(one of {', '.join(settings.GUEST_KERNELS)})")
    try:
        return _build_image(force, early_cpio, log, build_dir, guest_kernel)
    except OSError as exc:
        raise HarnessError(f"cannot build the guest image in {build_dir}: {exc}") from exc


def _build_image(force, early_cpio, log, build_dir: Path, guest_kernel: str) -> ImagePaths:
    if early_cpio is not None and not isinstance(early_cpio, (bytes, bytearray)):
        raise HarnessError("early_cpio must be bytes (an uncompressed newc archive)")
    if early_cpio is not None and early_cpio[:6] not in NEWC_MAGICS:
        raise HarnessError("early_cpio is not an uncompressed newc cpio archive")
    inputs = _inputs(log, build_dir, guest_kernel)
    key = image_key(inputs, early_cpio)
    out = build_dir / key
    if not force:
        cached = _load(out)
        if cached:
            return cached
    with exclusive_lock(build_dir / ".lock"):
        if not force:
            cached = _load(out)
            if cached:
                return cached
        t0 = time.monotonic()
        harness_kernel = guest_kernel == "harness"
        what = (f"harness kernel {inputs['kernel_release']}" if harness_kernel else
                f"{inputs['kernel_package']} {inputs['kernel_version']}")
        log(f"images: building {key} ({what}, busybox {inputs['busybox_version']})")
        debs = build_dir / "debs"
        kdeb = None if harness_kernel else apt.Apt.download(
            inputs["kernel_package"], inputs["kernel_version"], debs, log)
        bdeb = apt.Apt.download(apt.BUSYBOX_PKG, inputs["busybox_version"], debs, log)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=build_dir))
        try:
            work = tmp / "work"
            apt.extract(bdeb, work / "busybox")
            busybox = work / "busybox" / "bin" / "busybox"
            if not busybox.is_file():
                raise HarnessError(f"{bdeb.name} holds no bin/busybox")
            if harness_kernel:
                # everything built in: no modules to load
                k = kernelmod.build_kernel(log)
                vmlinuz, release, mods = [k.image], k.release, []
            else:
                apt.extract(kdeb, work / "kernel")
                vmlinuz = sorted((work / "kernel" / "boot").glob("vmlinuz-*"))
                moddirs = sorted((work / "kernel" / "lib" / "modules").glob("*"))
                if not vmlinuz or not moddirs:
                    raise HarnessError(f"{kdeb.name} holds no vmlinuz or no modules directory")
                moddir = moddirs[0]
                release = moddir.name
                mods = modules.resolve_modules(moddir, modules.MODULES)
            main = initramfs.build_initramfs(busybox.read_bytes(),
                                             initramfs.busybox_applets(busybox), mods, release)
            initrd = (bytes(early_cpio) if early_cpio is not None else b"") + gzip.compress(main, 9, mtime=0)
            stage = tmp / "image"
            stage.mkdir()
            shutil.copyfile(vmlinuz[0], stage / "vmlinuz")
            (stage / "initrd.gz").write_bytes(initrd)
            manifest = {
                "key": key,
                "guest_kernel": guest_kernel,
                "kernel_release": release,
                "inputs": inputs,
                "kernel_deb": kdeb.name if kdeb else None,
                "busybox_deb": bdeb.name,
                "modules": [rel for rel, _ in mods],
                "early_cpio_sha256": _sha(early_cpio) if early_cpio is not None else None,
                "initrd_sha256": _sha(initrd),
                "cmdline": KERNEL_CMDLINE,
                "build_seconds": round(time.monotonic() - t0, 2),
            }
            (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            shutil.rmtree(work)
            replace_dir(stage, out)   # force: the old image moved away atomically
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"images: built {key} in {time.monotonic() - t0:.1f}s")
        result = _load(out)
        if result is None:
            raise HarnessError(f"image {out} is incomplete after the build")
        return result


