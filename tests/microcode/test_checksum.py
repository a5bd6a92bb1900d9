import os
import random

import pytest

from harness.microcode.checksum import u32_sum, u32_sum32


def slow_sum(b):
    return sum(memoryview(b).cast("I"))


@pytest.mark.parametrize("n", [0, 4, 48, 1024, 4096, 65520 * 4, 65524 * 4, 300_000])
def test_matches_plain_sum_random(n):
    b = os.urandom(n)
    assert u32_sum(b) == slow_sum(b)
    assert u32_sum32(b) == slow_sum(b) & 0xFFFFFFFF


@pytest.mark.parametrize("fill", [b"\xff", b"\x00", b"\x01", b"\x80"])
def test_extreme_words(fill):
    b = fill * (4 * 70000)              # crosses the chunk boundary, worst-case carries
    assert u32_sum(b) == slow_sum(b)


def test_accepts_memoryview_and_rejects_odd_length():
    b = random.Random(1).randbytes(4000)
    assert u32_sum(memoryview(b)) == slow_sum(b)
    with pytest.raises(ValueError):
        u32_sum(b[:-1])
