"""AMD containers built byte by byte: layout, verdicts, matching."""


import pytest

from harness.microcode.amd import (
    CONTAINER_HEADER_SIZE, EQUIV_ENTRY_SIZE, PATCH_HEADER_SIZE, SECTION_HEADER_SIZE,
    build_container, build_patch, conventional_equiv_id, parse_amd, patches_for_cpu,
)

from mc_helpers import get_u32, put_u32

ZEN3 = 0x00A00F11       # family 0x19
ZEN2 = 0x00830F10       # family 0x17


def zen_container(*patch_ids, cpu=ZEN3):
    eid = conventional_equiv_id(cpu)
    return build_container([(cpu, eid)], [build_patch(pid, eid, size=1600) for pid in patch_ids])


def test_layout_and_fields():
    eid = conventional_equiv_id(ZEN3)
    patch = build_patch(0x0A0011D5, eid, "2024-02-26", size=3200)
    blob = build_container([(ZEN3, eid), (0x00A00F10, eid)], [patch])
    assert get_u32(blob, 0) == 0x00414D44 and blob[:4] == b"DMA\0"
    res = parse_amd(blob)
    assert res.ok and res.defects == []
    (c,) = res.containers
    assert [(e.installed_cpu, e.equiv_id) for e in c.equiv_table] == [(ZEN3, eid), (0x00A00F10, eid)]
    (p,) = c.patches
    assert p.patch_id == 0x0A0011D5 and p.processor_rev_id == eid == 0xA011
    assert p.family == 0x19 and p.date == "2024-02-26" and p.raw == patch
    assert p.offset == CONTAINER_HEADER_SIZE + 3 * EQUIV_ENTRY_SIZE + SECTION_HEADER_SIZE
    assert c.raw == blob


def test_concatenated_containers_and_matching():
    a = zen_container(0x0A0011D1, 0x0A0011D5)
    b = zen_container(0x08301072, cpu=ZEN2)
    res = parse_amd(a + b)
    assert res.ok and [len(c.patches) for c in res.containers] == [2, 1]
    assert [p.patch_id for p in patches_for_cpu(res.containers, ZEN3)] == [0x0A0011D1, 0x0A0011D5]
    assert [p.patch_id for p in patches_for_cpu(res.containers, ZEN2)] == [0x08301072]
    assert patches_for_cpu(res.containers, 0x00A20F10) == []        # not in any table


def test_equiv_id_from_other_container_does_not_match():
    # ZEN3's table lives in container a; a patch with its id in container b is not used
    eid = conventional_equiv_id(ZEN3)
    a = build_container([(ZEN3, eid)], [])
    b = build_container([(ZEN2, conventional_equiv_id(ZEN2))], [build_patch(0x0A0011D9, eid)])
    res = parse_amd(a + b)
    assert patches_for_cpu(res.containers, ZEN3) == []


def test_patch_of_other_family_is_skipped():
    eid = conventional_equiv_id(ZEN3)
    odd = build_container([(ZEN3, eid)], [build_patch(1, 0x8012)])  # family 0x17 patch
    assert patches_for_cpu(parse_amd(odd).containers, ZEN3) == []


def test_bad_magic_resyncs_to_next_container():
    a, b = zen_container(1), zen_container(2)
    res = parse_amd(put_u32(a, 0, 0x12345678) + b)
    assert [p.patch_id for p in res.patches] == [2]
    d = res.defects[0]
    assert d.field == "container magic" and d.offset == 0 and d.found == "0x12345678"


def test_bad_table_type_and_length():
    a = zen_container(1)
    res = parse_amd(put_u32(a, 4, 1))
    assert res.patches == [] and res.defects[0].field == "equivalence table type"
    res = parse_amd(put_u32(a, 8, 8))
    assert res.patches == [] and res.defects[0].field == "equivalence table length"
    res = parse_amd(put_u32(a, 8, 1 << 20))
    assert res.patches == [] and res.defects[0].offset == 8


def test_missing_table_terminator_is_warning():
    eid = conventional_equiv_id(ZEN3)
    blob = build_container([(ZEN3, eid)], [build_patch(1, eid)], terminate=False)
    res = parse_amd(blob)
    assert res.ok and len(res.patches) == 1
    assert res.defects[0].field == "equivalence table" and not res.defects[0].fatal


def test_bad_section_type_and_sizes():
    a = zen_container(1, 2)
    first_section = CONTAINER_HEADER_SIZE + 2 * EQUIV_ENTRY_SIZE
    res = parse_amd(put_u32(a, first_section, 7))
    assert res.patches == [] and res.defects[0].field == "section type"
    res = parse_amd(put_u32(a, first_section + 4, 63))
    assert res.defects[0].field == "patch size" and res.defects[0].offset == first_section + 4
    res = parse_amd(a[:-10])                  # truncated second patch
    assert [p.patch_id for p in res.patches] == [1] and not res.ok


def test_chipset_specific_patch_rejected():
    eid = conventional_equiv_id(ZEN3)
    blob = build_container([(ZEN3, eid)], [build_patch(1, eid, nb_dev_id=0x1022),
                                           build_patch(2, eid)])
    res = parse_amd(blob)
    assert [p.patch_id for p in res.patches] == [2]
    assert res.defects[0].field == "nb_dev_id/sb_dev_id"


@pytest.mark.parametrize("fam_cpu,eid,cap", [(0x00100F22, 0x1022, 2048), (0x00500F20, 0x5020, 1824)])
def test_family_size_caps(fam_cpu, eid, cap):
    ok = build_container([(fam_cpu, eid)], [build_patch(1, eid, size=cap)])
    big = build_container([(fam_cpu, eid)], [build_patch(2, eid, size=cap + 4)])
    assert parse_amd(ok).ok
    res = parse_amd(big)
    assert res.patches == [] and res.defects[0].field == "patch size"


def test_trailing_garbage_and_short_file():
    a = zen_container(1)
    res = parse_amd(a + b"abc")
    assert len(res.patches) == 1 and res.defects[0].field == "trailing data"
    assert not parse_amd(a[:12]).ok


def test_conventional_equiv_id_family_roundtrip():
    for cpu in (ZEN3, ZEN2, 0x00800F12, 0x00B40F40):
        eid = conventional_equiv_id(cpu)
        p = parse_amd(build_container([(cpu, eid)], [build_patch(1, eid)])).patches[0]
        fam = ((cpu >> 8) & 0xF) + ((cpu >> 20) & 0xFF)
        assert p.family == fam
        assert len(build_patch(1, eid)) >= PATCH_HEADER_SIZE
