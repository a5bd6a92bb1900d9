"""The named QEMU and OVMF builds, one row each (``CATALOG``): what a name promises
(kind, suite, upstream version), where it comes from and how it is made. A table on its
own so that adding a build is one row, read without the fetching machinery
(:mod:`harness.builds`); why these builds is measured in ``shared/design/builds.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .errors import ConfigError

# paths inside an unpacked root
QEMU_BINARY = "usr/bin/qemu-system-x86_64"
OVMF_CODE = "usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
OVMF_VARS = "usr/share/OVMF/OVMF_VARS_4M.fd"


@dataclass(frozen=True)
class CatalogEntry:
    """One named build: what it is, where it comes from and how it is made.

    ``version`` is the upstream version prefix the name promises ("10.0", "2025.02"):
    the newest package version of ``suite`` with that prefix is fetched, so a point
    release the suite moves to is picked up, another minor release never is.
    ``packages`` are fetched at that version; ``companions`` (mmdebstrap only) are
    further apt requests installed into the root as apt resolves them. For ``system``
    rows ``files`` are absolute paths; else paths inside the unpacked root.
    """
    name: str
    kind: str                       # "qemu" | "ovmf"
    method: str                     # "system" | "debs" | "mmdebstrap"
    suite: str                      # the suite the packages come from
    version: str                    # upstream version prefix the build must have
    packages: Tuple[str, ...] = ()
    companions: Tuple[str, ...] = ()
    base_suite: Optional[str] = None    # mmdebstrap: the release of the root
    files: Tuple[str, ...] = ()
    about: str = ""
    minutes: Optional[int] = None       # rough fetch time, said before a long fetch
    patches: Optional[str] = None       # source: the series, contrib/qemu/<patches>/
    marker: str = ""                    # source: what --version's pkgversion ends with

    @property
    def fetched(self) -> bool:
        return self.method != "system"


_QEMU_DEBS = ("qemu-system-x86", "qemu-system-common", "qemu-system-data",
              "qemu-system-gui", "qemu-system-modules-opengl")

CATALOG: Tuple[CatalogEntry, ...] = (
    CatalogEntry("qemu-7.2", "qemu", "system", "bookworm", "7.2",
                 files=("/usr/bin/qemu-system-x86_64",),
                 about="Debian 12's QEMU, as installed"),
    CatalogEntry("qemu-10.0", "qemu", "debs", "bookworm-backports", "10.0",
                 packages=_QEMU_DEBS, files=(QEMU_BINARY,),
                 about="bookworm-backports' QEMU, unpacked; runs on the host's libraries"),
    CatalogEntry("qemu-11.1", "qemu", "mmdebstrap", "trixie-backports", "11.1",
                 packages=("qemu-system-x86", "qemu-system-common", "qemu-system-data"),
                 companions=("seabios/trixie-backports", "ipxe-qemu"),
                 base_suite="trixie", files=(QEMU_BINARY,), minutes=1,
                 about="trixie-backports' QEMU in a private trixie root, run through "
                       "that root's loader"),
    CatalogEntry("qemu-7.2-smm-fix", "qemu", "source", "bookworm", "7.2",
                 packages=("qemu",), files=(), patches="7.2", marker="smm-fix", minutes=8,
                 about="Debian 12's QEMU source with our TCG SMM fixes (contrib/qemu/7.2: "
                       "INIT latched in SMM, SMI held in wait-for-SIPI and kept at INIT), "
                       "built here"),
    CatalogEntry("qemu-10.2-smm-fix", "qemu", "source", "sid", "10.2",
                 packages=("qemu",), files=(), patches="10.2", marker="smm-fix", minutes=10,
                 about="sid's QEMU 10.2 source (the newest the registry serves; 11.1's "
                       "files are not) with our TCG SMM fixes (contrib/qemu/10.2), built "
                       "here against Debian 12's libraries"),
    CatalogEntry("ovmf-2022.11", "ovmf", "system", "bookworm", "2022.11",
                 packages=("ovmf",),
                 files=("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
                        "/usr/share/OVMF/OVMF_VARS_4M.fd"),
                 about="Debian 12's OVMF, as installed"),
    CatalogEntry("ovmf-2025.02", "ovmf", "debs", "trixie", "2025.02",
                 packages=("ovmf",), files=(OVMF_CODE, OVMF_VARS),
                 about="trixie's OVMF, unpacked"),
    CatalogEntry("ovmf-2026.08", "ovmf", "debs", "sid", "2026.08",
                 packages=("ovmf-generic",), files=(OVMF_CODE, OVMF_VARS),
                 about="sid's OVMF (the images moved to ovmf-generic), unpacked"),
)


BY_NAME: Dict[str, CatalogEntry] = {e.name: e for e in CATALOG}


def build_names(kind: Optional[str] = None) -> List[str]:
    """Catalog names, in catalog order; only QEMU or only OVMF builds with ``kind``."""
    return [e.name for e in CATALOG if kind is None or e.kind == kind]


def catalog_entry(name: str, kind: Optional[str] = None) -> CatalogEntry:
    """The row of ``name``; ConfigError naming the known builds (of ``kind``) if none."""
    for e in CATALOG:
        if e.name == name:
            if kind is not None and e.kind != kind:
                raise ConfigError(f"{name} is an {e.kind.upper()} build, not {kind.upper()} "
                                  f"(known {kind.upper()} builds: {', '.join(build_names(kind))})")
            return e
    what = f"{kind.upper()} build" if kind else "build"
    raise ConfigError(f"unknown {what} {name!r} (known: {', '.join(build_names(kind))})")


def _lookup(name: str) -> Optional[CatalogEntry]:
    return BY_NAME.get(name)
