"""The SVR4 "newc" cpio format, as Linux unpacks it (initramfs) and scans it (early
microcode): a 110-byte ASCII header, the NUL-terminated name and the data, each padded
to 4 bytes, and a ``TRAILER!!!`` entry (Documentation/driver-api/early-userspace/
buffer-format.rst; usr/gen_init_cpio.c; lib/earlycpio.c).

Why a module: the guest image's initramfs (:mod:`harness.qemu.image.initramfs`) and the
early-microcode archive (:mod:`harness.microcode.cpio`) are both newc archives. The
header layout and the padding are written here once; each caller decides its own
inode numbers, modes and times (the microcode archive must match ``iucode_tool``'s
byte for byte). No imports beyond the standard library, so the lean microcode command
stays lean.
"""

import logging
import os
import stat

_log = logging.getLogger(__name__)

NEWC_MAGIC = b"070701"
NEWC_CRC_MAGIC = b"070702"        # the same layout with a checksum in the check field
NEWC_MAGICS = (NEWC_MAGIC, NEWC_CRC_MAGIC)
NEWC_HEADER_SIZE = 110            # 6 + 13 * 8 ASCII characters
NEWC_ALIGN = 4
TRAILER_NAME = "TRAILER!!!"


def align(n, a):
    """``n`` rounded up to a multiple of ``a`` (a power of two)."""
    return (n + a - 1) & -a


def newc_header(name_len_with_nul, *, ino, mode, nlink, mtime, filesize,
                devmajor=0, devminor=0, rdevmajor=0, rdevminor=0):
    """One header: magic and 13 fields of 8 upper-case hex digits (uid, gid and the
    check field are always 0 here)."""
    fields = (ino, mode, 0, 0, nlink, mtime, filesize, devmajor, devminor,
              rdevmajor, rdevminor, name_len_with_nul, 0)
    return NEWC_MAGIC + "".join(f"{v:08X}" for v in fields).encode()


class NewcWriter:
    """Appends entries to ``buf``: header + name, padded, then data, padded."""

    def __init__(self):
        self.buf = bytearray()

    def entry(self, name, data=b"", **header):
        name_b = name.encode() + b"\0"
        self.buf += newc_header(len(name_b), filesize=len(data), **header) + name_b
        self.buf += bytes(align(len(self.buf), NEWC_ALIGN) - len(self.buf))
        self.buf += data
        self.buf += bytes(align(len(self.buf), NEWC_ALIGN) - len(self.buf))

    def data_offset_if(self, name):
        """Offset the data of an entry named ``name`` would start at."""
        return align(len(self.buf) + NEWC_HEADER_SIZE + len(name) + 1, NEWC_ALIGN)


class TreeWriter:
    """A file tree as a newc archive, the way an initramfs is built: parents created on
    demand, a name written once (the first wins), inodes counted from 300001, times 0."""

    FIRST_INODE = 300001

    def __init__(self):
        self._w = NewcWriter()
        self._ino = self.FIRST_INODE - 1
        self._names = set()

    def _entry(self, name, mode, data=b"", nlink=1, rdev=(0, 0)):
        name = name.lstrip("/") or "."
        if name in self._names:
            return
        self._names.add(name)
        self._ino += 1
        self._w.entry(name, data, ino=self._ino, mode=mode, nlink=nlink, mtime=0,
                      rdevmajor=rdev[0], rdevminor=rdev[1])

    def dir(self, name, mode=0o755):
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self._entry("/".join(parts[:i]), stat.S_IFDIR | mode, nlink=2)

    def _parent(self, name):
        parent = os.path.dirname(name.strip("/"))
        if parent:
            self.dir(parent)

    def file(self, name, data, mode=0o644):
        self._parent(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name, target):
        self._parent(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name, major, minor, mode=0o600):
        self._parent(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self):
        self._entry(TRAILER_NAME, 0, nlink=1)
        return bytes(self._w.buf)
