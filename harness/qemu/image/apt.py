"""Debian packages for the guest image, through the host's apt: resolve the kernel
package and candidate versions, download a ``.deb`` into the cache, unpack it with
``dpkg-deb -x`` (nothing is installed).

Why a module: everything that talks to apt and dpkg is here, with one-line errors, so
the image build (:mod:`.build`) only sees package names, versions and files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional

from harness.errors import HarnessError
from harness.hostio import last_line

_log = logging.getLogger(__name__)

KERNEL_META = "linux-image-amd64"
BUSYBOX_PKG = "busybox-static"


class Apt:
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

    @classmethod
    def update(cls, log) -> None:
        if cls.updated:
            return
        cls.updated = True
        log("images: apt-get update")
        proc = cls._run(["apt-get", "update"])
        if proc.returncode != 0:
            raise HarnessError(f"apt-get update failed: {last_line(proc)}")

    @classmethod
    def kernel_package(cls, log) -> str:
        for attempt in range(2):
            proc = cls._run(["apt-cache", "depends", KERNEL_META])
            names = re.findall(r"Depends:\s*(linux-image-[0-9][^\s<>]*-amd64)\b", proc.stdout)
            if proc.returncode == 0 and names:
                return names[0]
            if attempt == 0:
                cls.update(log)
        raise HarnessError(f"cannot resolve the kernel package {KERNEL_META} depends on: {last_line(proc)}")

    @classmethod
    def candidate(cls, package: str, log) -> str:
        for attempt in range(2):
            proc = cls._run(["apt-cache", "policy", package])
            m = re.search(r"Candidate:\s*(\S+)", proc.stdout)
            if proc.returncode == 0 and m and m.group(1) != "(none)":
                return m.group(1)
            if attempt == 0:
                cls.update(log)
        why = last_line(proc) if proc.returncode else "no installable candidate"
        raise HarnessError(f"cannot resolve {package}: {why}")

    @classmethod
    def download(cls, package: str, version: str, debs: Path, log) -> Path:
        found = find_deb(debs, package, version)
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
                raise HarnessError(f"cannot download {package}={version}: {last_line(proc)}")
            dest = debs / got[0].name
            os.replace(got[0], dest)
        return dest


def deb_version(version: str) -> str:
    return version.replace(":", "%3a")


def find_deb(debs: Path, package: str, version: str) -> Optional[Path]:
    if not debs.is_dir():
        return None
    for p in sorted(debs.glob(f"{package}_*.deb")):
        if p.name.startswith(f"{package}_{deb_version(version)}_") or p.name.startswith(f"{package}_{version}_"):
            return p
    return None


def fingerprint() -> str:
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


def resolve_packages(log, build_dir: Path) -> dict:
    """Package names + candidate versions; memoised per apt state (apt-cache is slow)."""
    memo = build_dir / "resolve.json"
    fp = fingerprint()
    try:
        cached = json.loads(memo.read_text())
        if cached.get("fingerprint") == fp:
            return cached["packages"]
    except (OSError, ValueError, KeyError):
        pass
    kpkg = Apt.kernel_package(log)
    packages = {
        "kernel_package": kpkg,
        "kernel_version": Apt.candidate(kpkg, log),
        "busybox_version": Apt.candidate(BUSYBOX_PKG, log),
    }
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".resolve-{os.getpid()}.json")
        tmp.write_text(json.dumps({"fingerprint": fingerprint(), "packages": packages}))
        os.replace(tmp, memo)
    except OSError:
        pass
    return packages


def extract(deb: Path, dest: Path):
    dest.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
    except FileNotFoundError:
        raise HarnessError("dpkg-deb not found: building the guest image needs a Debian/Ubuntu host")
    if proc.returncode != 0:
        raise HarnessError(f"cannot unpack {deb.name}: {last_line(proc)}")
