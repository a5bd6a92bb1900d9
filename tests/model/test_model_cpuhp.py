"""QEMU's CPU hot-plug register block (facts §1)."""
from harness import hw
from harness.model.cpuhp import CpuHotplugBlock


def block(n=4, present=(0, 1)):
    ejected = []
    b = CpuHotplugBlock(range(n), on_eject=ejected.append)
    for s in present:
        b.plug(s, hotplug=False)
    return b, ejected


def modern(b):
    b.write(0, 0, 4)
    assert not b.legacy


def test_legacy_bitmap_and_switch():
    b, _ = block(present=(0, 1, 3))
    assert b.legacy
    assert b.read(0, 1) == 0b1011
    b.write(0, 5, 4)            # non-zero write does not switch
    assert b.legacy
    modern(b)
    b.write(0, 0, 4)
    assert not b.legacy        # one-way


def test_selector_command_data():
    b, _ = block()
    modern(b)
    b.write(hw.CPUHP_SEL, 2, 4)
    assert b.read(hw.CPUHP_DATA, 4) == 2            # cmd 0 -> selector
    assert b.read(hw.CPUHP_SEL, 4) == 0             # data2 for cmd 0
    b.write(hw.CPUHP_CMD, hw.CPUHP_CMD_GET_ARCH_ID)
    assert b.read(hw.CPUHP_DATA, 4) == 2            # APIC id
    assert b.read(hw.CPUHP_SEL, 4) == 0             # high 32 bits
    b.write(hw.CPUHP_CMD, 7)                        # >= 4 ignored
    assert b.command == hw.CPUHP_CMD_GET_ARCH_ID
    for off in (5, 6, 7):
        assert b.read(off) == 0


def test_out_of_range_selector():
    b, _ = block()
    modern(b)
    b.write(hw.CPUHP_SEL, 9, 4)
    assert b.selector == 9                          # offset 0 always stored
    assert b.read(hw.CPUHP_DATA, 4) == 0 and b.read(hw.CPUHP_STAT) == 0
    b.write(hw.CPUHP_CMD, hw.CPUHP_CMD_GET_ARCH_ID)
    assert b.command == 0                           # ignored


def test_status_bits_and_scan_wraps():
    b, _ = block()
    modern(b)
    assert b.plug(3, hotplug=True)
    b.unplug_request(1)
    b.write(hw.CPUHP_SEL, 2, 4)
    b.write(hw.CPUHP_CMD, hw.CPUHP_CMD_GET_NEXT)
    assert b.selector == 3
    assert b.read(hw.CPUHP_STAT) == hw.CPUHP_STAT_ENABLED | hw.CPUHP_STAT_INSERT
    b.write(hw.CPUHP_SEL, 0, 4)
    b.write(hw.CPUHP_CMD, hw.CPUHP_CMD_GET_NEXT)
    assert b.selector == 1                          # inclusive scan from 0
    b.write(hw.CPUHP_STAT, hw.CPUHP_STAT_REMOVE)    # clears remove event
    b.write(hw.CPUHP_SEL, 3, 4)
    b.write(hw.CPUHP_STAT, hw.CPUHP_STAT_INSERT)
    b.write(hw.CPUHP_SEL, 2, 4)
    b.write(hw.CPUHP_CMD, hw.CPUHP_CMD_GET_NEXT)
    assert b.selector == 2                          # no event: unchanged


def test_scan_wraps_around():
    b, _ = block()
    modern(b)
    b.plug(1, hotplug=True)
    b.write(hw.CPUHP_SEL, 2, 4)
    b.write(hw.CPUHP_CMD, hw.CPUHP_CMD_GET_NEXT)
    assert b.read(hw.CPUHP_DATA, 4) == 1            # < 2: the guest sees the wrap


def test_control_first_match_wins_and_eject():
    b, ejected = block(present=(0, 1, 2))
    modern(b)
    b.write(hw.CPUHP_SEL, 2, 4)
    b.is_inserting[2] = True
    # insert bit + eject bit: only the insert clear happens
    b.write(hw.CPUHP_STAT, hw.CPUHP_STAT_INSERT | hw.CPUHP_STAT_EJECT)
    assert not b.is_inserting[2] and b.present[2] and ejected == []
    b.write(hw.CPUHP_STAT, hw.CPUHP_STAT_FW_REMOVE)
    assert b.read(hw.CPUHP_STAT) & hw.CPUHP_STAT_FW_REMOVE
    b.write(hw.CPUHP_STAT, hw.CPUHP_STAT_EJECT)
    assert ejected == [2] and not b.present[2] and not b.fw_remove[2]
    assert b.read(hw.CPUHP_STAT) == 0
    # CPU 0 is never ejected, absent CPUs ignore fw_remove
    b.write(hw.CPUHP_SEL, 0, 4)
    b.write(hw.CPUHP_STAT, hw.CPUHP_STAT_EJECT)
    b.write(hw.CPUHP_STAT, hw.CPUHP_STAT_FW_REMOVE)
    assert b.present[0] and not b.fw_remove[0] and ejected == [2]
    b.write(hw.CPUHP_SEL, 3, 4)
    b.write(hw.CPUHP_STAT, hw.CPUHP_STAT_FW_REMOVE)
    assert not b.fw_remove[3]


def test_ost():
    b, _ = block()
    modern(b)
    b.write(hw.CPUHP_SEL, 1, 4)
    b.write(hw.CPUHP_CMD, hw.CPUHP_CMD_OST_EVENT)
    b.write(hw.CPUHP_DATA, 3, 4)
    b.write(hw.CPUHP_CMD, hw.CPUHP_CMD_OST_STATUS)
    b.write(hw.CPUHP_DATA, 0x80, 4)
    assert b.ost_log == [(1, 3, 0x80)]


def test_cold_plug_raises_no_event():
    b, _ = block(present=())
    assert not b.plug(0, hotplug=False)
    assert b.status(0) == hw.CPUHP_STAT_ENABLED
