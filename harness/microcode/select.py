"""What a CPU matches, and packing a set of updates (facts §1.5, §4.1).

Why: matching (equal signature, platform flags intersecting or both 0, extended
signatures counting) is shared by Linux's loaders and by iucode_tool's selection. Which
update Linux then *picks* depends on the kernel generation and lives in
``harness.microcode.linux``.

Packing follows ``iucode_tool``: de-duplicate by (sig, pf, rev) plus payload and sort by
signature ascending, then pf mask descending. iucode_tool's own selection (filters,
dates, downgrades) is ``harness.microcode.iucode``.
"""

from collections import namedtuple

from .cpuid import intel_cpu_pf

INTEL = "GenuineIntel"
AMD = "AuthenticAMD"


class Cpu(namedtuple("Cpu", "vendor signature platform_id revision", defaults=(None, 0))):
    """A CPU as the loader sees it.

    ``signature`` is CPUID(1).EAX; ``platform_id`` the 0..7 value from MSR 0x17 bits
    52:50 (Intel only; None = not available); ``revision`` the current MSR 0x8B value
    (high dword for Intel).
    """

    __slots__ = ()

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


# --- packing ------------------------------------------------------------------------

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
