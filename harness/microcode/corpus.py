"""Debian's intel-microcode package as a test corpus, fetched once and cached.

Why: parity with ``iucode_tool`` and the speed target are measured on the real corpus
(facts §1, 166 records in 3.20251111.1~deb12u1), not on generated files. The package is
downloaded through the same private apt configuration ``harness.builds`` uses for QEMU
and OVMF builds (the mirror comes from this machine's apt sources; nothing of the
system's apt state is read or written) and unpacked with ``dpkg-deb`` under
``<cache_dir>/microcode/``. The unpacked tree is renamed into place only when complete,
so a killed fetch leaves nothing that looks cached.

Not imported by the ``microcode`` CLI: only tests and the benchmark use it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Optional

from .. import settings
from ..errors import HarnessError

PACKAGE = "intel-microcode"
SUITE = "bookworm"                      # Debian 12, the guest's release
COMPONENTS = ("main", "non-free-firmware")  # intel-microcode is in non-free-firmware
FIRMWARE_DIR = "lib/firmware/intel-ucode"
CONCATENATED = "GenuineIntel.bin"


def corpus_root() -> Path:
    return settings.cache_dir() / "microcode"


def cached_corpus() -> Optional[Path]:
    """The unpacked ``intel-ucode`` directory if a previous fetch completed, else None."""
    root = corpus_root()
    for d in sorted(root.glob(f"{PACKAGE}_*"), reverse=True):
        fw = d / FIRMWARE_DIR
        if fw.is_dir() and (d / CONCATENATED).is_file():
            return fw
    return None


def fetch_intel_corpus(log: Callable[[str], None] = lambda m: None) -> Path:
    """The ``lib/firmware/intel-ucode`` directory of Debian's intel-microcode package.

    Fetched once (``apt-get download`` on a private configuration) and cached; a
    ``GenuineIntel.bin`` concatenating all files in name order sits next to the tree
    (``<cache>/microcode/intel-microcode_<version>/GenuineIntel.bin``).
    Raises ``HarnessError`` with one line when the registry or dpkg-deb is unavailable.
    """
    hit = cached_corpus()
    if hit is not None:
        return hit
    from ..builds import PrivateApt, system_mirror   # heavy; only when fetching
    root = corpus_root()
    root.mkdir(parents=True, exist_ok=True)
    apt = PrivateApt(root, SUITE, system_mirror(), components=COMPONENTS)
    apt.prepare()
    apt.update(PACKAGE, log)
    stage = Path(tempfile.mkdtemp(prefix=f".tmp-{PACKAGE}-", dir=root))
    try:
        apt.download(PACKAGE, [PACKAGE], stage)
        debs = sorted(stage.glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise HarnessError(f"{PACKAGE}: apt-get download left no .deb")
        version = debs[0].name.split("_")[1]
        proc = subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(stage / "root")],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode:
            raise HarnessError(f"{debs[0].name}: dpkg-deb -x failed: "
                               f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        final = root / f"{PACKAGE}_{version}"
        fw_src = stage / "root" / FIRMWARE_DIR
        if not fw_src.is_dir():
            raise HarnessError(f"{debs[0].name}: no {FIRMWARE_DIR} in the package")
        (stage / "tree" / FIRMWARE_DIR).parent.mkdir(parents=True)
        fw_src.rename(stage / "tree" / FIRMWARE_DIR)
        files = sorted(p for p in (stage / "tree" / FIRMWARE_DIR).iterdir() if p.is_file())
        with open(stage / "tree" / CONCATENATED, "wb") as out:
            for p in files:
                out.write(p.read_bytes())
        if final.exists():
            shutil.rmtree(final)
        (stage / "tree").rename(final)
        log(f"{PACKAGE}: {version} cached in {final}")
        return final / FIRMWARE_DIR
    finally:
        shutil.rmtree(stage, ignore_errors=True)
