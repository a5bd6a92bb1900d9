"""iucode_tool 2.3.1's selection, rule for rule (facts §4.1): filters, dates, revisions.

Why: ``iucode_tool`` is the oracle the harness's listings and bundles are compared with,
and its selection is not "the newest per signature": filters merge as they are added,
platform masks replace or shadow each other, revisions compare as *signed* 32-bit
numbers, and ``--downgrade`` prefers later files. Rather than approximating, this module
restates the rules of iucode_tool 2.3.1 (``iucode_tool.c``: ``add_filter_to_list``,
``is_selected``, ``uclist_add_signature``, ``uclist_merge_signature``,
``is_in_date_range``, ``xx_datefilter_loose_inplaceinsert``; ``intel_microcode.c``:
``intel_ucode_compare``), read from Debian's 2.3.1 source and checked against the
installed binary (tests/microcode/test_iucode_parity.py). The behaviour is that of 2.3.1.

Vocabulary (iucode_tool's): a *signature entry* is one (signature, pf mask) of an update,
the primary one or one of its extended table (every table entry counts, also one that
repeats the primary); its *group* is the number of the file it came from (1-based, in
load order) and its *id* the record number in that file.

One quirk is not reproduced: with ``--loose-date-filtering`` iucode_tool 2.3.1 can
print an entry that it then does not write (it inserts through a copy of the list
pointer); here what is listed is what is written.
"""

from collections import namedtuple

from .defects import Defect

PF_ANY = 0xFFFFFFFF          # PFMASK_MATCH_ANY: a filter without a pf mask
U32 = 0xFFFFFFFF
OPS = ("eq", "lt", "gt")


def s32(v):
    """The signed 32-bit value iucode_tool compares revisions as."""
    v &= U32
    return v - (1 << 32) if v & 0x80000000 else v


# --- numbers as iucode_tool reads them (strtoul/strtol with base 0) -----------------

def c_number(text, what, signed=False):
    """``0x`` hex, a leading ``0`` octal, decimal otherwise (C base 0), like iucode_tool.

    Revisions (``signed``) accept -2**31..2**32-1, the upper half read as the u32 bits
    of a negative number. Raises ValueError naming ``what``.
    """
    s = text.strip()
    neg = s.startswith("-")
    body = s[1:] if s[:1] in "+-" else s
    try:
        if body[:2].lower() == "0x":
            v = int(body[2:], 16)
        elif len(body) > 1 and body[0] == "0":
            v = int(body[1:], 8)
        else:
            v = int(body, 10)
    except ValueError:
        raise ValueError(f"{what}: not a number: {text!r}") from None
    if neg:
        v = -v
    if signed:
        if not -(1 << 31) <= v <= U32:
            raise ValueError(f"{what}: out of range: {text!r}")
        return s32(v)
    if neg or v > U32:
        raise ValueError(f"{what}: out of range: {text!r}")
    return v


# --- filters (-s, -S) ---------------------------------------------------------------

class Filter:
    """One ``-s`` filter: exact signature, pf mask (bits in common, or any), revision."""

    __slots__ = ("cpuid", "pfm", "rev", "op", "invert")

    def __init__(self, cpuid, pfm=PF_ANY, rev=0, op=None, invert=False):
        self.cpuid, self.pfm, self.rev, self.op, self.invert = cpuid, pfm or PF_ANY, rev, op, invert

    def __repr__(self):
        return (f"Filter({'!' if self.invert else ''}0x{self.cpuid:x}, pf 0x{self.pfm:x}, "
                f"{self.op or 'any'}:{self.rev})")


def parse_select(text):
    """``-s`` argument → a ``Filter``, or None for ``-s !`` ("select nothing by default").

    Syntax ``[!]SIG[,[PF_MASK][,[eq:|lt:|gt:]REV]]``; raises ValueError with a one-line
    reason.
    """
    s = text.strip()
    invert = s.startswith("!")
    if invert:
        s = s[1:].strip()
        if not s:
            return None
    parts = s.split(",")
    if len(parts) > 3 or not parts[0].strip():
        raise ValueError(f"-s: expected [!]SIG[,[PF_MASK][,[eq:|lt:|gt:]REV]], got {text!r}")
    if len(parts) == 2 and not parts[1].strip():
        raise ValueError(f"-s: empty pf mask at the end of {text!r}")
    sig = c_number(parts[0], "-s signature")
    if sig == 0 or sig == U32:
        raise ValueError(f"-s: signature 0x{sig:x} cannot be selected")
    pf = c_number(parts[1], "-s pf mask") if len(parts) > 1 and parts[1].strip() else 0
    op, rev = None, 0
    if len(parts) == 3:
        r = parts[2].strip()
        if not r:
            raise ValueError(f"-s: empty revision in {text!r}")
        op = "eq"
        if r[:3].lower() in ("eq:", "lt:", "gt:"):
            op, r = r[:2].lower(), r[3:]
        rev = c_number(r, "-s revision", signed=True)
    return Filter(sig, pf, rev, op, invert)


def scan_system_filters(cpu_sig, pf_mask=None, revision=None):
    """``-S`` for a given CPU: iucode_tool's "fast" strategy (every stepping of the
    signature's type, family and model, ``xx_add_all_steppings``), optionally narrowed to
    the CPU's platform mask and to revisions newer than its current one (``gt:``).
    iucode_tool itself scans the host and uses neither pf nor revision."""
    op = "gt" if revision is not None else None
    rev = s32(revision) if revision is not None else 0
    top = cpu_sig | 0xF
    return [Filter(top - i, pf_mask or PF_ANY, rev, op) for i in range(16)]


class Filters:
    """iucode_tool's filter list: sorted by signature; a new filter for a signature goes
    in front of the older ones, or merges into the first of them when the revision test
    is the same (same sense: pf masks OR'ed; a deselect takes its bits out of a select;
    a select turns a deselect into itself)."""

    def __init__(self):
        self.by_sig = {}             # signature -> [Filter], newest first
        self.allow = True            # what an entry no filter speaks for gets

    def add(self, f):
        """``-s``: add ``f`` (None: ``-s !``)."""
        if f is None:
            self.allow = False
            return
        if not f.invert:
            self.allow = False
        lst = self.by_sig.setdefault(f.cpuid, [])
        if lst:
            e = lst[0]
            if (f.pfm & e.pfm) == f.pfm and e.op == f.op and e.rev == f.rev \
                    and e.invert == f.invert:
                return                       # an equivalent filter is there already
            if e.op == f.op and e.rev == f.rev:
                if e.invert == f.invert:
                    e.pfm |= f.pfm
                elif not e.invert:
                    e.pfm &= ~f.pfm & U32
                else:
                    e.invert, e.pfm = False, f.pfm
                return
        lst.insert(0, Filter(f.cpuid, f.pfm, f.rev, f.op, f.invert))

    def add_scan(self, filters):
        """``-S``: its stepping filters, and "nothing else by default"."""
        for f in filters:
            self.add(f)
        self.allow = False

    def selected(self, cpuid, pfm, rev):
        """``is_selected``: the first filter of the signature whose pf mask shares a bit
        with ``pfm`` (or matches any) decides, if its revision test holds."""
        for f in self.by_sig.get(cpuid, ()):
            if pfm & f.pfm or f.pfm == PF_ANY:
                if (f.op is None or (f.op == "eq" and rev == f.rev)
                        or (f.op == "lt" and rev < f.rev) or (f.op == "gt" and rev > f.rev)):
                    return not f.invert
        return self.allow


# --- dates ----------------------------------------------------------------------------

def date_key(bcd_mmddyyyy):
    """BCD mmddyyyy header word → the packed BCD yyyymmdd iucode_tool compares."""
    return ((bcd_mmddyyyy & 0xFFFF) << 16) | ((bcd_mmddyyyy >> 24) << 8) | ((bcd_mmddyyyy >> 16) & 0xFF)


def parse_date(text, what):
    """``YYYY-MM-DD`` → packed BCD yyyymmdd (not range-checked, like iucode_tool: month
    and day up to 99, so ``2000-00-00`` works)."""
    parts = text.strip().split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{what}: expected YYYY-MM-DD, got {text!r}")
    y, m, d = (int(p) for p in parts)
    if y > 9999 or m > 99 or d > 99:
        raise ValueError(f"{what}: out of range: {text!r}")
    return int(f"{y:04d}{m:02d}{d:02d}", 16)


# --- the signature lists --------------------------------------------------------------

class SigEntry:
    """One signature entry of an update (``struct intel_uclist_entry``)."""

    __slots__ = ("cpuid", "pfm", "rev", "update", "gid", "id", "selid", "dup")

    def __init__(self, cpuid, pfm, update, gid, id_):
        self.cpuid, self.pfm, self.rev = cpuid, pfm, s32(update.revision)
        self.update, self.gid, self.id = update, gid, id_
        self.selid = False           # selected by the filters but outside the date range
        self.dup = False

    def copy(self):
        n = SigEntry.__new__(SigEntry)
        for k in SigEntry.__slots__:
            setattr(n, k, getattr(self, k))
        return n


def _payload_conflict(a, b):
    """``intel_ucode_compare`` says -EBADF: same sizes, no extended tables, same primary
    signature and revision, different data, pf masks sharing a bit."""
    if a.total_size != b.total_size or a.data_size != b.data_size:
        return False
    if a.ext_signatures or b.ext_signatures or a.total_size > a.data_size + 48:
        return False
    if a.signature != b.signature or a.revision != b.revision:
        return False
    return a.data != b.data and bool(a.pf_mask & b.pf_mask)


def add_signature(group, n, strict):
    """``uclist_add_signature`` into one signature's list of every loaded entry; returns
    the entry whose payload conflicts with ``n`` (strict mode), else None."""
    d = None
    i = 0
    for i, e in enumerate(group):
        if e.rev == n.rev:
            if e.pfm == n.pfm:
                n.dup, d = True, e
                break
            if e.pfm & n.pfm:
                d = e
    else:
        i = len(group)
    if strict and d is not None and _payload_conflict(n.update, d.update):
        return d
    group.insert(i, n)
    return None


def merge_signature(group, n, downgrade, start=0):
    """``uclist_merge_signature``: put ``n`` into one signature's selected list (kept in
    pf-mask-descending order) from index ``start`` on, replacing or discarding entries
    whose platforms it covers or that cover it, by revision (signed) or, with
    ``downgrade``, by file order."""
    i, p_ins, action = start, None, "insert"
    while i < len(group):
        e = group[i]
        if p_ins is None and n.pfm >= e.pfm:
            p_ins = i
        if n.pfm and not e.pfm & n.pfm:
            i += 1
            continue
        if not downgrade or n.gid == e.gid:
            if e.pfm & n.pfm == n.pfm:
                if e.rev >= n.rev:
                    action = "discard"
                    break
                if n.pfm == e.pfm:
                    action = "replace"
                    break
            elif n.pfm & e.pfm == e.pfm and n.rev >= e.rev:
                action = "replace"
                break
        elif n.gid > e.gid:
            if n.pfm & e.pfm == e.pfm:
                action = "replace"
                break
            if e.pfm & n.pfm == n.pfm and e.rev == n.rev:
                action = "discard"
                break
        elif e.pfm & n.pfm == n.pfm:
            action = "discard"
            break
        i += 1
    if action == "replace":
        if p_ins == i:
            group[i] = n
            i += 1
        else:
            action = "insert"
            del group[i]
    elif action == "discard":
        if not downgrade:
            return
        i += 1
    while i < len(group):          # drop what the new entry supersedes
        e = group[i]
        if n.pfm & e.pfm == e.pfm and ((not downgrade and n.rev >= e.rev)
                                       or (downgrade and n.gid > e.gid)):
            del group[i]
            continue
        if p_ins is None and n.pfm >= e.pfm:
            p_ins = i
        i += 1
    if action == "insert":
        group.insert(len(group) if p_ins is None else p_ins, n)


# --- the whole selection --------------------------------------------------------------

class Selection(namedtuple("Selection", "entries conflicts")):
    """``entries``: SigEntry in iucode_tool's -l order; ``conflicts``: Defects for the
    same signature and revision with another payload (strict checks)."""

    __slots__ = ()

    @property
    def updates(self):
        """Distinct updates in entry order (what ``-w`` writes, each record once)."""
        seen, out = set(), []
        for e in self.entries:
            if id(e.update) not in seen:
                seen.add(id(e.update))
                out.append(e.update)
        return out


def select(records, filters=None, *, date_before=None, date_after=None, loose=False,
           downgrade=False, strict=True, ignore_broken=False):
    """iucode_tool's selection over ``records``: (group, id, IntelUpdate) in load order.

    ``filters``: a ``Filters`` (None: everything); dates are packed BCD yyyymmdd from
    ``parse_date`` (exclusive bounds). With ``strict``, a payload conflict is returned in
    ``conflicts`` and stops processing (iucode_tool aborts), or with ``ignore_broken``
    skips the rest of that update's signatures.
    """
    lo = 0 if date_after is None else date_after
    hi = U32 if date_before is None else date_before
    every = {}                      # signature -> every SigEntry loaded
    chosen = {}                     # signature -> selected SigEntry
    conflicts = []
    for gid, id_, u in records:
        dk = date_key(u.date_bcd)
        in_range = lo < dk < hi
        rev = s32(u.revision)
        sigs = [(u.signature, u.pf_mask)] + [(x.signature, x.pf_mask) for x in u.ext_signatures]
        for sig, pf in sigs:
            n = SigEntry(sig, pf, u, gid, id_)
            picked = filters.selected(sig, pf, rev) if filters is not None else True
            if picked and not in_range:
                n.selid = True
            bad = add_signature(every.setdefault(sig, []), n, strict)
            if bad is not None:
                conflicts.append(Defect(
                    u.offset, "payload",
                    f"identical to microcode {bad.gid:03d}/{bad.id:03d} (same sig 0x{sig:08x}, "
                    f"rev 0x{u.revision:x})", "different contents", record=u.offset,
                    source=u.source))
                if not ignore_broken:
                    return Selection([], conflicts)
                break
            if picked and in_range:
                merge_signature(chosen.setdefault(sig, []), n.copy(), downgrade)
    out = []
    for sig in sorted(chosen):
        group = chosen[sig]
        j = 0
        while j < len(group):
            if loose:
                pfm = group[j].pfm       # taken once: entries put in front are not searched for
                for e in every.get(sig, ()):
                    if e.selid and e.pfm & pfm:
                        e.selid = False
                        merge_signature(group, e.copy(), downgrade, start=j)
                if j >= len(group):
                    break
            out.append(group[j])
            j += 1
    return Selection(out, conflicts)


def filters_from(specs):
    """A ``Filters`` from ``-s`` strings, in order (None when ``specs`` is empty)."""
    if not specs:
        return None
    fl = Filters()
    for spec in specs:
        fl.add(parse_select(spec))
    return fl


def records_of(updates):
    """(group, id, update) for updates in load order: the group is the number of the
    update's ``source`` file in order of first appearance, the id its place in it."""
    groups, counts, out = {}, {}, []
    for u in updates:
        g = groups.setdefault(u.source, len(groups) + 1)
        counts[g] = counts.get(g, 0) + 1
        out.append((g, counts[g], u))
    return out


def select_updates(updates, filters=None, **kw):
    """``select`` over plain updates (see ``records_of``); ``filters``: a ``Filters`` or
    a list of ``-s`` strings."""
    if filters is not None and not isinstance(filters, Filters):
        filters = filters_from(filters)
    return select(records_of(updates), filters, **kw)
