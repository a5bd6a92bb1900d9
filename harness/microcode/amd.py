"""AMD microcode containers: parse, validate, match and build (facts §2).

Why: AuthenticAMD.bin / microcode_amd*.bin are concatenated containers, each an
equivalence table mapping CPUID(1).EAX to an equivalence id, followed by patch sections.
A CPU's patch is found through the table of the *same* container, and Linux rejects
sections the way ``verify_container``/``verify_equivalence_table``/``verify_patch`` do.
Like the Intel parser, this one never raises on content: it returns containers holding
the patches it could verify plus precise ``Defect`` objects, and resynchronises on the
next container magic after damage. Linux checks no checksum for AMD patches, so neither
do we.
"""

import struct
from collections import namedtuple

from .cpuid import decode_signature
from .defects import Defect, DefectVerdicts, MicrocodeError
from .intel import date_to_bcd, format_bcd_date

# --- format constants (facts §2.1, §2.2) --------------------------------------------
CONTAINER_MAGIC = 0x00414D44          # bytes "DMA\0"
CONTAINER_MAGIC_BYTES = CONTAINER_MAGIC.to_bytes(4, "little")
CONTAINER_HEADER = struct.Struct("<III")  # magic, section type 0, table length
CONTAINER_HEADER_SIZE = CONTAINER_HEADER.size
EQUIV_TABLE_TYPE = 0
EQUIV_ENTRY = struct.Struct("<IIIHH")     # installed_cpu, errata mask, errata compare, id, rsvd
EQUIV_ENTRY_SIZE = EQUIV_ENTRY.size       # 16
SECTION_HEADER = struct.Struct("<II")     # type, patch size
SECTION_HEADER_SIZE = SECTION_HEADER.size
PATCH_SECTION_TYPE = 1                    # UCODE_UCODE_TYPE
PATCH_HEADER = struct.Struct("<IIHBBIIIHBBB3x8I")
PATCH_HEADER_SIZE = 64
# Per-family patch size caps of Linux 6.x ``__verify_patch_size`` (no cap from 0x15 on).
FAMILY_MAX_PATCH_SIZE = {0x10: 2048, 0x11: 2048, 0x12: 2048, 0x14: 1824}
MIN_FAMILY = 0x10                     # Linux loads AMD microcode for family >= 0x10
FINAL_PATCH_LEVELS = (0x01000098, 0x0100009F, 0x010000AF)  # facts §2.2 / L-core

assert PATCH_HEADER.size == PATCH_HEADER_SIZE


# Named tuples and plain classes rather than dataclasses: the lean ``microcode`` command
# imports this module (see intel.py).

class EquivEntry(namedtuple("EquivEntry", "installed_cpu fixed_errata_mask "
                            "fixed_errata_compare equiv_id reserved", defaults=(0,))):
    __slots__ = ()


_PATCH_FIELDS = (
    "offset",             # file offset of the 64-byte patch header
    "data_code",          # BCD mmddyyyy date (not reliable, facts §2.1)
    "patch_id",           # the revision MSR 0x8B reports after loading
    "mc_patch_data_id", "mc_patch_data_len", "init_flag", "mc_patch_data_checksum",
    "nb_dev_id", "sb_dev_id",
    "processor_rev_id",   # the equivalence id this patch is for
    "nb_rev_id", "sb_rev_id", "bios_api_rev",
    "match_reg",          # tuple of 8
    "raw",                # the patch itself (header + body), no section header
    "source")


class AmdPatch(namedtuple("AmdPatch", _PATCH_FIELDS, defaults=(None,))):
    __slots__ = ()

    def __repr__(self):
        return (f"AmdPatch(offset=0x{self.offset:x}, patch_id=0x{self.patch_id:08x}, "
                f"processor_rev_id=0x{self.processor_rev_id:04x}, size={self.size}, "
                f"source={self.source!r})")

    @property
    def family(self):
        """Family the patch targets: 0xF + (processor_rev_id >> 12)."""
        return 0xF + (self.processor_rev_id >> 12)

    @property
    def revision(self):
        return self.patch_id

    @property
    def date(self):
        return format_bcd_date(self.data_code)

    @property
    def size(self):
        return len(self.raw)


class AmdContainer:
    """One container: its equivalence table, the patches that verified, its bytes."""

    __slots__ = ("offset", "equiv_table", "patches", "raw")

    def __init__(self, offset, equiv_table, patches, raw=b""):
        self.offset, self.equiv_table, self.patches, self.raw = offset, equiv_table, patches, raw

    def __eq__(self, other):
        return isinstance(other, AmdContainer) and (
            (self.offset, self.equiv_table, self.patches, self.raw)
            == (other.offset, other.equiv_table, other.patches, other.raw))

    __hash__ = None

    def __repr__(self):
        return (f"AmdContainer(offset=0x{self.offset:x}, {len(self.equiv_table)} equivalences, "
                f"{len(self.patches)} patches)")

    def equiv_id(self, cpuid_eax):
        """The equivalence id of a CPU in this container's table, 0 when absent."""
        for e in self.equiv_table:
            if e.installed_cpu == cpuid_eax:
                return e.equiv_id
        return 0


class AmdParseResult(DefectVerdicts):
    def __init__(self, containers, defects, size, source=None):
        self.containers, self.defects, self.size, self.source = containers, defects, size, source

    @property
    def patches(self):
        return [p for c in self.containers for p in c.patches]


def _parse_equiv_table(data, start, length, bad):
    entries, terminated = [], False
    for off in range(start, start + length - EQUIV_ENTRY_SIZE + 1, EQUIV_ENTRY_SIZE):
        e = EquivEntry(*EQUIV_ENTRY.unpack_from(data, off))
        if e.installed_cpu == 0:
            terminated = True
            break
        entries.append(e)
    if not terminated:
        bad(start + length, "equivalence table", "a final all-zero entry",
            "none", False)
    return entries


def parse_amd(data, *, source=None):
    """Parse one or more concatenated AMD containers.

    Returns an ``AmdParseResult``. Patch sections that fail verification are reported
    and left out; a broken container header or section header makes the parser skip to
    the next ``DMA\\0`` magic (reporting the span skipped).
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    end = len(data)
    containers, defects = [], []

    def bad(off, name, expected, found, fatal=True, record=None):
        defects.append(Defect(off, name, expected, found, record=record, fatal=fatal,
                              source=source))

    def resync(pos, why_off):
        nxt = data.find(CONTAINER_MAGIC_BYTES, pos)
        stop = end if nxt < 0 else nxt
        bad(why_off, "unparseable data", "a container or patch section",
            f"{stop - why_off} bytes skipped up to offset 0x{stop:x}"
            + (" (end of file)" if nxt < 0 else ""))
        return None if nxt < 0 else nxt

    pos = 0
    while pos is not None and pos < end:
        if end - pos <= CONTAINER_HEADER_SIZE:
            bad(pos, "container header", "more than 12 bytes", f"{end - pos} bytes")
            break
        magic, typ, eqlen = CONTAINER_HEADER.unpack_from(data, pos)
        if magic != CONTAINER_MAGIC:
            bad(pos, "container magic", f"0x{CONTAINER_MAGIC:08x}", f"0x{magic:08x}")
            pos = resync(pos + 1, pos)
            continue
        if typ != EQUIV_TABLE_TYPE:
            bad(pos + 4, "equivalence table type", str(EQUIV_TABLE_TYPE), str(typ), record=pos)
            pos = resync(pos + 4, pos)
            continue
        if eqlen < EQUIV_ENTRY_SIZE or pos + CONTAINER_HEADER_SIZE + eqlen > end:
            bad(pos + 8, "equivalence table length",
                f"16..{end - pos - CONTAINER_HEADER_SIZE}", str(eqlen), record=pos)
            pos = resync(pos + 4, pos)
            continue
        if eqlen % EQUIV_ENTRY_SIZE:
            bad(pos + 8, "equivalence table length", "a multiple of 16", str(eqlen),
                fatal=False, record=pos)
        table_start = pos + CONTAINER_HEADER_SIZE
        table = _parse_equiv_table(data, table_start, eqlen,
                                   lambda o, n, e, f, fat: bad(o, n, e, f, fat, pos))
        cont = AmdContainer(pos, table, [])
        containers.append(cont)
        p = table_start + eqlen
        nxt = None
        while p < end:
            if data[p:p + 4] == CONTAINER_MAGIC_BYTES:
                nxt = p
                break
            if end - p < SECTION_HEADER_SIZE:
                bad(p, "trailing data", "a patch section or end of file",
                    f"{end - p} stray bytes")
                break
            styp, size = SECTION_HEADER.unpack_from(data, p)
            if styp != PATCH_SECTION_TYPE:
                bad(p, "section type", str(PATCH_SECTION_TYPE), f"0x{styp:x}", record=p)
                nxt = resync(p + 1, p)
                break
            if size < PATCH_HEADER_SIZE or p + SECTION_HEADER_SIZE + size > end:
                bad(p + 4, "patch size", f"{PATCH_HEADER_SIZE}..{end - p - SECTION_HEADER_SIZE}",
                    str(size), record=p)
                nxt = resync(p + 1, p)
                break
            hp = p + SECTION_HEADER_SIZE
            f = PATCH_HEADER.unpack_from(data, hp)
            patch = AmdPatch(hp, *f[:12], tuple(f[12:]), data[hp:hp + size], source)
            ok = True
            if patch.nb_dev_id or patch.sb_dev_id:
                bad(hp + 16, "nb_dev_id/sb_dev_id", "0/0 (no chipset-specific patch)",
                    f"0x{patch.nb_dev_id:x}/0x{patch.sb_dev_id:x}", record=hp)
                ok = False
            cap = FAMILY_MAX_PATCH_SIZE.get(patch.family)
            if cap is not None and size > cap:
                bad(p + 4, "patch size", f"<= {cap} for family 0x{patch.family:x}",
                    str(size), record=hp)
                ok = False
            if ok:
                cont.patches.append(patch)
            p = hp + size
        cont.raw = data[pos:(nxt if nxt is not None else p)]
        pos = nxt
    return AmdParseResult(containers, defects, end, source)


# --- matching ------------------------------------------------------------------------

def patches_for_cpu(containers, cpuid_eax):
    """Patches Linux would consider for a CPU: equivalence id from the same container's
    table, processor_rev_id equal to it, and the patch's family equal to the CPU's."""
    family = decode_signature(cpuid_eax).family
    out = []
    for c in containers:
        eid = c.equiv_id(cpuid_eax)
        if not eid:
            continue
        out.extend(p for p in c.patches if p.processor_rev_id == eid and p.family == family)
    return out


def conventional_equiv_id(cpuid_eax):
    """The equivalence id AMD uses for a signature (e.g. 0x00a00f11 → 0xa011)."""
    return (((cpuid_eax >> 20) & 0xFF) << 12) | (((cpuid_eax >> 16) & 0xF) << 8) | (cpuid_eax & 0xFF)


# --- building ------------------------------------------------------------------------

def build_patch(patch_id, processor_rev_id, date="2024-02-26", *, body=None, size=None,
                nb_dev_id=0, sb_dev_id=0, init_flag=0, bios_api_rev=0,
                match_reg=(0,) * 8):
    """One patch (64-byte header + body). ``size`` is the whole patch length."""
    if body is None:
        size = 3200 if size is None else size
        if size < PATCH_HEADER_SIZE:
            raise MicrocodeError(f"patch size {size} is smaller than the 64-byte header")
        body = bytes((patch_id + i) & 0xFF for i in range(size - PATCH_HEADER_SIZE))
    hdr = PATCH_HEADER.pack(date_to_bcd(date), patch_id, 0x8000, 0, init_flag, 0,
                            nb_dev_id, sb_dev_id, processor_rev_id, 0, 0, bios_api_rev,
                            *match_reg)
    return hdr + bytes(body)


def build_container(equiv, patches, *, terminate=True):
    """A container: ``equiv`` is a list of (installed_cpu, equiv_id) or ``EquivEntry``;
    ``patches`` a list of patch bytes (see ``build_patch``)."""
    table = b""
    for e in equiv:
        if not isinstance(e, EquivEntry):
            e = EquivEntry(e[0], 0, 0, e[1])
        table += EQUIV_ENTRY.pack(e.installed_cpu, e.fixed_errata_mask,
                                  e.fixed_errata_compare, e.equiv_id, e.reserved)
    if terminate:
        table += bytes(EQUIV_ENTRY_SIZE)
    out = CONTAINER_HEADER.pack(CONTAINER_MAGIC, EQUIV_TABLE_TYPE, len(table)) + table
    for p in patches:
        out += SECTION_HEADER.pack(PATCH_SECTION_TYPE, len(p)) + p
    return out
