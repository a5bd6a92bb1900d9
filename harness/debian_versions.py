"""Debian's version rules as dpkg applies them (epoch, upstream, revision; ``~`` sorts
before anything) and what apt-cache and dpkg print about versions: pure functions, so
that picking the build a name promises is tested without apt.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple


def _order(c: str) -> int:
    if c == "":
        return 0
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        first = 0
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first:
                first = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first:
            return first
    return 0


def _split_version(v: str) -> Tuple[int, str, str]:
    epoch, _, rest = v.partition(":") if ":" in v else ("0", "", v)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """dpkg's version order: <0, 0, >0 as ``a`` is older, equal, newer than ``b``."""
    ea, ua, ra = _split_version(a)
    eb, ub, rb = _split_version(b)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


def upstream_matches(version: str, prefix: str) -> bool:
    """Whether a Debian version's upstream part is release ``prefix`` ("10.0" matches
    1:10.0.2+ds-2, not 1:10.01 nor 1:10.1.0)."""
    upstream = version.split(":", 1)[-1]
    return re.match(re.escape(prefix) + r"($|[.+~-])", upstream) is not None


def pick_version(madison: str, package: str, prefix: Optional[str],
                 source: bool = False) -> Optional[str]:
    """The newest version of ``package`` in ``apt-cache madison`` output whose upstream
    version has ``prefix`` (any version when None); None if there is none. Binary
    packages by default, the source package with ``source``."""
    found = []
    for line in madison.splitlines():
        cols = [c.strip() for c in line.split("|")]
        if len(cols) >= 3 and cols[0] == package and ("Sources" in cols[2]) == source:
            if prefix is None or upstream_matches(cols[1], prefix):
                found.append(cols[1])
    best = None
    for v in found:
        if best is None or compare_versions(v, best) > 0:
            best = v
    return best


def madison_versions(madison: str, package: str) -> List[str]:
    return [c[1] for c in ([x.strip() for x in l.split("|")] for l in madison.splitlines())
            if len(c) >= 3 and c[0] == package]


def deb_filename_version(version: str) -> str:
    """How a version is spelled in a .deb file name (``:`` becomes ``%3a``)."""
    return version.replace(":", "%3a")


def parse_dpkg_status(text: str) -> Dict[str, str]:
    """{package: version} of the installed packages in a dpkg status file."""
    out: Dict[str, str] = {}
    for para in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", para, re.M))
        if "Package" in fields and "Version" in fields and \
                fields.get("Status", "install ok installed").endswith(" installed"):
            out[fields["Package"]] = fields["Version"]
    return out
