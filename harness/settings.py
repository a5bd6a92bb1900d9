"""Every environment variable the harness reads, in one place, read when asked (never at
import time, so a test or a CI job can set one before a run). The README lists them."""
from __future__ import annotations

import os
from pathlib import Path

#: name -> what it does (the README's table is this one)
VARIABLES = {
    "SMM_HARNESS_QEMU": "QEMU binary or build name when --qemu is not given",
    "SMM_HARNESS_CACHE": "cache of fetched builds and learned firmware layouts "
                         "(default ~/.cache/smm-hotplug-harness)",
    "SMM_HARNESS_BOOT_TIMEOUT": "seconds a boot may take before it is diagnosed (120)",
    "SMM_HARNESS_TCG_THREAD": "default TCG threading, single or multi (single)",
    "SMM_HARNESS_GUEST_KERNEL": "guest kernel when --guest-kernel is not given and the "
                                "scenario names none: harness (our own, "
                                "images/kernel.config) or debian (the distribution's) "
                                "(harness)",
    "SMM_HARNESS_MIGRATE_AFTER_UNPLUG": "1: take migration snapshots even after an "
                                        "unplug (QEMU 7.2 aborts on them)",
    "SMM_HARNESS_BOOT_CACHE": "on (default) or off: scenarios marked boot: resume-ok "
                              "start from a machine booted earlier (--boot-cache)",
    "SMM_HARNESS_BOOT_CACHE_DIR": "where the boot cache keeps its entries (default "
                                  "$SMM_HARNESS_CACHE/boot; about 125 MB per 512 MiB "
                                  "machine)",
}


def get(name, default=None):
    if name not in VARIABLES:
        raise KeyError(f"undocumented environment variable {name}")
    return os.environ.get(name, default)


def cache_dir() -> Path:
    d = get("SMM_HARNESS_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "smm-hotplug-harness"


def boot_timeout() -> float:
    return float(get("SMM_HARNESS_BOOT_TIMEOUT", "120"))


def tcg_thread_default() -> str:
    return get("SMM_HARNESS_TCG_THREAD", "single")


def migrate_after_unplug() -> bool:
    return get("SMM_HARNESS_MIGRATE_AFTER_UNPLUG") == "1"


BOOT_CACHE_VALUES = ("on", "off")


def boot_cache_dir() -> Path:
    d = get("SMM_HARNESS_BOOT_CACHE_DIR")
    return Path(d) if d else cache_dir() / "boot"


def boot_cache(option=None) -> bool:
    """Whether the booted-machine cache is used: ``option`` (--boot-cache on|off) if
    given, else SMM_HARNESS_BOOT_CACHE, else on."""
    from .errors import ConfigError
    value = option or get("SMM_HARNESS_BOOT_CACHE", "on")
    if value not in BOOT_CACHE_VALUES:
        where = "--boot-cache" if option else "SMM_HARNESS_BOOT_CACHE"
        raise ConfigError(f"{where}: expected on or off, got {value!r}")
    return value == "on"
#: the guest kernels an image can boot, the default first: our own build
#: (harness/qemu/image/kernel.py, images/kernel.config: what the scenarios use, an LZ4
#: image) or Debian's linux-image package. Ours boots in about half the time. Linux
#: places device interrupts on other CPUs with it, so the scenarios that reproduce QEMU's
#: lost logical-destination interrupts (unplug-ascending-lost-sci,
#: coldplug-sparse-boot-hang) name Debian's kernel, with which they were found
#: (``machine.guest_kernel``); the tests boot both.
GUEST_KERNELS = ("harness", "debian")


def guest_kernel() -> str:
    return get("SMM_HARNESS_GUEST_KERNEL") or GUEST_KERNELS[0]


def choose_guest_kernel(kernel: str) -> None:
    """--guest-kernel: written into the environment so that pytest-xdist workers and
    child processes (images build, the benchmarks) boot the same kernel."""
    os.environ["SMM_HARNESS_GUEST_KERNEL"] = kernel
