"""Every verdict of the Intel parser on updates built byte by byte."""


import pytest

from harness.microcode import intel
from harness.microcode.intel import (
    DEFAULT_DATA_SIZE, DEFAULT_TOTAL_SIZE, EXT_ENTRY_SIZE, EXT_HEADER_SIZE, HEADER_SIZE,
    build_update, parse_intel, recompute_checksums,
)

from mc_helpers import get_u32, put_u32

SIG, PF, REV = 0x906EA, 0x22, 0xF0


def good(**kw):
    return build_update(SIG, PF, REV, "2024-11-17", **kw)


def plain_sum(b):
    return sum(memoryview(b).cast("I")) & 0xFFFFFFFF


def only_defect(res):
    assert len(res.defects) == 1, [str(d) for d in res.defects]
    return res.defects[0]


# --- valid updates -------------------------------------------------------------------

def test_valid_update_every_field():
    raw = build_update(SIG, PF, 0x1234, "2023-07-18", reserved=(0x14, 0xEA, 0))
    res = parse_intel(raw)
    assert res.ok and res.defects == []
    (u,) = res.updates
    assert (u.header_version, u.loader_revision) == (1, 1)
    assert (u.signature, u.pf_mask, u.revision) == (SIG, PF, 0x1234)
    assert u.date == "2023-07-18" and u.date_bcd == 0x07182023
    assert u.total_size == len(raw) and u.total_size % 1024 == 0
    assert u.data_size == u.total_size - HEADER_SIZE
    assert (u.metasize, u.min_req_ver) == (0x14, 0xEA)      # reserved words are kept
    assert plain_sum(raw) == 0 and u.raw == raw
    assert u.checksum == get_u32(raw, 16)
    assert u.signatures == [(SIG, PF)] and u.ext_signatures == ()


def test_builder_uses_given_data_and_sizes():
    data = bytes(range(256)) * 3 + bytes(208)
    raw = build_update(SIG, PF, REV, data=data)
    (u,) = parse_intel(raw).updates
    assert u.data == data and u.total_size == HEADER_SIZE + len(data)
    big = good(total_size=5 * 1024)
    assert parse_intel(big).updates[0].total_size == 5 * 1024


def test_datasize_zero_record_means_2000_and_2048():
    raw = build_update(0xF43, 0x1D, 5, "2005-04-21", datasize_zero=True)
    assert get_u32(raw, 28) == 0 and get_u32(raw, 32) == 0
    assert len(raw) == DEFAULT_TOTAL_SIZE
    res = parse_intel(raw + good())
    assert res.ok
    u = res.updates[0]
    assert (u.data_size, u.total_size) == (DEFAULT_DATA_SIZE, DEFAULT_TOTAL_SIZE)
    assert res.updates[1].offset == DEFAULT_TOTAL_SIZE


def test_datasize_zero_with_total_size_is_only_a_warning():
    raw = recompute_checksums(put_u32(build_update(0xF43, 1, 5, datasize_zero=True), 32, 2048))
    res = parse_intel(raw)
    assert len(res.updates) == 1 and res.ok
    d = only_defect(res)
    assert not d.fatal and d.field == "total size" and d.offset == 32


def test_extended_table_valid():
    ext = [(SIG, PF), (0x906EB, 0x02), (0x906EC, 0x80)]
    raw = good(ext_sigs=ext)
    res = parse_intel(raw)
    assert res.ok
    (u,) = res.updates
    assert [(e.signature, e.pf_mask) for e in u.ext_signatures] == ext
    assert u.signatures == [(SIG, PF), (0x906EB, 0x02), (0x906EC, 0x80)]  # distinct pairs
    assert plain_sum(raw) == 0                   # SDM: all dwords including the table
    table = raw[HEADER_SIZE + u.data_size:]
    assert len(table) == EXT_HEADER_SIZE + 3 * EXT_ENTRY_SIZE and plain_sum(table) == 0
    # each entry checksum = main checksum with sig/pf swapped in (facts §1.3 rule 3)
    for e in u.ext_signatures:
        swapped = put_u32(put_u32(put_u32(raw, 12, e.signature), 24, e.pf_mask), 16, e.checksum)
        assert plain_sum(swapped[:HEADER_SIZE + u.data_size]) == 0


# --- each corruption -----------------------------------------------------------------

def test_bad_main_checksum_reports_fix():
    raw = bytearray(good())
    raw[200] ^= 0x40
    res = parse_intel(bytes(raw))
    assert res.updates == [] and not res.ok
    d = only_defect(res)
    assert (d.field, d.offset, d.record) == ("checksum", 16, 0)
    assert d.found == f"0x{get_u32(raw, 16):08x}"
    fixed = put_u32(raw, 16, int(d.expected, 16))  # the expected value really repairs it
    assert parse_intel(fixed).ok


@pytest.mark.parametrize("off,field,value", [
    (0, "header version", 2),
    (20, "loader revision", 0),
])
def test_version_fields(off, field, value):
    raw = recompute_checksums(put_u32(good(), off, value))
    res = parse_intel(raw)
    assert res.updates == []
    d = next(d for d in res.defects if d.field == field)
    assert d.offset == off and d.expected == "1" and d.found == hex(value) and d.fatal


def test_data_size_not_multiple_of_4():
    res = parse_intel(put_u32(good(), 28, 970))
    assert res.updates == []
    assert any(d.field == "data size" and d.offset == 28 for d in res.defects)


def test_total_smaller_than_header_plus_data():
    res = parse_intel(put_u32(good(), 32, 512))
    assert res.updates == [] and any(d.field == "total size" and d.offset == 32 for d in res.defects)


def test_truncated_record():
    raw = good(total_size=2048)[:1500]
    res = parse_intel(raw)
    assert res.updates == []
    d = res.defects[0]
    assert d.field == "total size" and "truncated" in d.found and "1500" in d.expected


@pytest.mark.parametrize("date", [0x13452024, 0x0230202A, 0x02302024])  # month 13, hex digit, Feb 30
def test_bad_date_strict_and_loose(date):
    raw = build_update(SIG, PF, REV, date)
    strict = parse_intel(raw)
    assert strict.updates == [] and only_defect(strict).field == "date"
    assert only_defect(strict).found == f"0x{date:08x}"
    loose = parse_intel(raw, strict=False)
    assert len(loose.updates) == 1 and loose.ok and not only_defect(loose).fatal


def test_total_not_whole_kib_strict_and_loose():
    raw = good(total_size=1028)
    strict = parse_intel(raw)
    d = only_defect(strict)
    assert strict.updates == [] and d.field == "total size" and d.expected == "a multiple of 1024"
    assert len(parse_intel(raw, strict=False).updates) == 1


def test_pf_reserved_bits_warn_only():
    res = parse_intel(build_update(SIG, 0x122, REV))
    assert len(res.updates) == 1 and res.ok
    assert only_defect(res).field == "processor flags"


def _ext_offsets(raw):
    ds = get_u32(raw, 28)
    return HEADER_SIZE + ds, HEADER_SIZE + ds + EXT_HEADER_SIZE


def test_ext_table_checksum():
    raw = good(ext_sigs=[(0x906EB, 2)])
    t, _ = _ext_offsets(raw)
    bad = put_u32(raw, t + 8, 7)      # a reserved table word: only the table sum breaks
    res = parse_intel(bad)
    d = only_defect(res)
    assert res.updates == [] and d.field == "extended table checksum" and d.offset == t + 4
    assert parse_intel(put_u32(bad, t + 4, int(d.expected, 16))).ok


def test_ext_entry_checksum():
    raw = good(ext_sigs=[(0x906EB, 2), (0x906EC, 4)])
    _, e0 = _ext_offsets(raw)
    entry1 = e0 + EXT_ENTRY_SIZE
    # change entry 1's checksum but keep the table sum zero by compensating a reserved word
    bad = put_u32(raw, entry1 + 8, get_u32(raw, entry1 + 8) + 1)
    bad = put_u32(bad, e0 - 12, get_u32(bad, e0 - 12) - 1)
    res = parse_intel(bad)
    d = only_defect(res)
    assert res.updates == [] and d.field == "extended signature 1 checksum"
    assert d.offset == entry1 + 8


def test_ext_count_mismatch():
    raw = good(ext_sigs=[(0x906EB, 2)])
    t, _ = _ext_offsets(raw)
    res = parse_intel(put_u32(raw, t, 5))
    assert res.updates == [] and any(d.field == "extended signature count" for d in res.defects)


def test_ext_area_bad_geometry():
    # extended area of 8 bytes: neither empty nor 20 + 12n
    raw = build_update(SIG, PF, REV, data=bytes(968))           # total 1016
    raw = recompute_checksums(put_u32(raw + bytes(8), 32, 1024))
    res = parse_intel(raw)
    assert res.updates == [] and any(d.field == "extended signature table size" for d in res.defects)


# --- concatenations: keep the good ones around damage ---------------------------------

def test_concatenation_in_order():
    parts = [good(), build_update(0x806F8, 0x87, 0x2B000650, "2025-01-02", ext_sigs=[(0x806F7, 0x87)]),
             build_update(0xF43, 1, 5, datasize_zero=True)]
    res = parse_intel(b"".join(parts))
    assert res.ok and [u.raw for u in res.updates] == parts
    assert [u.offset for u in res.updates] == [0, len(parts[0]), len(parts[0]) + len(parts[1])]


def test_bad_checksum_in_middle_keeps_neighbours():
    a, b, c = good(), bytearray(build_update(0x906EB, 2, 3)), build_update(0x906EC, 4, 5)
    b[500] ^= 1
    res = parse_intel(a + bytes(b) + c)
    assert [u.raw for u in res.updates] == [a, c]
    assert [d.record for d in res.errors] == [len(a)]


def test_garbage_between_records_resyncs():
    a, c = good(), build_update(0x906EC, 4, 5)
    junk = b"\x01\x00\x00\x00" + bytes(range(200)) + b"\xff" * 57
    res = parse_intel(a + junk + c)
    assert [u.raw for u in res.updates] == [a, c]
    skipped = [d for d in res.defects if d.field == "unparseable data"]
    assert len(skipped) == 1 and skipped[0].offset == len(a)
    assert f"{len(junk)} bytes" in skipped[0].found


def test_broken_size_fields_resync():
    a, b, c = good(), good(total_size=2048), build_update(0x906EC, 4, 5)
    bad_b = put_u32(b, 32, 0x7FFFFFF0)          # absurd total size
    res = parse_intel(a + bad_b + c)
    assert [u.raw for u in res.updates] == [a, c]


def test_trailing_bytes_reported():
    a = good()
    for tail in (b"\0" * 4, b"x" * 47):
        res = parse_intel(a + tail)
        assert res.updates[0].raw == a and not res.ok
        d = only_defect(res)
        assert d.field == "trailing data" and d.offset == len(a) and str(len(tail)) in d.found


def test_truncated_last_record_keeps_first():
    a, b = good(), build_update(0x906EB, 2, 3, total_size=3072)
    res = parse_intel(a + b[:2000])
    assert [u.raw for u in res.updates] == [a] and not res.ok


def test_random_damage_never_crashes():
    import random
    rng = random.Random(7)
    blob = b"".join(build_update(0x906E0 + i, 1 << (i % 8), i + 1, ext_sigs=[(0x506E0 + i, 1)] if i % 2 else ())
                    for i in range(6))
    for _ in range(200):
        b = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        b = bytes(b[:rng.randrange(len(b) - 100, len(b) + 1)])
        res = parse_intel(b)
        for u in res.updates:                   # whatever survives really is valid
            assert parse_intel(u.raw).ok
        if b == blob:
            assert res.ok and len(res.updates) == 6


def test_defect_message_names_offset_field_expected_found():
    raw = bytearray(good())
    raw[60] ^= 1
    d = parse_intel(bytes(raw), source="x.bin").defects[0]
    msg = str(d)
    assert msg.startswith("x.bin: offset 0x10: checksum: expected 0x") and "found 0x" in msg


def test_bcd_date_helpers():
    assert intel.date_to_bcd("1998-07-18") == 0x07181998   # the SDM's example
    assert intel.format_bcd_date(0x07181998) == "1998-07-18"
    assert intel.bcd_date_to_date(0x02292024).isoformat() == "2024-02-29"
    assert intel.bcd_date_to_date(0x02292023) is None
