"""What a CPU matches, and packing a set of updates (facts §1.5, §4.1).

Why: matching (equal signature, platform flags intersecting or both 0, extended
signatures counting) is shared by Linux's loaders and by iucode_tool's selection. Which
update Linux then *picks* depends on the kernel generation and lives in
``harness.microcode.linux``.

Packing follows ``iucode_tool``: de-duplicate by (sig, pf, rev) plus payload and sort by
signature ascending, then pf mask descending, so our GenuineIntel.bin equals ``-w``'s.
``iucode_select`` reproduces iucode_tool's own selection (highest revision per exact
(sig, pf) pair, revisions compared as *signed* 32-bit numbers, same sig/pf/rev with a
different payload is a conflict, a pair covered by a pf superset with a revision at least
as high is dropped) so listings can be compared with the oracle.
"""

from dataclasses import dataclass
from typing import List, NamedTuple, Optional

from .cpuid import intel_cpu_pf
from .defects import Defect

INTEL = "GenuineIntel"
AMD = "AuthenticAMD"


@dataclass(frozen=True)
class Cpu:
    """A CPU as the loader sees it.

    ``signature`` is CPUID(1).EAX; ``platform_id`` the 0..7 value from MSR 0x17 bits
    52:50 (Intel only; None = not available); ``revision`` the current MSR 0x8B value
    (high dword for Intel).
    """

    vendor: str
    signature: int
    platform_id: Optional[int] = None
    revision: int = 0

    @property
    def pf_mask(self):
        return intel_cpu_pf(self.signature, self.platform_id) if self.vendor == INTEL else 0


def signatures_match(sig1, pf1, sig2, pf2):
    """Linux ``cpu_signatures_match``: equal signature and pf intersect, or both pf 0."""
    if sig1 != sig2:
        return False
    if not pf1 and not pf2:
        return True
    return bool(pf1 & pf2)


def intel_update_matches(update, cpu_sig, cpu_pf):
    return any(signatures_match(cpu_sig, cpu_pf, s, p) for s, p in update.signatures)


# --- iucode_tool-compatible selection and packing -----------------------------------

def _s32(v):
    return v - (1 << 32) if v & 0x80000000 else v


class Entry(NamedTuple):
    """One selected (signature, pf) pair and the update that provides it."""

    signature: int
    pf_mask: int
    update: object


@dataclass
class Selection:
    entries: List[Entry]
    conflicts: List[Defect]

    @property
    def updates(self):
        """Distinct updates in entry order (what ``-w`` writes)."""
        seen, out = set(), []
        for e in self.entries:
            if id(e.update) not in seen:
                seen.add(id(e.update))
                out.append(e.update)
        return out


def _filter_match(sig, pf, filters):
    if filters is None:
        return True
    for fsig, fpf in filters:
        if sig == fsig and (fpf is None or pf & fpf):
            return True
    return False


def iucode_select(updates, filters=None):
    """Like ``iucode_tool -s SIG[,PF] -l``: highest signed revision per (sig, pf), minus
    pairs dominated by a same-signature pair with a superset pf mask and a revision at
    least as high.

    ``filters``: None for everything, or a list of (signature, pf_mask or None).
    Entries come sorted by signature ascending, then pf mask descending.
    """
    best, conflicts = {}, []
    for u in updates:
        for sig, pf in u.signatures:
            if not _filter_match(sig, pf, filters):
                continue
            old = best.get((sig, pf))
            if old is None or _s32(u.revision) > _s32(old.revision):
                best[(sig, pf)] = u
            elif u.revision == old.revision and u.raw != old.raw:
                conflicts.append(Defect(
                    u.offset, "payload", f"identical to the update at offset 0x{old.offset:x}"
                    f"{' of ' + old.source if old.source else ''} (same sig 0x{sig:08x}, "
                    f"pf 0x{pf:02x}, rev 0x{u.revision:x})", "different contents",
                    record=u.offset, source=u.source))
    # iucode_tool's no-downgrade also drops a (sig, pf) pair when another pair of the
    # same signature covers all of its platforms (pf superset) with a revision at least
    # as high (measured against iucode_tool 2.3.1 in tests/microcode/test_oracle.py).
    by_sig = {}
    for sig, pf in best:
        by_sig.setdefault(sig, []).append(pf)
    dominated = [(sig, pf) for (sig, pf), u in best.items() if pf and any(
        pf2 != pf and pf2 & pf == pf and _s32(best[(sig, pf2)].revision) >= _s32(u.revision)
        for pf2 in by_sig[sig])]
    for k in dominated:
        del best[k]
    keys = sorted(best, key=lambda k: (k[0], -k[1]))
    return Selection([Entry(s, p, best[(s, p)]) for s, p in keys], conflicts)


def dedup_sort(updates):
    """Distinct updates by (sig, pf, rev)+payload, sorted sig ascending then pf descending."""
    seen, out = set(), []
    for u in sorted(updates, key=lambda u: (u.signature, -u.pf_mask)):
        if u.key not in seen:
            seen.add(u.key)
            out.append(u)
    return out


def pack_intel(updates):
    """GenuineIntel.bin bytes for ``updates`` (de-duplicated and sorted, see ``dedup_sort``)."""
    return b"".join(u.raw for u in dedup_sort(updates))


def pack_amd(containers):
    """AuthenticAMD.bin: the containers concatenated (facts §3.1)."""
    return b"".join(c.raw for c in containers)
