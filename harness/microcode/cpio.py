"""The early-microcode cpio, the combined initrd, and the kernel's cpio scan (facts §3, §4.4).

Why: Linux finds microcode in an *uncompressed* newc archive at the front of the initrd
with ``find_cpio_data`` (lib/earlycpio.c). We write that archive the way
``iucode_tool --write-earlyfw`` does (inodes 101.., dev 3:1, an alignment directory so
the microcode data is 16-byte aligned, whole-KiB padding, mtime = newest update date at
12:00 UTC), so for Intel the output is byte-identical and can be checked against the
oracle. ``find_cpio_data`` is a line-by-line port of the kernel scan, so tests see the
archive exactly as the kernel would: concatenated archives, 4-byte alignment, NUL padding
skipped, ``TRAILER!!!`` stepped over, stop at anything that is not a newc header.
"""

import calendar
import re
from typing import NamedTuple, Optional

from ..newc import NEWC_ALIGN, NEWC_HEADER_SIZE, NEWC_MAGIC, TRAILER_NAME, NewcWriter, align as _align
from ..newc import newc_header as _newc_header
from .amd import parse_amd
from .intel import bcd_date_to_date, parse_intel

S_IFMT = 0o170000
S_IFREG = 0o100000
S_IFDIR = 0o040000
DIR_MODE = S_IFDIR | 0o755
FILE_MODE = S_IFREG | 0o644

INTEL_PATH = "kernel/x86/microcode/GenuineIntel.bin"
AMD_PATH = "kernel/x86/microcode/AuthenticAMD.bin"
MICROCODE_DIRS = ("kernel", "kernel/x86", "kernel/x86/microcode")

# iucode_tool's layout (measured, facts §4.4)
FIRST_INODE = 101
DEV_MAJOR, DEV_MINOR = 3, 1
DATA_ALIGN = 16                   # SDM: MSR 0x79 wants a 16-byte aligned update
ARCHIVE_ALIGN = 1024              # the archive is zero-padded to whole KiB
ALIGN_NAME_TEMPLATE = ".{stem}.align." + "0123456789abcdef" * 4
ALIGN_NAME_PREFERRED_LEN = 32     # iucode_tool's ".enuineIntel.align.0123456789abc"
NOON = 12 * 3600

_HEX_HEADER = re.compile(rb"[0-9A-Fa-f]{%d}" % NEWC_HEADER_SIZE)


def newc_header(name_len_with_nul, *, devmajor=DEV_MAJOR, devminor=DEV_MINOR, **fields):
    """A newc header with iucode_tool's device numbers (3:1) unless told otherwise."""
    return _newc_header(name_len_with_nul, devmajor=devmajor, devminor=devminor, **fields)


class _Writer(NewcWriter):
    """The newc writer with iucode_tool's device numbers as the default."""

    def entry(self, name, data=b"", devmajor=DEV_MAJOR, devminor=DEV_MINOR, **kw):
        super().entry(name, data, devmajor=devmajor, devminor=devminor, **kw)


def _align_dir_name(writer, stem, file_path):
    """Name of an empty directory entry that puts the next file's data on 16 bytes."""
    base = "kernel/x86/microcode/"
    template = ALIGN_NAME_TEMPLATE.format(stem=stem)
    lengths = list(range(ALIGN_NAME_PREFERRED_LEN, len(template) + 1)) + \
        list(range(ALIGN_NAME_PREFERRED_LEN - 1, len(stem) + 2, -1))
    for n in lengths:
        name = base + template[:n]
        probe = _Writer()
        probe.buf = bytearray(writer.buf)
        probe.entry(name, ino=0, mode=DIR_MODE, nlink=2, mtime=0)
        if probe.data_offset_if(file_path) % DATA_ALIGN == 0:
            return name
    raise AssertionError("no alignment name found")  # cannot happen: 16 lengths cover all


def default_mtime(intel=None, amd=None):
    """iucode_tool's rule: the newest update date at 12:00 UTC (0 if none is valid)."""
    dates = []
    if intel:
        dates += [bcd_date_to_date(u.date_bcd) for u in parse_intel(intel, strict=False).updates]
    if not dates and amd:
        dates += [bcd_date_to_date(p.data_code) for p in parse_amd(amd).patches]
    dates = [d for d in dates if d is not None]
    if not dates:
        return 0
    return calendar.timegm(max(dates).timetuple()) + NOON


def build_early_cpio(intel=None, amd=None, *, mtime=None):
    """The uncompressed early-microcode archive.

    ``intel``/``amd``: the GenuineIntel.bin / AuthenticAMD.bin bytes (None to omit).
    With only ``intel`` this equals ``iucode_tool --write-earlyfw`` byte for byte.
    """
    if intel is None and amd is None:
        raise ValueError("nothing to pack: give Intel and/or AMD microcode")
    if mtime is None:
        mtime = default_mtime(intel, amd)
    w = _Writer()
    ino = FIRST_INODE
    for d in MICROCODE_DIRS:
        w.entry(d, ino=ino, mode=DIR_MODE, nlink=2, mtime=mtime)
        ino += 1
    for blob, path, stem in ((amd, AMD_PATH, "uthenticAMD"), (intel, INTEL_PATH, "enuineIntel")):
        if blob is None:
            continue
        if w.data_offset_if(path) % DATA_ALIGN:
            w.entry(_align_dir_name(w, stem, path), ino=ino, mode=DIR_MODE, nlink=2, mtime=mtime)
            ino += 1
        w.entry(path, bytes(blob), ino=ino, mode=FILE_MODE, nlink=1, mtime=mtime)
        ino += 1
    w.entry(TRAILER_NAME, ino=0, mode=0, nlink=1, mtime=0, devmajor=0, devminor=0)
    w.buf += bytes(_align(len(w.buf), ARCHIVE_ALIGN) - len(w.buf))
    return bytes(w.buf)


def build_combined_initrd(early_cpio, main_initramfs):
    """Early archive first (uncompressed, 4-byte padded), then the main initramfs bytes
    (typically compressed), as Documentation/arch/x86/microcode.rst prescribes."""
    early = bytes(early_cpio)
    early += bytes(_align(len(early), NEWC_ALIGN) - len(early))
    return early + bytes(main_initramfs)


class CpioFile(NamedTuple):
    data: bytes
    offset: int       # offset of the file's data in the image


def find_cpio_data(image, path) -> Optional[CpioFile]:
    """Port of Linux ``find_cpio_data`` (lib/earlycpio.c); offsets are from ``image[0]``,
    which the kernel assumes 4-byte aligned (an initrd is page aligned)."""
    image = bytes(image)
    want = path.encode() if isinstance(path, str) else bytes(path)
    p, length = 0, len(image)
    while length > NEWC_HEADER_SIZE:
        if image[p] == 0:
            p += 4                       # NUL padding between archives
            length -= 4
            continue
        hdr = image[p:p + NEWC_HEADER_SIZE]
        if not _HEX_HEADER.fullmatch(hdr):
            return None                  # not hex: e.g. compressed data
        magic = int(hdr[:6], 16)
        if not 0 <= magic - int(NEWC_MAGIC, 16) <= 1:   # newc or newc with CRC
            return None
        f = [int(hdr[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = f[1], f[6], f[11]
        p += NEWC_HEADER_SIZE
        length -= NEWC_HEADER_SIZE
        dptr = _align(p + namesize, NEWC_ALIGN)
        nptr = _align(dptr + filesize, NEWC_ALIGN)
        if nptr > p + length:
            return None                  # buffer overrun
        if ((mode & S_IFMT) == S_IFREG and namesize >= len(want)
                and image[p:p + len(want)] == want):
            return CpioFile(image[dptr:dptr + filesize], dptr)
        length -= nptr - p
        p = nptr
    return None
