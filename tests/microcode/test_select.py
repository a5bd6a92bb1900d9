"""Which update Linux would load, and iucode_tool-style packing."""

from harness.microcode.amd import build_container, build_patch, conventional_equiv_id, parse_amd
from harness.microcode.cpuid import (
    amd_fw_name, decode_signature, intel_cpu_pf, intel_fw_name, platform_id_from_msr,
)
from harness.microcode.intel import build_update, parse_intel
from harness.microcode.iucode import select_updates
from harness.microcode.linux import early_amd, early_intel, pack_for_cpus
from harness.microcode.select import (
    AMD, INTEL, Cpu, dedup_sort, pack_intel, signatures_match,
)

SIG = 0x906EA


def ups(*raws):
    res = parse_intel(b"".join(raws))
    assert res.ok
    return res.updates


def test_signature_and_pf_rule():
    assert signatures_match(SIG, 0x02, SIG, 0x22)
    assert not signatures_match(SIG, 0x01, SIG, 0x22)
    assert signatures_match(SIG, 0, SIG, 0)
    assert not signatures_match(SIG, 0, SIG, 0x22)
    assert not signatures_match(SIG, 0x02, SIG + 1, 0x02)


def test_cpuid_helpers():
    assert decode_signature(0x906EA) == (6, 0x9E, 0xA)
    assert decode_signature(0x00A00F11) == (0x19, 0x01, 1)
    assert intel_fw_name(0x906EA) == "intel-ucode/06-9e-0a"
    assert amd_fw_name(0x00A00F11) == "amd-ucode/microcode_amd_fam19h.bin"
    assert amd_fw_name(0x00100F22) == "amd-ucode/microcode_amd.bin"
    assert platform_id_from_msr(5 << 50 | 0xFFFF) == 5
    assert intel_cpu_pf(0x906EA, 1) == 0x02
    assert intel_cpu_pf(0x634, 3) == 0          # family 6 model 3: no MSR 0x17


def test_highest_newer_revision_wins_first_on_ties():
    """6.7+ scan_microcode (cur_rev rule); 6.1's differences are in test_linux_rules."""
    a = build_update(SIG, 0x22, 0xF0)
    b = build_update(SIG, 0x22, 0xFA, seed=1)
    c = build_update(SIG, 0x22, 0xFA, seed=2)      # same revision, later: loses
    d = build_update(SIG, 0x01, 0xFF)              # other platform
    updates = ups(a, b, c, d)
    cpu = Cpu(INTEL, SIG, platform_id=1, revision=0)
    assert early_intel(updates, cpu, "6.7").raw == b
    assert early_intel(updates, Cpu(INTEL, SIG, 0, 0), "6.7").raw == d
    assert early_intel(updates, Cpu(INTEL, SIG, 1, 0xFA), "6.7") is None        # never equal
    assert early_intel(updates, Cpu(INTEL, SIG, 1, 0x100), "6.7") is None       # never a downgrade
    assert early_intel(updates, Cpu(INTEL, SIG, 1, 0xF5), "6.7").raw == b
    assert early_intel(updates, Cpu(INTEL, SIG + 1, 1, 0), "6.7") is None


def test_revisions_compare_unsigned_like_linux():
    hi = build_update(SIG, 0x22, 0x80000001)
    lo = build_update(SIG, 0x22, 0x5)
    assert early_intel(ups(lo, hi), Cpu(INTEL, SIG, 1), "6.7").revision == 0x80000001
    # iucode_tool compares signed: it keeps 0x5
    (e,) = select_updates(ups(hi, lo)).entries
    assert e.update.revision == 0x5


def test_extended_signature_counts():
    u = build_update(0x506E3, 0x36, 0x10, ext_sigs=[(SIG, 0x22)])
    assert early_intel(ups(u), Cpu(INTEL, SIG, 5), "6.7").raw == u
    assert early_intel(ups(u), Cpu(INTEL, SIG, 0), "6.7") is None


def test_pf_zero_cpu_only_takes_pf_zero_update():
    old = 0x00000634                      # model 3: pf is 0
    u0 = build_update(old, 0, 2)
    u1 = build_update(old, 0x01, 3)
    assert early_intel(ups(u0, u1), Cpu(INTEL, old, platform_id=0), "6.7").raw == u0


def test_pack_dedups_and_sorts_like_iucode():
    a = build_update(0x906EA, 0x02, 5)
    b = build_update(0x906EA, 0x22, 6)
    c = build_update(0x506E3, 0x36, 7)
    packed = pack_intel(ups(a, b, c, a))
    order = [(u.signature, u.pf_mask) for u in parse_intel(packed).updates]
    assert order == sorted(set(order), key=lambda k: (k[0], -k[1])) and len(order) == 3
    assert dedup_sort(ups(a, a)) == ups(a)


def test_pack_for_cpus():
    a = build_update(SIG, 0x02, 5)
    b = build_update(SIG, 0x02, 9)
    c = build_update(0x806EC, 0x94, 0xF4)
    cpus = [Cpu(INTEL, SIG, 1), Cpu(INTEL, SIG, 1), Cpu(INTEL, 0x806EC, 2), Cpu(INTEL, 0x1, 0)]
    got = parse_intel(pack_for_cpus(ups(a, b, c), cpus)).updates
    assert [u.raw for u in got] == [c, b]          # sorted by signature


def test_iucode_select_conflict_and_filters():
    a = build_update(SIG, 0x22, 5, seed=1)
    a2 = build_update(SIG, 0x22, 5, seed=2)
    sel = select_updates(ups(a, a2))
    assert len(sel.conflicts) == 1 and sel.conflicts[0].record == len(a) and not sel.entries
    b = build_update(SIG, 0x01, 6)
    sel = select_updates(ups(a, b), ["0x906ea,0x02"])
    assert [e.update.raw for e in sel.entries] == [a]
    assert select_updates(ups(a, b), ["0x906eb"]).entries == []


def test_amd_select():
    cpu_sig = 0x00A00F11
    eid = conventional_equiv_id(cpu_sig)
    blob = build_container([(cpu_sig, eid)], [build_patch(0x0A0011D1, eid), build_patch(0x0A0011D5, eid),
                                              build_patch(0x0A0011D3, eid)])
    conts = parse_amd(blob).containers
    # the last match in the container, not the highest; an equal level is re-applied
    assert early_amd(conts, Cpu(AMD, cpu_sig, revision=0x0A0011D0)).patch_id == 0x0A0011D3
    assert early_amd(conts, Cpu(AMD, cpu_sig, revision=0x0A0011D3)).patch_id == 0x0A0011D3
    assert early_amd(conts, Cpu(AMD, cpu_sig, revision=0x0A0011D4)) is None
    assert early_amd(conts, Cpu(AMD, cpu_sig, revision=0x01000098)) is None   # final level
