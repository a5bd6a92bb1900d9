"""The kernel modules the guest needs (``msr.ko``), with their dependencies, read from
an unpacked kernel package: ``.modinfo``'s ``depends=`` walked depth first, built-in
modules skipped, ``.xz``/``.gz``/``.zst`` decompressed.

Why a module: resolving modules is ELF and kernel-layout knowledge, apart from apt and
from the archive they end up in.
"""
from __future__ import annotations

import gzip
import logging
import lzma
import re
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

from harness.errors import HarnessError

_log = logging.getLogger(__name__)

MODULES = ("msr",)


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


def resolve_modules(moddir: Path, wanted: Iterable[str]) -> List[Tuple[str, bytes]]:
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
