"""Early cpio writer, combined initrd and the kernel-style scan."""

import gzip
import calendar
import datetime

import pytest

from harness.microcode.amd import build_container, build_patch, conventional_equiv_id, parse_amd
from harness.microcode.cpio import (
    AMD_PATH, INTEL_PATH, build_combined_initrd, build_early_cpio, default_mtime,
    find_cpio_data, newc_header,
)
from harness.microcode.intel import build_update, parse_intel
from harness.microcode.select import pack_intel


def intel_blob():
    return pack_intel(parse_intel(
        build_update(0x906EA, 0x22, 0xF0, "2024-11-17")
        + build_update(0x806F8, 0x87, 0x2B000650, "2025-01-02", ext_sigs=[(0x806F7, 0x87)])
        + build_update(0xF43, 0x1D, 5, "2005-04-21", datasize_zero=True)).updates)


def amd_blob():
    eid = conventional_equiv_id(0x00A00F11)
    return build_container([(0x00A00F11, eid)], [build_patch(0x0A0011D5, eid, "2024-02-26")])


def entries(image):
    """Independent newc reader: list of (name, fields, data_offset, data)."""
    out, p = [], 0
    while True:
        assert image[p:p + 6] == b"070701"
        f = [int(image[p + 6 + 8 * i:p + 14 + 8 * i], 16) for i in range(13)]
        name = image[p + 110:p + 110 + f[11] - 1].decode()
        d = (p + 110 + f[11] + 3) & ~3
        out.append((name, f, d, image[d:d + f[6]]))
        p = (d + f[6] + 3) & ~3
        if name == "TRAILER!!!":
            return out, p


def test_intel_layout_rules():
    blob = intel_blob()
    img = build_early_cpio(blob)
    ents, end = entries(img)
    names = [e[0] for e in ents]
    assert names[:3] == ["kernel", "kernel/x86", "kernel/x86/microcode"]
    assert names[-2:] == [INTEL_PATH, "TRAILER!!!"]
    name, f, off, data = ents[-2]
    assert data == blob and off % 16 == 0 and f[1] == 0o100644
    assert [e[1][0] for e in ents[:-1]] == list(range(101, 101 + len(ents) - 1))
    assert all((e[1][7], e[1][8]) == (3, 1) for e in ents[:-1])
    assert len(img) % 1024 == 0 and img[end:] == bytes(len(img) - end)
    newest = datetime.date(2025, 1, 2)
    assert {e[1][5] for e in ents[:-1]} == {calendar.timegm(newest.timetuple()) + 12 * 3600}


def test_amd_and_intel_together():
    img = build_early_cpio(intel_blob(), amd_blob())
    i = find_cpio_data(img, INTEL_PATH)
    a = find_cpio_data(img, AMD_PATH)
    assert i.data == intel_blob() and a.data == amd_blob()
    assert i.offset % 16 == 0 and a.offset % 16 == 0
    assert parse_amd(a.data).ok
    assert default_mtime(None, amd_blob()) == calendar.timegm((2024, 2, 26, 12, 0, 0))


def test_roundtrip_pack_find_parse():
    original = parse_intel(intel_blob()).updates
    initrd = build_combined_initrd(build_early_cpio(pack_intel(original)), gzip.compress(b"main" * 999))
    hit = find_cpio_data(initrd, INTEL_PATH)
    back = parse_intel(hit.data)
    assert back.ok and [u.raw for u in back.updates] == [u.raw for u in original]
    assert initrd[hit.offset:hit.offset + len(hit.data)] == hit.data


def newc(name, data=b"", mode=0o100644):
    nb = name.encode() + b"\0"
    h = newc_header(len(nb), ino=1, mode=mode, nlink=1, mtime=0, filesize=len(data))
    out = h + nb
    out += bytes(-len(out) % 4) + data
    return out + bytes(-len(out) % 4)


def trailer():
    return newc("TRAILER!!!", mode=0)


def test_scan_across_concatenated_archives_with_nul_padding():
    first = newc("a.txt", b"hello") + trailer()
    second = newc("kernel/x86/microcode/GenuineIntel.bin", b"X" * 10) + trailer()
    img = first + bytes(512) + second
    hit = find_cpio_data(img, INTEL_PATH)
    assert hit.data == b"X" * 10 and img[hit.offset:hit.offset + 10] == b"X" * 10


def test_scan_stops_at_compressed_data():
    gz = gzip.compress(newc(INTEL_PATH, b"hidden") + trailer())
    assert find_cpio_data(trailer() + gz, INTEL_PATH) is None
    ours = build_early_cpio(intel_blob())
    assert find_cpio_data(gz + ours, INTEL_PATH) is None          # compressed first: not found
    assert find_cpio_data(ours + gz, INTEL_PATH).data == intel_blob()


def test_scan_tolerates_trailing_garbage_and_truncation():
    ours = build_early_cpio(intel_blob())
    assert find_cpio_data(ours + b"garbage!" * 100, INTEL_PATH).data == intel_blob()
    hit = find_cpio_data(ours, INTEL_PATH)
    assert find_cpio_data(ours[:hit.offset + 100], INTEL_PATH) is None   # data overruns


def test_scan_alignment_cases():
    # names of every length mod 4 put data at different paddings
    for extra in range(4):
        name = "kernel/x86/microcode/GenuineIntel.bin"
        other = newc("x" * (1 + extra), b"abc") + newc(name, b"Z" * (5 + extra)) + trailer()
        hit = find_cpio_data(other, INTEL_PATH)
        assert hit.offset % 4 == 0 and hit.data == b"Z" * (5 + extra)
    # a header that starts off a 4-byte boundary (after a non-multiple-of-4 pad) is not found
    assert find_cpio_data(b"\0\0" + newc(INTEL_PATH, b"q"), INTEL_PATH) is None


def test_scan_match_rules():
    # directories are not files; names are prefix-compared; crc magic accepted
    d = newc(INTEL_PATH, mode=0o040755)
    assert find_cpio_data(d + trailer(), INTEL_PATH) is None
    longer = newc(INTEL_PATH + ".old", b"old") + newc(INTEL_PATH, b"new")
    assert find_cpio_data(longer, INTEL_PATH).data == b"old"
    crc = b"070702" + newc(INTEL_PATH, b"c")[6:]
    assert find_cpio_data(crc, INTEL_PATH).data == b"c"
    bad = b"070703" + newc(INTEL_PATH, b"c")[6:]
    assert find_cpio_data(bad, INTEL_PATH) is None
    lower = newc(INTEL_PATH, b"L").replace(b"0000000", b"0000000", 1)
    lower_hex = lower[:6] + lower[6:110].lower() + lower[110:]
    assert find_cpio_data(lower_hex, INTEL_PATH).data == b"L"


def test_nothing_to_pack_is_an_error():
    with pytest.raises(ValueError):
        build_early_cpio()
