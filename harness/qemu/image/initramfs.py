"""The guest's main initramfs: busybox with its applet links, ``/init`` and
``/agent.sh`` from the recipe folder ``images/``, the kernel modules and a few device
nodes, as an uncompressed newc archive.

Why a module: what the guest's root file system holds is one decision, apart from how
its parts are fetched (:mod:`.apt`, :mod:`.modules`) and cached (:mod:`.build`).
"""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import List, Tuple

from harness.newc import TreeWriter

_log = logging.getLogger(__name__)

IMAGES_DIR = Path(__file__).resolve().parents[3] / "images"
RECIPE_FILES = ("init", "agent.sh")


def busybox_applets(busybox: Path) -> List[str]:
    try:
        proc = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, timeout=30)
        if proc.returncode == 0:
            return [l.strip() for l in proc.stdout.splitlines() if l.strip()]
    except OSError:
        pass
    return []  # /init falls back to `busybox --install -s`


def build_initramfs(busybox: bytes, applets: List[str], modules: List[Tuple[str, bytes]], kernel_release: str) -> bytes:
    """The main (uncompressed) newc archive."""
    w = TreeWriter()
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
