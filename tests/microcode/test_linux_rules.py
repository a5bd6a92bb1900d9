"""Linux's selection rules per kernel generation, pinned on hand-built containers.

Every expected value below is written out by hand from the kernel function the rule
mirrors (named in each test); nothing is computed by the code under test.
"""

import pytest

from harness.microcode.amd import build_container, build_patch, conventional_equiv_id, parse_amd
from harness.microcode.intel import build_update, parse_intel
from harness.microcode.linux import early_amd, early_intel, late_intel
from harness.microcode.select import AMD, INTEL, Cpu

SIG = 0x906EA
OTHER_SIG = 0x906EB
AMD_SIG = 0x00A00F11
AMD_EID = 0xA011
OTHER_AMD_SIG = 0x00A00F12


def ups(*raws):
    res = parse_intel(b"".join(raws))
    assert res.ok
    return res.updates


def amd_blob():
    """Container 1 holds no match for AMD_SIG; container 2 has 0x0a001118 then 0x0a001110
    for it; container 3 has 0x0a001120."""
    c1 = build_container([(OTHER_AMD_SIG, 0xA012)], [build_patch(0x0A001230, 0xA012)])
    c2 = build_container([(AMD_SIG, AMD_EID)], [build_patch(0x0A001118, AMD_EID),
                                                 build_patch(0x0A001110, AMD_EID)])
    c3 = build_container([(AMD_SIG, AMD_EID)], [build_patch(0x0A001120, AMD_EID)])
    return parse_amd(c1 + c2 + c3).containers


def test_equiv_id_of_the_test_cpu():
    assert conventional_equiv_id(AMD_SIG) == AMD_EID


@pytest.mark.parametrize("kernel", ["6.1", "6.7"])
def test_amd_first_container_with_a_match_last_patch_in_it(kernel):
    """parse_container keeps overwriting desc->mc with each match, and scan_containers
    stops at the first container that set it: 0x0a001110, not the highest 0x0a001120."""
    conts = amd_blob()
    assert early_amd(conts, Cpu(AMD, AMD_SIG, revision=0x0A001100), kernel).patch_id == 0x0A001110
    # what the harness took before (the highest across containers) is in container 3
    assert max(p.patch_id for c in conts for p in c.patches if p.processor_rev_id == AMD_EID) \
        == 0x0A001120


@pytest.mark.parametrize("kernel", ["6.1", "6.7"])
def test_amd_equal_level_reapplied_higher_level_stops(kernel):
    """apply_microcode_early_amd returns early only when rev > patch_id (e7ad18d1169c);
    container 3 is never looked at once container 2 matched."""
    conts = amd_blob()
    assert early_amd(conts, Cpu(AMD, AMD_SIG, revision=0x0A001110), kernel).patch_id == 0x0A001110
    assert early_amd(conts, Cpu(AMD, AMD_SIG, revision=0x0A001111), kernel) is None
    assert early_amd(conts, Cpu(AMD, AMD_SIG, revision=0x01000098), kernel) is None  # final level
    assert early_amd(conts, Cpu(AMD, 0x00A00F13, revision=0), kernel) is None


def test_amd_patch_of_another_family_is_skipped():
    """verify_patch returns 1 (skip) when 0xf + (processor_rev_id >> 12) is not the CPU's
    family, even if the equivalence id is the same number."""
    fam17_eid = 0x8012
    cont = build_container([(AMD_SIG, fam17_eid)], [build_patch(0x08001250, fam17_eid)])
    assert early_amd(parse_amd(cont).containers, Cpu(AMD, AMD_SIG), "6.1") is None


def intel_ext_only_then_primary():
    """A matches the CPU only through its extended table (rev 5), B by its primary
    signature (rev 7); B does not list A's primary signature OTHER_SIG."""
    a = build_update(OTHER_SIG, 0x02, 5, ext_sigs=[(OTHER_SIG, 0x02), (SIG, 0x02)])
    b = build_update(SIG, 0x02, 7)
    return a, b


def test_intel_61_compares_later_updates_with_the_picks_primary_signature():
    """6.1 scan_microcode: has_newer_microcode(data, phdr->sig, phdr->pf, phdr->rev)."""
    a, b = intel_ext_only_then_primary()
    cpu = Cpu(INTEL, SIG, platform_id=1, revision=0)
    assert early_intel(ups(a, b), cpu, "6.1").revision == 5
    assert early_intel(ups(a, b), cpu, "6.7").revision == 7      # cur_rev rule, CPU's sig
    # order matters for 6.1: B first, then A is not newer
    assert early_intel(ups(b, a), cpu, "6.1").revision == 7


def test_intel_61_takes_a_later_update_that_lists_the_picks_signature():
    a, _ = intel_ext_only_then_primary()
    c = build_update(SIG, 0x02, 9, ext_sigs=[(SIG, 0x02), (OTHER_SIG, 0x02)])
    assert early_intel(ups(a, c), Cpu(INTEL, SIG, 1, 0), "6.1").revision == 9


@pytest.mark.parametrize("kernel", ["6.1", "6.7"])
def test_intel_strictly_newer_than_the_cpu_u32(kernel):
    u = build_update(SIG, 0x02, 0x80000001)
    assert early_intel(ups(u), Cpu(INTEL, SIG, 1, 0x80000001), kernel) is None
    assert early_intel(ups(u), Cpu(INTEL, SIG, 1, 0x7FFFFFFF), kernel).revision == 0x80000001
    assert early_intel(ups(u), Cpu(INTEL, SIG, 0, 0), kernel) is None      # pf 0x01 vs 0x02


def minrev_update(min_req_ver):
    return build_update(SIG, 0x02, 0x20, reserved=(0, min_req_ver, 0))


def test_late_67_min_req_ver_gates_when_forced():
    """ucode_validate_minrev: min_req_ver nonzero and <= the current revision."""
    u = ups(minrev_update(0x10))
    old, ok = Cpu(INTEL, SIG, 1, 0x08), Cpu(INTEL, SIG, 1, 0x10)
    assert late_intel(u, old, "6.7", force_minrev=True) is None
    choice = late_intel(u, old, "6.7")
    assert choice.update.revision == 0x20 and choice.safe is False
    choice = late_intel(u, ok, "6.7", force_minrev=True)
    assert choice.update.revision == 0x20 and choice.safe is True
    assert late_intel(ups(minrev_update(0)), ok, "6.7", force_minrev=True) is None


def test_late_67_forced_skips_unsafe_and_keeps_an_older_safe_update():
    safe = build_update(SIG, 0x02, 0x18, reserved=(0, 0x08, 0))
    unsafe = build_update(SIG, 0x02, 0x20, reserved=(0, 0x10, 0))
    cpu = Cpu(INTEL, SIG, 1, 0x08)
    assert late_intel(ups(safe, unsafe), cpu, "6.7", force_minrev=True).update.revision == 0x18
    assert late_intel(ups(safe, unsafe), cpu, "6.7").update.revision == 0x20


def test_late_61_and_early_ignore_min_req_ver():
    u = ups(minrev_update(0x10))
    cpu = Cpu(INTEL, SIG, 1, 0x08)
    choice = late_intel(u, cpu, "6.1", force_minrev=True)
    assert choice.update.revision == 0x20 and choice.safe is None
    assert early_intel(u, cpu, "6.7").revision == 0x20


def test_unknown_kernel_generation():
    with pytest.raises(ValueError, match="6.1, 6.7"):
        early_intel([], Cpu(INTEL, SIG), "5.10")
