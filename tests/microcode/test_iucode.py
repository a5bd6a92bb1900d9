"""iucode_tool 2.3.1's selection rules (harness.microcode.iucode) on hand-built updates.

Expected values are written out by hand; each was first observed with iucode_tool 2.3.1
on the same input (the parity tests re-run the binary on generated and real files).
"""

import pytest

from harness.microcode.intel import build_update, parse_intel
from harness.microcode.iucode import (
    Filters, c_number, date_key, parse_date, parse_select, scan_system_filters, select,
    select_updates,
)

SIG, SIG_B, SIG_C, OTHER = 0x906EA, 0x906EB, 0x906EC, 0x506E3


def updates():
    """Seven updates, one file (the experiment set)."""
    raws = [build_update(SIG, 0x22, 0x10, "2020-01-01"),
            build_update(SIG, 0x22, 0x20, "2021-01-01"),
            build_update(SIG, 0x02, 0x30, "2022-06-15"),
            build_update(SIG_B, 0x01, 0x80000001, "2023-03-03"),
            build_update(SIG_B, 0x01, 0x05, "2019-03-03"),
            build_update(SIG_C, 0x00, 0x07, "2018-05-05"),
            build_update(OTHER, 0x36, 0x40, "2022-06-15", ext_sigs=[(SIG, 0x08)])]
    res = parse_intel(b"".join(raws), source="a.bin")
    assert res.ok
    return res.updates


def listing(*specs, **kw):
    """(tag, sig, pf, rev) of the -l listing."""
    sel = select_updates(updates(), list(specs) if specs else None, **kw)
    return [(f"{e.gid:03d}/{e.id:03d}", e.cpuid, e.pfm, e.update.revision) for e in sel.entries]


def test_default_newest_signed_per_platform_set_sorted():
    assert listing() == [("001/007", OTHER, 0x36, 0x40), ("001/002", SIG, 0x22, 0x20),
                         ("001/007", SIG, 0x08, 0x40), ("001/003", SIG, 0x02, 0x30),
                         ("001/005", SIG_B, 0x01, 0x05), ("001/006", SIG_C, 0x00, 0x07)]


@pytest.mark.parametrize("specs, want", [
    (["0x906ea,0x02"], [0x20, 0x30]),                 # pf masks sharing a bit
    (["0x906ea,0x08"], [0x40]),                        # through the extended table
    (["!0x906ea,0x22"], [0x40]),                       # deselect: bits in common
    (["0x906ea", "!0x906ea,0x20"], [0x20, 0x40, 0x30]),   # merged: 0x22 keeps bit 0x02
    (["0x906ea", "!0x906ea,0x02"], [0x20, 0x40]),
    (["0x906ea,0x20", "!0x906ea,0x22"], []),           # the select loses all its bits
    (["!0x906ea", "0x906ea,0x02"], [0x20, 0x30]),      # a select turns the deselect into it
    (["0x906ea", "!0x906ea,,eq:0x30"], [0x20, 0x40]),  # other revision test: in front
    (["0x906ea,,lt:0x20"], [0x10]),
    (["0x906ea,0x20,0x10"], [0x10]),                   # no operator means eq:
])
def test_filters_on_one_signature(specs, want):
    assert [rev for _, sig, _, rev in listing(*specs) if sig == SIG] == want


def test_signed_revisions_and_pf_zero():
    assert [r for _, s, _, r in listing("0x906eb,,gt:5")] == []          # 0x80000001 < 0
    assert [r for _, s, _, r in listing("0x906eb,,lt:0x10")] == [5]
    assert listing("0x906ec,0xff") == []             # a pf-0 update fits no platform bit
    assert [r for _, _, _, r in listing("0x906ec")] == [7]   # no pf mask: any, also 0


def test_select_nothing_by_default():
    assert listing("!") == []
    assert [r for _, _, _, r in listing("!", "0x906eb")] == [5]


def test_dates_exclusive_and_loose():
    # strict: only 2022-06-15 updates are after 2022-01-01 and before 2023-01-01
    kw = dict(date_after=parse_date("2022-01-01", "a"), date_before=parse_date("2023-01-01", "b"))
    assert [(s, p, r) for _, s, p, r in listing(**kw)] == \
        [(OTHER, 0x36, 0x40), (SIG, 0x08, 0x40), (SIG, 0x02, 0x30)]
    # the bounds are exclusive
    assert listing(date_after=parse_date("2022-06-15", "a"),
                   date_before=parse_date("2022-06-16", "b")) == []
    # loose: 0x906ea's platforms 0x22 come back (found from the 0x02 entry, whose
    # platforms they share) with their newest revision, listed after the 0x08 entry
    assert [(s, p, r) for _, s, p, r in listing(**kw, loose=True)] == \
        [(OTHER, 0x36, 0x40), (SIG, 0x08, 0x40), (SIG, 0x22, 0x20), (SIG, 0x02, 0x30)]


def test_downgrade_keeps_the_file_loaded_last():
    """facts §4.1 (measured): 0xfa then a re-checksummed 0xf0 in a later file."""
    a = parse_intel(build_update(SIG, 0x22, 0xFA, seed=1), source="1").updates
    b = parse_intel(build_update(SIG, 0x22, 0xF0, seed=2), source="2").updates
    assert [e.update.revision for e in select_updates(a + b).entries] == [0xFA]
    assert [e.update.revision for e in select_updates(a + b, downgrade=True).entries] == [0xF0]
    assert [e.update.revision for e in select_updates(b + a, downgrade=True).entries] == [0xFA]


def test_payload_conflict_strict_and_ignored():
    a = build_update(SIG, 0x22, 0xF0, seed=1)
    b = build_update(SIG, 0x22, 0xF0, seed=2)
    ups = parse_intel(a + b, source="x").updates
    sel = select_updates(ups)
    assert len(sel.conflicts) == 1 and sel.entries == [] and "001/001" in str(sel.conflicts[0])
    sel = select_updates(ups, ignore_broken=True)
    assert [e.id for e in sel.entries] == [1] and len(sel.conflicts) == 1
    assert select_updates(ups, strict=False).conflicts == []
    # an update with an extended table is never compared (intel_ucode_compare)
    c = build_update(SIG, 0x22, 0xF0, ext_sigs=[(SIG_B, 1)], seed=3)
    assert select_updates(parse_intel(a + c).updates).conflicts == []


def test_scan_system_filters_every_stepping():
    fl = Filters()
    fl.add_scan(scan_system_filters(0x906EA))
    assert sorted(fl.by_sig) == list(range(0x906E0, 0x906F0))
    assert fl.selected(0x906E3, 0x80, 1) and not fl.selected(0x906F0, 0x80, 1)
    fl = Filters()
    fl.add_scan(scan_system_filters(0x906EA, 0x02, 0x20))
    assert fl.selected(0x906E0, 0x22, 0x21) and not fl.selected(0x906E0, 0x22, 0x20)
    assert not fl.selected(0x906E0, 0x01, 0x21)
    recs = [(1, i, u) for i, u in enumerate(updates(), 1)]
    assert [e.update.revision for e in select(recs, fl).entries] == [0x30]


@pytest.mark.parametrize("text", ["0x906ea,", "", "!!1", "0xzz", "1,2,3,4", "0x906ea,,",
                                  "0x906ea,,xx:1", "0", "0xffffffff"])
def test_parse_select_rejects(text):
    with pytest.raises(ValueError):
        parse_select(text)


def test_numbers_and_dates_like_c():
    assert c_number("010", "x") == 8 and c_number("0x10", "x") == 16 and c_number("10", "x") == 10
    assert c_number("0xffffffff", "r", signed=True) == -1
    assert parse_select("!") is None
    assert date_key(0x11172024) == 0x20241117
    assert parse_date("2000-00-00", "d") == 0x20000000
    with pytest.raises(ValueError):
        parse_date("2024-1-1x", "d")
