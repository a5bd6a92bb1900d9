"""Exact sum of little-endian u32 words, fast in pure Python.

Why: the Intel checksum rule (facts §1.3) is "the u32 sum of the record is 0 mod 2**32".
``sum(memoryview(b).cast('I'))`` creates one Python int per word and tops out near
200 MB/s, which alone would eat the whole parsing budget. Here the sum S is rebuilt from
two residues that C code computes in bulk:

- ``S mod (2**32 - 1)``: since 2**32 = 1 (mod 2**32 - 1), the integer whose base-2**32
  digits are the words is congruent to S.  ``int.from_bytes`` plus halving folds
  (shift + mask + add, all linear C loops) reduce it.
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


def _fold(n):
    """Return a value congruent to ``n`` mod 2**32-1, reduced below 2**32-1."""
    bits = n.bit_length()
    while bits > 64:
        half = ((bits + 63) // 64) * 32          # a multiple of 32 bits
        n = (n >> half) + (n & ((1 << half) - 1))
        bits = n.bit_length()
    return n % _P


def _small_sum(buf):
    n = _fold(int.from_bytes(buf, "little"))
    adler = zlib.adler32
    q = ((adler(buf[0::4], 0) & 0xFFFF)
         + 256 * (adler(buf[1::4], 0) & 0xFFFF)
         + 65536 * (adler(buf[2::4], 0) & 0xFFFF)
         + 16777216 * (adler(buf[3::4], 0) & 0xFFFF)) % _Q
    return n + _P * (((q - n) * _P_INV_Q) % _Q)


def u32_sum(buf):
    """Exact (unreduced) sum of the little-endian u32 words of ``buf``.

    ``buf`` is bytes-like with a length that is a multiple of 4.
    """
    buf = bytes(buf) if not isinstance(buf, bytes) else buf
    if len(buf) & 3:
        raise ValueError(f"length {len(buf)} is not a multiple of 4")
    if len(buf) <= _CHUNK:
        return _small_sum(buf)
    return sum(_small_sum(buf[i:i + _CHUNK]) for i in range(0, len(buf), _CHUNK))


def u32_sum32(buf):
    """Sum of the u32 words of ``buf`` reduced mod 2**32 (0 means "checksum good")."""
    return u32_sum(buf) & 0xFFFFFFFF
