"""Exact sum of little-endian u32 words, fast in pure Python.

Why: the Intel checksum rule (facts §1.3) is "the u32 sum of the record is 0 mod 2**32",
and ``microcode list`` must check every record of a 21 MB file within a few times what
iucode_tool (C) takes. ``sum(memoryview(b).cast('I'))`` creates one Python int per word
(about 200 MB/s); here C loops do the work on big integers instead:

- the buffer is read in pieces of ``_PIECE`` bytes, each turned into one integer ``v``
  by ``int.from_bytes``: its base-2**32 digits are the words;
- ``v & MASK`` keeps the even-numbered words, each now alone in a 64-bit digit. Summing
  those over all pieces never carries out of a 64-bit digit (each digit is a sum of
  fewer than 2**32 values below 2**32), so the total's 64-bit digits are the column sums
  of the even words, and since 2**64 = 1 (mod 2**64 - 1) their sum, the even words'
  sum E, is that total mod 2**64 - 1 (E is below 2**64 - 1);
- the odd words are the rest: (sum of v) - (sum of v & MASK) is 2**32 times the same kind
  of total for the odd words, which gives O the same way;

and S = E + O, exactly, for any length.
"""

_PIECE = 8192              # bytes per integer (a multiple of 8: pieces keep 64-bit digits)
_MASK = int.from_bytes(b"\xff\xff\xff\xff\0\0\0\0" * (_PIECE // 8), "little")
_M64 = (1 << 64) - 1


def _mod_m64(x):
    """``x mod 2**64 - 1`` by folding halves at 64-bit boundaries (2**64 = 1): a long
    division of an 8 KiB integer costs ten times more."""
    bits = x.bit_length()
    while bits > 128:
        half = (bits >> 7) << 6                  # about half, a multiple of 64 bits
        x = (x >> half) + (x & ((1 << half) - 1))
        bits = x.bit_length()
    return x % _M64


def u32_sum_range(data, start, end, view=None):
    """Exact sum of the u32 words of ``data[start:end]`` without copying the span.

    ``data``: bytes-like (bytes, mmap, ...); the span is a multiple of 4 bytes;
    ``view``: a memoryview of ``data`` to reuse.
    """
    if (end - start) & 3:
        raise ValueError(f"length {end - start} is not a multiple of 4")
    if view is None:
        view = memoryview(data)
    fb, mask = int.from_bytes, _MASK
    total = even = 0
    for i in range(start, end, _PIECE):
        v = fb(view[i:min(i + _PIECE, end)], "little")
        total += v
        even += v & mask
    return _mod_m64(even) + _mod_m64((total - even) >> 32)


def u32_sum(buf):
    """Exact (unreduced) sum of the little-endian u32 words of ``buf``.

    ``buf`` is bytes-like with a length that is a multiple of 4.
    """
    view = memoryview(buf).cast("B")
    return u32_sum_range(view, 0, len(view), view)


def u32_sum32(buf):
    """Sum of the u32 words of ``buf`` reduced mod 2**32 (0 means "checksum good")."""
    return u32_sum(buf) & 0xFFFFFFFF
