"""Exact sum of little-endian u32 words, fast in pure Python.

Why: the Intel checksum rule (facts §1.3) is "the u32 sum of the record is 0 mod 2**32".
``sum(memoryview(b).cast('I'))`` creates one Python int per word and tops out near
200 MB/s, which alone would eat the whole parsing budget. Here the sum S is rebuilt from
two residues that C code computes in bulk:

- ``S mod (2**32 - 1)``: since 2**32 = 1 (mod 2**32 - 1), the integer whose base-2**32
  digits are the words is congruent to S, and so is the sum of the integers of 4 KiB
  pieces; ``int.from_bytes`` per piece, one ``sum`` and a few halving folds of the
  small result reduce it.
- ``S mod 65521``: ``zlib.adler32`` started at 0 yields the byte sum mod 65521 of a buffer;
  the byte lanes ``b[k::4]`` weighted by 256**k give S mod 65521.

The two moduli are coprime, so the Chinese remainder theorem gives S exactly while
S < (2**32 - 1) * 65521, i.e. for up to 65521 words; longer buffers are summed in chunks.
"""

import zlib

_P = 0xFFFFFFFF            # 2**32 - 1
_Q = 65521                 # adler32's prime
_P_INV_Q = pow(_P, -1, _Q)
_CHUNK = 4 * 32768         # words per chunk well below the CRT bound of 65521
_PIECE = 4096              # bytes per integer summed (a multiple of 4)


def _fold(n):
    """Return a value congruent to ``n`` mod 2**32-1, reduced below 2**32-1."""
    bits = n.bit_length()
    while bits > 64:
        half = ((bits + 63) // 64) * 32          # a multiple of 32 bits
        n = (n >> half) + (n & ((1 << half) - 1))
        bits = n.bit_length()
    return n % _P


def _mod_p(view):
    """The u32 word sum of ``view`` (a memoryview) mod 2**32-1: the integer of each
    ``_PIECE``-byte piece is congruent to its word sum, and so is their plain sum, since
    a piece starts at a multiple of 32 bits (one pass of ``int.from_bytes`` and one of
    additions, instead of folding one huge integer level by level)."""
    fb = int.from_bytes
    n = len(view)
    if n <= _PIECE:
        return _fold(fb(view, "little"))
    return _fold(sum(fb(view[i:i + _PIECE], "little") for i in range(0, n, _PIECE)))


def _small_sum(data, view, start, end):
    """Exact word sum of ``data[start:end]`` (at most 65521 words) by the CRT; the byte
    lanes are sliced straight out of ``data``, the pieces read through ``view``."""
    n = _mod_p(view[start:end])
    adler = zlib.adler32
    q = ((adler(data[start:end:4], 0) & 0xFFFF)
         + 256 * (adler(data[start + 1:end:4], 0) & 0xFFFF)
         + 65536 * (adler(data[start + 2:end:4], 0) & 0xFFFF)
         + 16777216 * (adler(data[start + 3:end:4], 0) & 0xFFFF)) % _Q
    return n + _P * (((q - n) * _P_INV_Q) % _Q)


def u32_sum_range(data, start, end, view=None):
    """Exact sum of the u32 words of ``data[start:end]`` (bytes; the span a multiple of
    4 bytes) without copying the span; ``view``: a memoryview of ``data`` to reuse."""
    if (end - start) & 3:
        raise ValueError(f"length {end - start} is not a multiple of 4")
    if view is None:
        view = memoryview(data)
    if end - start <= _CHUNK:
        return _small_sum(data, view, start, end)
    return sum(_small_sum(data, view, i, min(i + _CHUNK, end))
               for i in range(start, end, _CHUNK))


def u32_sum(buf):
    """Exact (unreduced) sum of the little-endian u32 words of ``buf``.

    ``buf`` is bytes-like with a length that is a multiple of 4.
    """
    buf = bytes(buf) if not isinstance(buf, bytes) else buf
    return u32_sum_range(buf, 0, len(buf))


def u32_sum32(buf):
    """Sum of the u32 words of ``buf`` reduced mod 2**32 (0 means "checksum good")."""
    return u32_sum(buf) & 0xFFFFFFFF
