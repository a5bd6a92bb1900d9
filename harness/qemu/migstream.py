"""A parser of QEMU's migration stream (file format version 3, magic ``QEVM``).

What a plain ``migrate exec:cat > FILE`` of QEMU 7.2 .. 11.1 writes, in order::

    be32 0x5145564d 'QEVM', be32 version (3)
    0x07 QEMU_VM_CONFIGURATION  be32 len, machine name, [subsections]   (no footer)
    0x01 SECTION_START  be32 section_id, u8 len, idstr, be32 instance_id, be32 version_id
         (iterable sections: 'ram'), body, [0x7e footer: be32 section_id]
    0x02 SECTION_PART / 0x03 SECTION_END  be32 section_id, body, [footer]
    0x04 SECTION_FULL   like START: one device's VMState, [footer]
    0x08 COMMAND        be16 cmd, be16 len, data (no footer); QEMU 10.0+ machine
                        types send SWITCHOVER_START (cmd 0x0b, len 0) before the RAM
                        END section (commit 4e55cb3cde)
    0x00 EOF
    0x06 VMDESCRIPTION  be32 len, JSON {"page_size": N, "devices": [...]}; QEMU 8.2+
                        writes {"configuration": {...}, "page_size": N, "devices": ...}

Field descriptions of QEMU 10.0+ may name a field twice in a row (an array of
pointers split around NULL elements, commit 35049eb0d2) and use type ``nullptr``
(one byte 0x30, commit f52965bf0e): each entry is walked by its own size; a name's
first entry is the one registered.

The body of a device (FULL) section is a VMState: its fields back to back (big
endian integers, raw buffers), then optional subsections, each ``0x05, u8 len, name,
be32 version`` followed by the subsection's own fields and subsections. Nothing in the
binary says how long a field is: the JSON description at the end of the stream does
(one entry per FULL section, in stream order, with every field's name, type and size,
``array_len`` for compressed arrays, ``index`` for per-element entries, ``struct`` for
nested VMStates and ``subsections``). This module takes every offset and size from that
description; nothing about a device's layout is hard-coded.

The RAM section body is a list of records: be64 ``address | flags`` (flags in the bits
below the page size), then, unless ``CONTINUE`` is set, ``u8 len, block idstr``:

==========  =====  =================================================
flag        value  payload
==========  =====  =================================================
ZERO        0x002  one fill byte (formerly "COMPRESS")
MEM_SIZE    0x004  address = total RAM bytes, then per RAM block:
                   ``u8 len, idstr, be64 used_length`` (+ be64 mr address
                   with capability ``x-ignore-shared``)
PAGE        0x008  one page of page_size bytes
EOS         0x010  end of this section body
CONTINUE    0x020  same block as the previous record: no idstr
XBZRLE      0x040  u8 encoding flag, be16 len, data
HOOK        0x080  RDMA only (rejected)
COMPRESS    0x100  be32 len, zlib data
MULTIFD_FL  0x200  no payload (QEMU 8.x+)
==========  =====  =================================================

Pages are never copied: the file is mmap'ed and only record headers are read.

Any structural problem raises :class:`harness.errors.BackendError` naming the file and
the byte offset.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass, field as dc_field

from harness.errors import BackendError

QEMU_VM_FILE_MAGIC = 0x5145564D
QEMU_VM_FILE_VERSION = 3

QEMU_VM_EOF = 0x00
QEMU_VM_SECTION_START = 0x01
QEMU_VM_SECTION_PART = 0x02
QEMU_VM_SECTION_END = 0x03
QEMU_VM_SECTION_FULL = 0x04
QEMU_VM_SUBSECTION = 0x05
QEMU_VM_VMDESCRIPTION = 0x06
QEMU_VM_CONFIGURATION = 0x07
QEMU_VM_COMMAND = 0x08
QEMU_VM_SECTION_FOOTER = 0x7E

SECTION_KINDS = {
    QEMU_VM_SECTION_START: "start",
    QEMU_VM_SECTION_PART: "part",
    QEMU_VM_SECTION_END: "end",
    QEMU_VM_SECTION_FULL: "full",
}

RAM_SAVE_FLAG_FULL = 0x01
RAM_SAVE_FLAG_ZERO = 0x02
RAM_SAVE_FLAG_MEM_SIZE = 0x04
RAM_SAVE_FLAG_PAGE = 0x08
RAM_SAVE_FLAG_EOS = 0x10
RAM_SAVE_FLAG_CONTINUE = 0x20
RAM_SAVE_FLAG_XBZRLE = 0x40
RAM_SAVE_FLAG_HOOK = 0x80
RAM_SAVE_FLAG_COMPRESS_PAGE = 0x100
RAM_SAVE_FLAG_MULTIFD_FLUSH = 0x200

# integer field types of the VMSD description ("int32 le" etc. are little endian)
_INT_TYPES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "timer", "int32 equal", "int32 le", "uint8 equal", "uint16 equal", "uint32 equal",
    "uint64 equal", "uint8 from uint16", "uint16 from uint8", "uint32 from uint8",
    "int32 as uint32", "int64 as uint64", "cpu_common_ticks",
}
_SIGNED_TYPES = {"int8", "int16", "int32", "int64", "int32 equal", "int32 le", "timer"}

_BE64 = struct.Struct(">Q")
_BE32 = struct.Struct(">I")
_BE16 = struct.Struct(">H")

_MISSING = object()


@dataclass
class Field:
    """One leaf (or whole array / struct) of a device section."""
    name: str
    type: str
    offset: int          # absolute byte offset in the file
    size: int            # total bytes (all elements for an array)
    elem_size: int = 0   # element size for arrays, else == size
    count: int = 1       # number of elements (array_len), 1 for scalars


@dataclass
class Section:
    """A device (FULL) section: one VMState instance."""
    kind: str            # "full" (device) or "start"/"part"/"end" (iterables)
    section_id: int
    name: str            # idstr, e.g. "cpu", "0000:00:00.0/mch"
    instance_id: int | None
    version_id: int | None
    offset: int          # offset of the section's type byte
    body_offset: int
    body_size: int
    vmsd_name: str | None = None
    fields: dict = dc_field(default_factory=dict, repr=False)   # name -> Field
    subsections: list = dc_field(default_factory=list)          # present subsection names
    _buf: object = dc_field(default=None, repr=False, compare=False)

    # -- access --------------------------------------------------------------------
    @property
    def raw(self) -> bytes:
        """The section body (fields and subsections), copied."""
        return bytes(self._buf[self.body_offset:self.body_offset + self.body_size])

    def has(self, name) -> bool:
        return self._lookup(name) is not None

    def _lookup(self, name):
        f = self.fields.get(name)
        if f is not None:
            return f
        # "array[i]" of a compressed scalar array
        if name.endswith("]") and "[" in name:
            base, _, idx = name[:-1].rpartition("[")
            arr = self.fields.get(base)
            if arr is not None and arr.count > 1 and idx.isdigit():
                i = int(idx)
                if i >= arr.count:
                    return None
                return Field(name, arr.type, arr.offset + i * arr.elem_size,
                             arr.elem_size, arr.elem_size, 1)
        return None

    def field_info(self, name) -> Field:
        f = self._lookup(name)
        if f is None:
            raise KeyError(f"section {self.name!r} instance {self.instance_id}: "
                           f"no field {name!r}")
        return f

    def bytes(self, name) -> bytes:
        """The raw bytes of a field (all elements of an array, a whole struct)."""
        f = self.field_info(name)
        return bytes(self._buf[f.offset:f.offset + f.size])

    def field(self, name, default=_MISSING):
        """A field's value: ``int`` for integer types (stream byte order, i.e. big
        endian unless the type says ``le``), ``bytes`` for anything else.
        Subsection fields share the section's namespace (``env.msr_smi_count``);
        struct members are ``outer.inner``; array elements ``name[i]``.
        ``default`` is returned for a field that is absent (e.g. subsection not sent)."""
        f = self._lookup(name)
        if f is None:
            if default is not _MISSING:
                return default
            raise KeyError(f"section {self.name!r} instance {self.instance_id}: "
                           f"no field {name!r}")
        data = bytes(self._buf[f.offset:f.offset + f.size])
        if f.type in _INT_TYPES and f.count == 1 and f.size in (1, 2, 4, 8):
            order = "little" if f.type.endswith(" le") else "big"
            return int.from_bytes(data, order, signed=f.type in _SIGNED_TYPES)
        return data

    def field_le(self, name, offset, size):
        """A little-endian integer at ``offset`` inside a buffer field (PCI config)."""
        f = self.field_info(name)
        if offset < 0 or offset + size > f.size:
            raise KeyError(f"{name}: bytes {offset}..{offset + size} outside field "
                           f"of {f.size} bytes")
        start = f.offset + offset
        return int.from_bytes(self._buf[start:start + size], "little")


@dataclass
class RamBlock:
    name: str
    length: int
    pages: int = 0        # PAGE records (full page data in the stream)
    zero_pages: int = 0   # ZERO records
    other_pages: int = 0  # XBZRLE / compressed records


@dataclass
class Stream:
    path: str
    size: int
    version: int
    machine: str | None
    capabilities: list
    page_size: int
    ram_blocks: dict            # name -> RamBlock
    sections: list              # device (FULL) sections in stream order
    iterable: dict              # section_id -> idstr of START sections (e.g. "ram")
    vmdesc: dict = dc_field(repr=False)
    iterable_sections: list = dc_field(default_factory=list)  # START sections
    parts: int = 0              # PART + END records read
    vmdesc_offset: int = 0
    ram_spans: list = dc_field(default_factory=list, repr=False)   # page records

    def find(self, name, instance_id=None) -> list:
        return [s for s in self.sections
                if s.name == name and (instance_id is None or s.instance_id == instance_id)]

    def section(self, name, instance_id=0, default=_MISSING) -> Section:
        for s in self.sections:
            if s.name == name and s.instance_id == instance_id:
                return s
        if default is not _MISSING:
            return default
        raise KeyError(f"{self.path}: no section {name!r} instance {instance_id}")

    def section_names(self) -> list:
        return [(s.name, s.instance_id) for s in self.sections]


class _Reader:
    def __init__(self, path, buf, size):
        self.path, self.buf, self.size, self.pos = path, buf, size, 0
        self.what = "stream"

    def fail(self, msg, at=None):
        at = self.pos if at is None else at
        raise BackendError(f"migration stream {self.path}: {msg} at offset {at} "
                           f"(0x{at:x}) of {self.size} bytes")

    def need(self, n, what):
        if n < 0 or self.pos + n > self.size:
            self.fail(f"truncated: need {n} bytes for {what}, "
                      f"{max(0, self.size - self.pos)} left")

    def u8(self, what):
        self.need(1, what)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def be16(self, what):
        self.need(2, what)
        v = _BE16.unpack_from(self.buf, self.pos)[0]
        self.pos += 2
        return v

    def be32(self, what):
        self.need(4, what)
        v = _BE32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return v

    def be64(self, what):
        self.need(8, what)
        v = _BE64.unpack_from(self.buf, self.pos)[0]
        self.pos += 8
        return v

    def idstr(self, what):
        at = self.pos
        n = self.u8(what + " length")
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            s = raw.decode("ascii")
        except UnicodeDecodeError:
            self.fail(f"garbled {what} {raw!r}", at)
        if not s.isprintable():
            self.fail(f"garbled {what} {raw!r}", at)
        return s

    def skip(self, n, what):
        self.need(n, what)
        self.pos += n


def parse_stream(path) -> Stream:
    """Parse a migration stream file. Raises BackendError on any malformation."""
    path = os.fspath(path)
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise BackendError(f"migration stream {path}: cannot open: {e}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise BackendError(f"migration stream {path}: empty file at offset 0")
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    r = _Reader(path, buf, size)
    try:
        stream = _parse(r)
        # Copy the small non-RAM parts out of the map so that nothing refers to the
        # file after this returns (the file may be overwritten by the next snapshot).
        for sec in stream.iterable_sections + stream.sections:
            sec._buf = _Window(buf, sec.body_offset, sec.body_size)
        return stream
    except BackendError:
        raise
    except (IndexError, KeyError, TypeError, ValueError, AttributeError,
            struct.error, RecursionError) as e:
        r.fail(f"malformed ({type(e).__name__}: {e})")
    finally:
        buf.close()


class _Window:
    """A copy of ``size`` bytes that starts at file offset ``base``, sliced with
    absolute file offsets."""
    __slots__ = ("data", "base")

    def __init__(self, buf, base, size):
        self.data, self.base = bytes(buf[base:base + size]), base

    def __getitem__(self, sl):
        return self.data[sl.start - self.base:sl.stop - self.base]


# --- the walk ---------------------------------------------------------------------

def _find_vmdesc(r):
    """Locate the trailing QEMU_VM_VMDESCRIPTION record: ``0x06, be32 len, JSON`` that
    ends exactly at end of file. Returns (record offset, parsed JSON).

    Found by its framing, not by the JSON's first key: QEMU 8.2 put ``configuration``
    before ``page_size`` (commit 2aae1eb8da, "migration: Add the configuration vmstate
    to the json writer"). Valid JSON holds no raw control byte, so the record's 0x06 is
    the last one in the file unless a byte of its own length field is 0x06 too."""
    buf, size = r.buf, r.size
    start = max(0, size - (64 << 20))
    p = buf.rfind(b"\x06", start)
    while p >= 0 and p + 5 < size:
        if _BE32.unpack_from(buf, p + 1)[0] == size - p - 5 and buf[p + 5] == ord("{"):
            try:
                desc = json.loads(bytes(buf[p + 5:size]))
            except ValueError as e:
                r.fail(f"garbled VM description JSON ({e})", p + 5)
            if not isinstance(desc, dict) or not isinstance(desc.get("devices"), list):
                r.fail("VM description JSON has no device list", p + 5)
            return p, desc
        p = buf.rfind(b"\x06", start, p)
    r.fail("no VM description (QEMU_VM_VMDESCRIPTION with JSON) ends the file; "
           "truncated stream, or written with the description suppressed", size)


def _parse(r) -> Stream:
    magic = r.be32("magic")
    if magic != QEMU_VM_FILE_MAGIC:
        r.fail(f"bad magic 0x{magic:08x} (want 'QEVM')", 0)
    version = r.be32("file version")
    if version != QEMU_VM_FILE_VERSION:
        r.fail(f"unsupported file version {version} (want 3)", 4)

    vmdesc_off, desc = _find_vmdesc(r)
    page_size = desc.get("page_size")
    if not isinstance(page_size, int) or page_size < 512 or page_size & (page_size - 1):
        r.fail(f"VM description has bad page_size {page_size!r}", vmdesc_off)
    devices = desc["devices"]

    machine, caps = None, []
    sections, iterable, ram_blocks, iter_secs = [], {}, {}, []
    parts = 0
    dev_i = 0
    ram_spans = []
    while True:
        at = r.pos
        if at >= vmdesc_off:
            r.fail("stream runs into the VM description without QEMU_VM_EOF")
        t = r.u8("section type")
        if t == QEMU_VM_EOF:
            break
        if t == QEMU_VM_CONFIGURATION:
            machine, caps = _parse_configuration(r)
        elif t in (QEMU_VM_SECTION_START, QEMU_VM_SECTION_FULL):
            sid = r.be32("section id")
            idstr = r.idstr("section idstr")
            inst = r.be32("instance id")
            ver = r.be32("version id")
            body = r.pos
            if t == QEMU_VM_SECTION_START:
                if idstr != "ram":
                    r.fail(f"unsupported iterable section {idstr!r} "
                           f"(only 'ram' is understood)", at)
                iterable[sid] = idstr
                _parse_ram(r, page_size, ram_blocks, caps, ram_spans)
                sec = Section("start", sid, idstr, inst, ver, at, body, r.pos - body,
                              _buf=r.buf)
                iter_secs.append(sec)
            else:
                if idstr in ("ram",):
                    r.fail(f"FULL section for iterable {idstr!r}", at)
                if dev_i >= len(devices):
                    r.fail(f"section {idstr!r} has no entry in the VM description", at)
                d = devices[dev_i]
                dev_i += 1
                if d.get("name") != idstr or d.get("instance_id") != inst:
                    r.fail(f"section {idstr!r} instance {inst} does not match VM "
                           f"description entry {d.get('name')!r} instance "
                           f"{d.get('instance_id')}", at)
                sec = Section("full", sid, idstr, inst, ver, at, body, 0,
                              vmsd_name=d.get("vmsd_name"), _buf=r.buf)
                _walk_vmsd(r, d, "", sec, top=True)
                sec.body_size = r.pos - body
                if "size" in d and d.get("vmsd_name") is None and d["size"] != sec.body_size:
                    r.fail(f"section {idstr!r}: body {sec.body_size} bytes, "
                           f"description says {d['size']}", body)
                sections.append(sec)
            _footer(r, sid)
        elif t in (QEMU_VM_SECTION_PART, QEMU_VM_SECTION_END):
            sid = r.be32("section id")
            if sid not in iterable:
                r.fail(f"{SECTION_KINDS[t]} record for unknown section id {sid}", at)
            _parse_ram(r, page_size, ram_blocks, caps, ram_spans)
            _footer(r, sid)
            parts += 1
        elif t == QEMU_VM_COMMAND:
            cmd = r.be16("command")
            n = r.be16("command length")
            r.skip(n, f"command {cmd} data")
        else:
            r.fail(f"unknown section type 0x{t:02x}", at)
    if r.pos != vmdesc_off:
        r.fail(f"QEMU_VM_EOF is followed by {vmdesc_off - r.pos} unexpected bytes "
               f"before the VM description")
    ram_blocks.pop(None, None)
    if dev_i != len(devices):
        r.fail(f"VM description lists {len(devices)} devices, stream has {dev_i}",
               vmdesc_off)
    return Stream(path=r.path, size=r.size, version=QEMU_VM_FILE_VERSION, machine=machine,
                  capabilities=caps, page_size=page_size, ram_blocks=ram_blocks,
                  sections=sections, iterable=iterable, vmdesc=desc,
                  vmdesc_offset=vmdesc_off, iterable_sections=iter_secs, parts=parts,
                  ram_spans=ram_spans)


def _footer(r, sid):
    if r.pos < r.size and r.buf[r.pos] == QEMU_VM_SECTION_FOOTER:
        at = r.pos
        r.pos += 1
        fid = r.be32("footer section id")
        if fid != sid:
            r.fail(f"section footer names id {fid}, section is {sid}", at)


def _parse_configuration(r):
    """vmstate 'configuration': be32 len + machine name, then optional subsections
    (target-page-bits, capabilities, uuid) that the JSON does not describe."""
    n = r.be32("configuration name length")
    if n > 256:
        r.fail(f"garbled configuration (machine name length {n})", r.pos - 4)
    r.need(n, "machine name")
    machine = bytes(r.buf[r.pos:r.pos + n]).decode("ascii", "replace")
    r.pos += n
    caps = []
    while r.pos < r.size and r.buf[r.pos] == QEMU_VM_SUBSECTION:
        at = r.pos
        r.pos += 1
        name = r.idstr("configuration subsection name")
        r.be32("subsection version")
        if name == "configuration/target-page-bits":
            r.be32("target page bits")
        elif name == "configuration/capabilities":
            count = r.be32("capability count")
            if count > 256:
                r.fail(f"garbled capability count {count}", r.pos - 4)
            for _ in range(count):
                caps.append(r.idstr("capability name"))
        elif name == "configuration/uuid":
            r.skip(16, "uuid")
        else:
            r.fail(f"unknown configuration subsection {name!r}", at)
    if "mapped-ram" in caps:
        r.fail("mapped-ram streams (file: migration) are not supported", r.pos)
    return machine, caps


def _parse_ram(r, page_size, blocks, caps, spans=None):
    """Walk RAM records up to and including EOS, counting pages, copying nothing.
    ``spans`` gets (first page record, EOS record) offsets: what :func:`strip_ram` cuts."""
    buf, size = r.buf, r.size
    unpack64 = _BE64.unpack_from
    mask = page_size - 1
    # the current block persists across sections (QEMU's loader keeps it in a static)
    block = blocks.get(None)
    pos = r.pos
    span_start = pos
    ignore_shared = "x-ignore-shared" in caps
    try:
        while True:
            at = pos
            if pos + 8 > size:
                r.pos = pos
                r.need(8, "RAM record header")
            hdr = unpack64(buf, pos)[0]
            pos += 8
            flags = hdr & mask
            if flags == RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE and block is not None:
                # the hot path: a full page of the same block
                pos += page_size
                if pos > size:
                    r.pos = at
                    r.fail(f"truncated RAM page (needs {page_size} bytes)", at)
                block.pages += 1
                continue
            if flags == RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE and block is not None:
                pos += 1
                if pos > size:
                    r.pos = at
                    r.fail("truncated zero-page record", at)
                block.zero_pages += 1
                continue
            if flags & RAM_SAVE_FLAG_EOS:
                if flags & ~RAM_SAVE_FLAG_EOS:
                    r.fail(f"RAM record with EOS and other flags 0x{flags:x}", at)
                if spans is not None and at > span_start:
                    spans.append((span_start, at))
                break
            if flags & RAM_SAVE_FLAG_MEM_SIZE:
                if flags != RAM_SAVE_FLAG_MEM_SIZE:
                    r.fail(f"RAM MEM_SIZE record with flags 0x{flags:x}", at)
                total = hdr & ~mask
                r.pos = pos
                while total > 0:
                    bat = r.pos
                    name = r.idstr("RAM block name")
                    length = r.be64("RAM block length")
                    if length == 0 or length > total:
                        r.fail(f"RAM block {name!r} length {length} does not fit "
                               f"total {total}", bat)
                    if ignore_shared:
                        r.be64("RAM block address")
                    blocks.setdefault(name, RamBlock(name, length))
                    total -= length
                pos = span_start = r.pos
                continue
            if flags & RAM_SAVE_FLAG_MULTIFD_FLUSH:
                if flags != RAM_SAVE_FLAG_MULTIFD_FLUSH:
                    r.fail(f"RAM MULTIFD_FLUSH record with flags 0x{flags:x}", at)
                continue
            if flags & RAM_SAVE_FLAG_HOOK:
                r.fail("RAM record with HOOK flag (RDMA) is not supported", at)
            kinds = flags & (RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_XBZRLE
                             | RAM_SAVE_FLAG_COMPRESS_PAGE)
            if kinds == 0 or kinds & (kinds - 1) or flags & ~(kinds | RAM_SAVE_FLAG_CONTINUE):
                r.fail(f"garbled RAM record flags 0x{flags:x}", at)
            r.pos = pos
            if flags & RAM_SAVE_FLAG_CONTINUE:
                if block is None:
                    r.fail("RAM record CONTINUEs without a previous block", at)
            else:
                name = r.idstr("RAM block name")
                block = blocks.get(name)
                if block is None:
                    r.fail(f"RAM record for unknown block {name!r}", at)
            addr = hdr & ~mask
            if addr >= block.length:
                r.fail(f"RAM record address 0x{addr:x} outside block {block.name!r} "
                       f"(0x{block.length:x} bytes)", at)
            if kinds == RAM_SAVE_FLAG_ZERO:
                r.skip(1, "zero page fill byte")
                block.zero_pages += 1
            elif kinds == RAM_SAVE_FLAG_PAGE:
                r.skip(page_size, "RAM page")
                block.pages += 1
            elif kinds == RAM_SAVE_FLAG_XBZRLE:
                r.u8("XBZRLE encoding")
                n = r.be16("XBZRLE length")
                r.skip(n, "XBZRLE data")
                block.other_pages += 1
            else:
                n = r.be32("compressed page length")
                if n > 2 * page_size:
                    r.fail(f"garbled compressed page length {n}", r.pos - 4)
                r.skip(n, "compressed page")
                block.other_pages += 1
            pos = r.pos
    finally:
        r.pos = pos
        if block is not None:
            blocks[None] = block


def _walk_vmsd(r, desc, prefix, sec, top=False):
    """Consume the bytes of one VMState described by ``desc`` (a dict with ``fields``
    and optional ``subsections``), registering each field under ``prefix``."""
    fields = desc.get("fields") or []
    if not isinstance(fields, list):
        r.fail(f"section {sec.name!r}: description 'fields' is not a list")
    for f in fields:
        _walk_field(r, f, prefix, sec)
    for sub in desc.get("subsections") or []:
        at = r.pos
        mark = r.u8("subsection marker")
        want = sub.get("vmsd_name")
        if mark != QEMU_VM_SUBSECTION:
            r.fail(f"section {sec.name!r}: expected subsection {want!r} "
                   f"(marker 0x05), found byte 0x{mark:02x}", at)
        name = r.idstr("subsection name")
        if name != want:
            r.fail(f"section {sec.name!r}: subsection {name!r}, description "
                   f"says {want!r}", at)
        ver = r.be32("subsection version")
        if "version" in sub and ver != sub["version"]:
            r.fail(f"section {sec.name!r}: subsection {name!r} version {ver}, "
                   f"description says {sub['version']}", at)
        sec.subsections.append(name)
        _walk_vmsd(r, sub, prefix, sec)


def _register(sec, name, f):
    if name not in sec.fields:
        sec.fields[name] = f


def _walk_field(r, f, prefix, sec):
    if not isinstance(f, dict):
        r.fail(f"section {sec.name!r}: garbled field description {f!r}")
    name = prefix + str(f.get("name"))
    if "index" in f:
        name = f"{name}[{f['index']}]"
    ftype = f.get("type", "")
    size = f.get("size")
    if not isinstance(size, int) or size < 0:
        r.fail(f"section {sec.name!r}: field {name!r} has no valid size")
    count = f.get("array_len", 1)
    if not isinstance(count, int) or count < 0:
        r.fail(f"section {sec.name!r}: field {name!r} has bad array_len {count!r}")
    start = r.pos
    inner = f.get("struct") if ftype == "struct" else (f if ftype == "tmp" and "fields" in f else None)
    if inner is not None and isinstance(inner, dict):
        if "array_len" in f:
            for i in range(count):
                es = r.pos
                _walk_vmsd(r, inner, f"{name}[{i}].", sec)
                if r.pos - es != size:
                    r.fail(f"section {sec.name!r}: {name}[{i}] is {r.pos - es} bytes, "
                           f"description says {size}", es)
            _register(sec, name, Field(name, ftype, start, size * count, size, count))
        else:
            _walk_vmsd(r, inner, name + ".", sec)
            if r.pos - start != size:
                r.fail(f"section {sec.name!r}: struct {name!r} is {r.pos - start} bytes, "
                       f"description says {size}", start)
            _register(sec, name, Field(name, ftype, start, size, size, 1))
        return
    total = size * count
    r.need(total, f"field {name!r} of section {sec.name!r}")
    r.pos += total
    _register(sec, name, Field(name, ftype, start, total, size, count))


def strip_ram(path, out):
    """Write ``path`` without its RAM page records (each RAM section keeps its block
    list and its EOS), so a stream of any QEMU version shrinks to its device state:
    small enough for a test fixture or a bug report, and still a stream this module
    reads. Returns the bytes written."""
    stream = parse_stream(path)
    with open(path, "rb") as src, open(out, "wb") as dst:
        pos = 0
        for start, end in stream.ram_spans:
            dst.write(src.read(start - pos))
            src.seek(end)
            pos = end
        dst.write(src.read())
        return dst.tell()
