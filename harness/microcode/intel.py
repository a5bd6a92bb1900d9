"""Intel microcode updates: parse, validate and build (facts §1).

Why: GenuineIntel.bin and intel-ucode/FF-MM-SS files are plain concatenations of updates.
Linux refuses the *whole* blob if one record or one trailing byte is bad (facts §1.6), so
the harness needs a validator that is at least as strict as the kernel and that explains
every defect precisely. The parser never raises on file content: it returns the
updates it could verify and a list of ``Defect`` objects, resynchronising after a damaged
record so the good updates behind it are still found.

Validation (``parse_intel``):

- kernel rules (``intel_microcode_sanity_check``, facts §1.4): header version 1, loader
  revision 1, data size a multiple of 4 and within the total, extended area either empty
  or 20 + 12·count bytes, header+data sum 0, extended table sum 0, every entry checksum;
- strict rules (iucode_tool's default ``--strict-checks``, facts §4.1): total a multiple
  of 1 KiB and a valid BCD date. With ``strict=False`` they become warnings and the
  update is kept. pf bits 31:8 set, or a nonzero total size next to a zero data size, are
  always only warnings: neither Linux nor iucode_tool 2.3.1 rejects them (measured).
- The reserved words (``metasize``, ``min_req_ver``) are data, kept, never rejected.
"""

import mmap
import struct
from collections import namedtuple

from .checksum import u32_sum, u32_sum32, u32_sum_range
from .defects import Defect, DefectVerdicts, MicrocodeError

# --- format constants (facts §1.1-§1.3) ---------------------------------------------
HEADER_SIZE = 48
HEADER_FMT = struct.Struct("<12I")
HEADER_VERSION_MICROCODE = 1      # MC_HEADER_TYPE_MICROCODE (2 = IFS)
LOADER_REVISION = 1
DEFAULT_DATA_SIZE = 2000          # data size field 0 means 2000 bytes ...
DEFAULT_TOTAL_SIZE = 2048         # ... and a total of 2048
SIZE_GRANULARITY = 1024           # SDM: updates are whole KiB (strict mode)
EXT_HEADER_SIZE = 20              # count, checksum, 12 reserved bytes
EXT_HEADER_FMT = struct.Struct("<II")
EXT_ENTRY_SIZE = 12               # signature, pf mask, checksum
EXT_ENTRY_FMT = struct.Struct("<III")
PF_RESERVED_MASK = 0xFFFFFF00     # processor flags use bits 7:0 only
U32 = 0xFFFFFFFF

# header field offsets, used to report defects at the exact byte
OFF_HDRVER, OFF_REV, OFF_DATE, OFF_SIG, OFF_CKSUM, OFF_LDRVER = 0, 4, 8, 12, 16, 20
OFF_PF, OFF_DATASIZE, OFF_TOTALSIZE, OFF_RESERVED = 24, 28, 32, 36
_HDRVER_BYTES = HEADER_VERSION_MICROCODE.to_bytes(4, "little")


# Records are named tuples, not dataclasses: the ``microcode`` command imports this module
# on every run, and ``dataclasses`` (with ``inspect``) plus one ``exec`` per class cost
# more than parsing a file.

class ExtSignature(namedtuple("ExtSignature", "signature pf_mask checksum")):
    __slots__ = ()


_UPDATE_FIELDS = (
    "offset",             # file offset of the header
    "header_version", "revision", "date_bcd", "signature", "checksum", "loader_revision",
    "pf_mask",
    "data_size_field",    # as stored (0 means 2000)
    "total_size_field",   # as stored (0 when data size is 0)
    "reserved",           # (metasize, min_req_ver, reserved)
    "ext_checksum",       # None without an extended table
    "ext_signatures",     # tuple of ExtSignature
    "raw",                # the whole update
    "source")             # file name or None


class IntelUpdate(namedtuple("IntelUpdate", _UPDATE_FIELDS, defaults=(None,))):
    """One verified (or, in loose mode, tolerated) Intel microcode update."""

    __slots__ = ()

    def __repr__(self):
        return (f"IntelUpdate(offset=0x{self.offset:x}, sig=0x{self.signature:x}, "
                f"pf=0x{self.pf_mask:x}, rev=0x{self.revision:x}, {self.date}, "
                f"size={self.total_size}, source={self.source!r})")

    @property
    def data_size(self):
        return self.data_size_field or DEFAULT_DATA_SIZE

    @property
    def total_size(self):
        return self.total_size_field if self.data_size_field else DEFAULT_TOTAL_SIZE

    @property
    def metasize(self):
        """reserved[0]: ``metasize`` of IFS images (Linux 6.2+)."""
        return self.reserved[0]

    @property
    def min_req_ver(self):
        """reserved[1]: minimum current revision for late loading (Linux 6.7+, facts §1.8)."""
        return self.reserved[1]

    @property
    def data(self):
        return self.raw[HEADER_SIZE:HEADER_SIZE + self.data_size]

    @property
    def date(self):
        """``YYYY-MM-DD`` formatted from the BCD digits, as the kernel and iucode_tool print it."""
        return format_bcd_date(self.date_bcd)

    @property
    def signatures(self):
        """Distinct (signature, pf_mask) pairs covered: primary first, then the table."""
        pairs = [(self.signature, self.pf_mask)]
        for e in self.ext_signatures:
            if (e.signature, e.pf_mask) not in pairs:
                pairs.append((e.signature, e.pf_mask))
        return pairs

    @property
    def key(self):
        """Identity for de-duplication: (sig, pf, rev) plus the whole payload."""
        return (self.signature, self.pf_mask, self.revision, self.raw)


class IntelParseResult(DefectVerdicts):
    """The updates of a blob that passed validation, in file order, and every defect."""

    def __init__(self, updates, defects, size, source=None):
        self.updates, self.defects, self.size, self.source = updates, defects, size, source

    def __repr__(self):
        return (f"IntelParseResult({len(self.updates)} updates, {len(self.defects)} defects, "
                f"size={self.size}, source={self.source!r})")


# --- dates ---------------------------------------------------------------------------

def format_bcd_date(bcd):
    """BCD mmddyyyy → ``YYYY-MM-DD`` (digits shown as hex, like the kernel's %04x-%02x-%02x)."""
    return f"{bcd & 0xFFFF:04x}-{bcd >> 24:02x}-{(bcd >> 16) & 0xFF:02x}"


def _bcd_value(v, digits):
    out = 0
    for i in reversed(range(digits)):
        d = (v >> (4 * i)) & 0xF
        if d > 9:
            return None
        out = out * 10 + d
    return out


_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _ymd(bcd):
    """(year, month, day) of a BCD mmddyyyy word if it is a calendar date (years 1..9999,
    Gregorian leap years), else None; no ``datetime`` import for the parser's sake."""
    y, m, d = _bcd_value(bcd & 0xFFFF, 4), _bcd_value(bcd >> 24, 2), _bcd_value((bcd >> 16) & 0xFF, 2)
    if None in (y, m, d) or not y or not 1 <= m <= 12 or d < 1:
        return None
    leap = m == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    return (y, m, d) if d <= _DAYS[m - 1] + leap else None


def bcd_date_valid(bcd):
    return _ymd(bcd) is not None


def bcd_date_to_date(bcd):
    """The calendar date of a BCD mmddyyyy word, or None if it is not a valid date."""
    ymd = _ymd(bcd)
    if ymd is None:
        return None
    import datetime
    return datetime.date(*ymd)


def date_to_bcd(value):
    """Accept ``datetime.date``, ``'YYYY-MM-DD'`` or a raw BCD int; return the BCD word."""
    import datetime
    if isinstance(value, int):
        return value & U32
    if isinstance(value, str):
        value = datetime.date.fromisoformat(value)
    if isinstance(value, datetime.date):
        return int(f"{value.month:02d}{value.day:02d}{value.year:04d}", 16)
    raise MicrocodeError(f"cannot use {value!r} as a microcode date")


# --- parsing -------------------------------------------------------------------------

class _Record:
    """Scratch result of checking one header position."""

    __slots__ = ("update", "defects", "size", "structural")

    def __init__(self):
        self.update = None
        self.defects = []
        self.size = 0            # trusted record size (0: unknown, must resync)
        self.structural = False  # the size fields themselves cannot be trusted


def _check_record(data, pos, strict, source, view=None, zero_copy=False):
    """Validate the record at ``pos``; never raises on content."""
    rec = _Record()
    end = len(data)
    hdr = HEADER_FMT.unpack_from(data, pos)
    hdrver, rev, date, sig, cksum, ldrver, pf, ds, ts, r0, r1, r2 = hdr

    def bad(off, name, expected, found, fatal=True, structural=False):
        rec.defects.append(Defect(pos + off, name, expected, found, record=pos,
                                  fatal=fatal, source=source))
        if structural:
            rec.structural = True

    if hdrver != HEADER_VERSION_MICROCODE:
        bad(OFF_HDRVER, "header version", str(HEADER_VERSION_MICROCODE), f"0x{hdrver:x}",
            structural=True)
    if ldrver != LOADER_REVISION:
        bad(OFF_LDRVER, "loader revision", str(LOADER_REVISION), f"0x{ldrver:x}",
            structural=True)
    data_size = ds or DEFAULT_DATA_SIZE
    total = ts if ds else DEFAULT_TOTAL_SIZE
    if ds & 3:
        bad(OFF_DATASIZE, "data size", "a multiple of 4", str(ds), structural=True)
    if ds and ts & 3:
        bad(OFF_TOTALSIZE, "total size", "a multiple of 4", str(ts), structural=True)
    if HEADER_SIZE + data_size > total:
        bad(OFF_TOTALSIZE, "total size", f">= {HEADER_SIZE + data_size} (header + data size)",
            str(total), structural=True)
    if rec.structural:
        return rec
    if pos + total > end:
        bad(OFF_TOTALSIZE, "total size", f"<= {end - pos} (bytes left in file)",
            f"{total} (record truncated)", structural=True)
        return rec
    rec.size = total

    # --- extended signature table geometry (kernel rules 3 and 4) ---
    ext_len = total - HEADER_SIZE - data_size
    ext_sigs = ()
    ext_cksum = None
    ext_off = pos + HEADER_SIZE + data_size
    if ext_len:
        if ext_len < EXT_HEADER_SIZE or (ext_len - EXT_HEADER_SIZE) % EXT_ENTRY_SIZE:
            bad(OFF_TOTALSIZE, "extended signature table size",
                "0 or 20 + 12*n bytes after the data", f"{ext_len} bytes")
        else:
            count, ext_cksum = EXT_HEADER_FMT.unpack_from(data, ext_off)
            want = EXT_HEADER_SIZE + EXT_ENTRY_SIZE * count
            if want != ext_len:
                bad(ext_off - pos, "extended signature count",
                    f"{(ext_len - EXT_HEADER_SIZE) // EXT_ENTRY_SIZE} (from total size)",
                    str(count))
            else:
                table = data[ext_off:ext_off + ext_len]
                s = u32_sum32(table)
                if s:
                    bad(ext_off + 4 - pos, "extended table checksum",
                        f"0x{(ext_cksum - s) & U32:08x}", f"0x{ext_cksum:08x}")
                entries = []
                base = (sig + pf + cksum) & U32
                for i in range(count):
                    eo = ext_off + EXT_HEADER_SIZE + i * EXT_ENTRY_SIZE
                    esig, epf, ecks = EXT_ENTRY_FMT.unpack_from(data, eo)
                    if (base - (esig + epf + ecks)) & U32:
                        bad(eo + 8 - pos, f"extended signature {i} checksum",
                            f"0x{(base - esig - epf) & U32:08x}", f"0x{ecks:08x}")
                    if epf & PF_RESERVED_MASK:
                        bad(eo + 4 - pos, f"extended signature {i} pf mask",
                            "bits 31:8 clear", f"0x{epf:08x}", fatal=False)
                    entries.append(ExtSignature(esig, epf, ecks))
                ext_sigs = tuple(entries)

    # --- main checksum (kernel rule 6) ---
    s = u32_sum_range(data, pos, pos + HEADER_SIZE + data_size, view) & U32
    if s:
        bad(OFF_CKSUM, "checksum", f"0x{(cksum - s) & U32:08x}", f"0x{cksum:08x}")

    # --- strict checks (iucode_tool --strict-checks) ---
    if total % SIZE_GRANULARITY:
        bad(OFF_TOTALSIZE, "total size", f"a multiple of {SIZE_GRANULARITY}", str(total),
            fatal=strict)
    if not ds and ts:
        bad(OFF_TOTALSIZE, "total size", "0 (data size is 0)", str(ts), fatal=False)
    if not bcd_date_valid(date):
        bad(OFF_DATE, "date", "a valid BCD mmddyyyy date", f"0x{date:08x}", fatal=strict)
    if pf & PF_RESERVED_MASK:
        bad(OFF_PF, "processor flags", "bits 31:8 clear", f"0x{pf:08x}", fatal=False)

    if not any(d.fatal for d in rec.defects):
        rec.update = IntelUpdate(pos, hdrver, rev, date, sig, cksum, ldrver, pf, ds, ts,
                                 (r0, r1, r2), ext_cksum, ext_sigs,
                                 view[pos:pos + total] if zero_copy else data[pos:pos + total],
                                 source)
    return rec


def _resync(data, start, strict, source):
    """Next offset >= start where a fully valid record begins, or None."""
    find = data.find
    end = len(data) - HEADER_SIZE
    p = find(_HDRVER_BYTES, start)
    while 0 <= p <= end:
        if data[p + OFF_LDRVER:p + OFF_LDRVER + 4] == _HDRVER_BYTES:
            rec = _check_record(data, p, strict, source)
            if rec.update is not None:
                return p
        p = find(_HDRVER_BYTES, p + 1)
    return None


def parse_intel(data, *, strict=True, source=None):
    """Parse a concatenation of Intel updates (a GenuineIntel.bin or FF-MM-SS file).

    Returns an ``IntelParseResult``: the updates that passed validation, in file order,
    and every defect. After a rejected record whose size fields are sane, parsing goes on
    right after it; otherwise it searches forward for the next valid header and reports
    the skipped span. Fewer than 48 trailing bytes are reported (Linux rejects them).

    ``data`` may be a read-only ``mmap``: it is then parsed in place and each update's
    ``raw`` is a memoryview into the map (no copy; keep the map open while it is used).
    """
    mapped = isinstance(data, mmap.mmap)
    if not mapped and not isinstance(data, bytes):
        data = bytes(data)
    updates, defects = [], []
    pos, end = 0, len(data)
    view = memoryview(data)
    while pos < end:
        if end - pos < HEADER_SIZE:
            defects.append(Defect(pos, "trailing data", "end of file or a 48-byte header",
                                  f"{end - pos} stray bytes", source=source))
            break
        rec = _check_record(data, pos, strict, source, view, mapped)
        defects.extend(rec.defects)
        if rec.update is not None:
            updates.append(rec.update)
            pos += rec.size
            continue
        if rec.size and not rec.structural:
            nxt = pos + rec.size
            # trust the size if it lands on the end or on a valid record
            if nxt == end or (end - nxt >= HEADER_SIZE
                              and _check_record(data, nxt, strict, source).update is not None):
                pos = nxt
                continue
        nxt = _resync(data, pos + 1, strict, source)
        stop = end if nxt is None else nxt
        defects.append(Defect(pos, "unparseable data", "a valid microcode header",
                              f"{stop - pos} bytes skipped up to offset 0x{stop:x}"
                              + ("" if nxt is not None else " (end of file)"),
                              record=pos, source=source))
        if nxt is None:
            break
        pos = nxt
    return IntelParseResult(updates, defects, end, source)


def iter_updates(data, *, strict=True, source=None):
    """The valid updates of ``data`` (defects dropped): convenience for listing."""
    return parse_intel(data, strict=strict, source=source).updates


# --- building ------------------------------------------------------------------------

def recompute_checksums(raw):
    """Return ``raw`` (one update) with the main, table and entry checksums made valid.

    Tests use it to build updates that are correct except for one deliberate defect.
    """
    buf = bytearray(raw)
    hdr = HEADER_FMT.unpack_from(buf, 0)
    ds, ts = hdr[7], hdr[8]
    data_size = ds or DEFAULT_DATA_SIZE
    total = ts if ds else DEFAULT_TOTAL_SIZE
    struct.pack_into("<I", buf, OFF_CKSUM, 0)
    main = (-u32_sum(buf[:HEADER_SIZE + data_size])) & U32
    struct.pack_into("<I", buf, OFF_CKSUM, main)
    ext_off = HEADER_SIZE + data_size
    if total - ext_off >= EXT_HEADER_SIZE and total <= len(buf):
        count = struct.unpack_from("<I", buf, ext_off)[0]
        base = (hdr[3] + hdr[6] + main) & U32
        for i in range(count):
            eo = ext_off + EXT_HEADER_SIZE + i * EXT_ENTRY_SIZE
            if eo + EXT_ENTRY_SIZE > total:
                break
            esig, epf = struct.unpack_from("<II", buf, eo)
            struct.pack_into("<I", buf, eo + 8, (base - esig - epf) & U32)
        struct.pack_into("<I", buf, ext_off + 4, 0)
        tsum = u32_sum(buf[ext_off:total])
        struct.pack_into("<I", buf, ext_off + 4, (-tsum) & U32)
    return bytes(buf)


def build_update(signature, pf_mask, revision, date="2024-01-01", data=None, ext_sigs=(),
                 *, total_size=None, datasize_zero=False, reserved=(0, 0, 0),
                 header_version=HEADER_VERSION_MICROCODE, loader_revision=LOADER_REVISION,
                 seed=None):
    """Build one valid Intel update with correct checksums.

    ``data``: payload bytes (a multiple of 4); by default deterministic pseudo-random
    bytes sized so that the total is ``total_size`` (default: the smallest whole KiB).
    ``ext_sigs``: iterable of (signature, pf_mask) for the extended table.
    ``datasize_zero``: write data size 0 and total size 0 (old P4 style); the payload is
    then exactly 2000 bytes and no table is allowed.
    """
    ext_sigs = [tuple(e) for e in ext_sigs]
    ext_len = EXT_HEADER_SIZE + EXT_ENTRY_SIZE * len(ext_sigs) if ext_sigs else 0
    if datasize_zero:
        if ext_sigs:
            raise MicrocodeError("an update with data size 0 cannot carry an extended table")
        want = DEFAULT_DATA_SIZE
    elif data is None:
        if total_size is None:
            total_size = -(-(HEADER_SIZE + ext_len + 16) // SIZE_GRANULARITY) * SIZE_GRANULARITY
        want = total_size - HEADER_SIZE - ext_len
        if want <= 0 or want & 3:
            raise MicrocodeError(f"total size {total_size} leaves no room for data")
    else:
        want = len(data)
    if data is None:
        import random
        rng = random.Random(seed if seed is not None else f"{signature}:{pf_mask}:{revision}")
        data = rng.randbytes(want)
    data = bytes(data)
    if len(data) != want or len(data) & 3:
        raise MicrocodeError(f"data must be {want} bytes and a multiple of 4, got {len(data)}")
    ds = 0 if datasize_zero else len(data)
    ts = 0 if datasize_zero else HEADER_SIZE + len(data) + ext_len
    hdr = HEADER_FMT.pack(header_version, revision & U32, date_to_bcd(date), signature & U32,
                          0, loader_revision, pf_mask & U32, ds, ts, *reserved)
    ext = b""
    if ext_sigs:
        ext = EXT_HEADER_FMT.pack(len(ext_sigs), 0) + bytes(12) + b"".join(
            EXT_ENTRY_FMT.pack(s & U32, p & U32, 0) for s, p in ext_sigs)
    return recompute_checksums(hdr + data + ext)
