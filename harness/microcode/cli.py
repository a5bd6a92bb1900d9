"""``microcode`` subcommand: list, select, pack-early, find.

Why: engineers need to inspect the microcode files a scenario uses, see which update a
CPU would get and build/inspect early-microcode initrds without leaving the harness.
``register(subparsers)`` plugs this into the main ``argparse`` CLI (``harness/cli.py``);
``main(argv)`` runs it alone (``python -m harness microcode ...`` goes there directly, so
the command imports only the microcode modules). Every handler returns an exit status and
never lets a traceback reach the user:

- 0 success; 1 the files were read but are damaged (defects printed; nothing written
  unless ``--ignore-broken``) or nothing was found/selected; 2 bad user input (missing
  file, bad number or date, refusing to overwrite).

``list`` prints what ``iucode_tool -L`` prints (every record, extended signatures on
continuation lines) and, with ``-l``/``--latest`` or any selection option, what
``iucode_tool -l`` prints (the selection, iucode_tool 2.3.1's rules: ``iucode.py``),
both preceded by ``microcode bundle N: PATH`` lines, byte for byte as iucode_tool does.
Selection options use iucode_tool's names: ``-s``, ``-S``/``--scan-system`` (for a CPU
given on the command line), ``--date-before``/``--date-after``,
``--loose-date-filtering``, ``--downgrade``, ``--strict-checks``/``--no-strict-checks``,
``--ignore-broken``, ``-w``/``--write-to``, ``--overwrite``. Files are written whole or
not at all (a temporary file renamed at the end).
"""

import argparse
import os
import sys
from collections import namedtuple

from .intel import parse_intel

INTEL = "GenuineIntel"        # = select.INTEL; the AMD and selection modules are
AMD = "AuthenticAMD"          # imported only when a command needs them
AMD_MAGIC = b"DMA\0"          # = amd.CONTAINER_MAGIC_BYTES

MAX_FILE_SIZE = 1 << 30    # iucode_tool's per-file limit


class UsageError(Exception):
    """Bad user input: reported as one line, exit status 2."""


def parse_number(text, what):
    """Decimal or 0x-prefixed hex (0o/0b too); leading zeros mean decimal here."""
    s = str(text).strip().replace("_", "")
    try:
        return int(s, 0) if s[:2].lower() in ("0x", "0o", "0b") else int(s, 10)
    except (ValueError, IndexError):
        raise UsageError(f"{what}: not a number: {text!r} (use decimal or 0x hex)") from None


def expand_paths(paths):
    """Files as given; directories expand to their non-hidden regular files, sorted."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            for name in sorted(os.listdir(p)):
                full = os.path.join(p, name)
                if not name.startswith(".") and os.path.isfile(full) and os.path.getsize(full):
                    out.append(full)
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise UsageError(f"{p}: no such file or directory")
    return out


def _read(path):
    try:
        if os.path.getsize(path) > MAX_FILE_SIZE:
            raise UsageError(f"{path}: larger than 1 GiB")
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None


MAP_MIN = 1 << 20             # files this large are mapped, not read


def _load(path):
    """A file's bytes: a read-only map for large files (parsed in place, no copy of 20
    MB into fresh memory), ``bytes`` otherwise. The map stays open for the process."""
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_SIZE:
            raise UsageError(f"{path}: larger than 1 GiB")
        with open(path, "rb") as f:
            if size < MAP_MIN:
                return f.read()
            import mmap
            # MAP_POPULATE (Linux) maps every page in one call instead of one fault each
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            return mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None


class Loaded:
    """Everything parsed from the command-line paths."""

    def __init__(self, paths, strict=True):
        self.files = expand_paths(paths)
        self.intel, self.amd, self.defects = [], [], []
        self.records = []           # (file_no, record_no, file, update_or_patch, vendor)
        for fno, path in enumerate(self.files, 1):
            data = _load(path)
            if data[:4] == AMD_MAGIC:
                from .amd import parse_amd
                res = parse_amd(data, source=path)
                self.amd.extend(res.containers)
                for rno, patch in enumerate(res.patches, 1):
                    self.records.append((fno, rno, path, patch, AMD))
            else:
                res = parse_intel(data, strict=strict, source=path)
                self.intel.extend(res.updates)
                for rno, u in enumerate(res.updates, 1):
                    self.records.append((fno, rno, path, u, INTEL))
            self.defects.extend(res.defects)
        self.index = {id(r[3]): r for r in self.records}

    def report_defects(self):
        for d in self.defects:
            print(f"microcode: {d}", file=sys.stderr)
        return any(d.fatal for d in self.defects)

    def intel_records(self):
        """(group, id, update) in load order, for ``iucode.select``."""
        return [(f, r, u) for f, r, _, u, v in self.records if v == INTEL]


def _amd_rows(loaded, patch):
    """(signature, pf_mask) rows of an AMD patch: every CPU its container maps to it."""
    for c in loaded.amd:
        if any(p is patch for p in c.patches):
            sigs = [e.installed_cpu for e in c.equiv_table if e.equiv_id == patch.processor_rev_id]
            return [(s, 0) for s in sigs] or [(0, 0)]
    return [(0, 0)]


def _rows(loaded, obj, pairs=None):
    fno, rno, path, _, vendor = loaded.index[id(obj)]
    if pairs is None:
        pairs = obj.signatures if vendor == INTEL else _amd_rows(loaded, obj)
    size = obj.total_size if vendor == INTEL else obj.size
    return [dict(signature=s, pf_mask=p, revision=obj.revision, date=obj.date, size=size,
                 file=path, _tag=f"{fno:03d}/{rno:03d}") for s, p in pairs]


def _line(tag, sig, pf, date, rev, size=None):
    """One iucode_tool listing line (``-l``/``-L``; a continuation line without tag/size)."""
    head = f"  {tag}: " if tag else "           "
    tail = f", size {size}" if size is not None else ""
    return f"{head}sig 0x{sig:08x}, pf_mask 0x{pf:02x}, {date}, rev 0x{rev:04x}{tail}"


def _print_json(rows):
    import json
    print(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
                     indent=1))


def _print_rows(rows, as_json):
    if as_json:
        _print_json(rows)
        return
    sys.stdout.write("".join(
        _line(r["_tag"], r["signature"], r["pf_mask"], r["date"], r["revision"], r["size"])
        + "\n" for r in rows))


# --- selection options (iucode_tool's names) ---------------------------------------

class _Ordered(argparse.Action):
    """``-s`` and ``-S`` in command-line order (later ones override earlier ones)."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((self.const, values))
        setattr(namespace, self.dest, items)


def _parse_scan(text):
    """``-S`` CPU: ``SIG[,PF_MASK[,REV]]`` (pf and current revision optional)."""
    parts = [x.strip() for x in str(text).split(",")]
    if len(parts) > 3 or not parts[0]:
        raise UsageError(f"--scan-system: expected SIG[,PF_MASK[,REV]], got {text!r}")
    sig = parse_number(parts[0], "--scan-system signature")
    pf = parse_number(parts[1], "--scan-system pf mask") if len(parts) > 1 and parts[1] else None
    rev = parse_number(parts[2], "--scan-system revision") if len(parts) > 2 and parts[2] else None
    return sig, pf, rev


class Options(namedtuple("Options", "filters date_before date_after loose downgrade strict "
                         "ignore_broken")):
    __slots__ = ()

    @property
    def selecting(self):
        return self.filters is not None or self.date_before is not None \
            or self.date_after is not None


def selection_options(args):
    """The parsed selection options; UsageError naming the option on bad input."""
    filters = None
    if getattr(args, "select", None) or args.date_before is not None \
            or args.date_after is not None:
        from . import iucode            # not needed to list every record
    for kind, value in getattr(args, "select", None) or []:
        filters = filters or iucode.Filters()
        if kind == "s":
            try:
                filters.add(iucode.parse_select(value))
            except ValueError as e:
                raise UsageError(str(e)) from None
        else:
            sig, pf, rev = _parse_scan(value)
            filters.add_scan(iucode.scan_system_filters(sig, pf, rev))
    dates = {}
    for opt in ("date_before", "date_after"):
        v = getattr(args, opt, None)
        if v is not None:
            try:
                dates[opt] = iucode.parse_date(v, "--" + opt.replace("_", "-"))
            except ValueError as e:
                raise UsageError(str(e)) from None
    return Options(filters, dates.get("date_before"), dates.get("date_after"),
                   bool(getattr(args, "loose", False)), bool(getattr(args, "downgrade", False)),
                   args.strict, args.ignore_broken)


def _add_selection_options(p, signature_alias=False):
    names = ("-s", "--select", "--signature") if signature_alias else ("-s", "--select")
    p.add_argument(*names, dest="select", action=_Ordered, const="s",
                   metavar="[!]SIG[,[PF_MASK][,[eq:|lt:|gt:]REV]]",
                   help="select (or with ! deselect) by signature, platforms, revision; "
                        "repeatable, later ones override earlier ones; -s ! selects "
                        "nothing by default")
    p.add_argument("-S", "--scan-system", dest="select", action=_Ordered, const="S",
                   metavar="SIG[,PF_MASK[,REV]]",
                   help="select for this CPU: every stepping of its family/model "
                        "(iucode_tool's fast scan), narrowed to its platforms and to "
                        "revisions above REV when given")
    p.add_argument("--date-before", metavar="YYYY-MM-DD", help="only microcodes dated before")
    p.add_argument("--date-after", metavar="YYYY-MM-DD", help="only microcodes dated after")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--loose-date-filtering", dest="loose", action="store_true",
                   help="also every other revision of a microcode with one in the range")
    g.add_argument("--strict-date-filtering", dest="loose", action="store_false",
                   help="only microcodes inside the date range (default)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--downgrade", dest="downgrade", action="store_true",
                   help="keep the microcode of the file loaded last, whatever its revision")
    g.add_argument("--no-downgrade", dest="downgrade", action="store_false",
                   help="keep the highest revision (default)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--strict-checks", dest="strict", action="store_true", default=True,
                   help="refuse odd sizes, bad dates and same sig/rev with another "
                        "payload (default)")
    g.add_argument("--no-strict-checks", "--no-strict", dest="strict", action="store_false",
                   help="accept non-KiB sizes and bad dates")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--ignore-broken", dest="ignore_broken", action="store_true",
                   help="skip broken microcodes instead of aborting")
    g.add_argument("--no-ignore-broken", dest="ignore_broken", action="store_false")


def _select(loaded, opts):
    """iucode_tool's selection; conflicts printed; (selection, aborted)."""
    from . import iucode
    sel = iucode.select(loaded.intel_records(), opts.filters, date_before=opts.date_before,
                        date_after=opts.date_after, loose=opts.loose,
                        downgrade=opts.downgrade, strict=opts.strict,
                        ignore_broken=opts.ignore_broken)
    for d in sel.conflicts:
        kind = "warning: " if opts.ignore_broken else ""
        print(f"microcode: {kind}{d}", file=sys.stderr)
    return sel, bool(sel.conflicts) and not opts.ignore_broken


def _abort(what):
    print(f"microcode: damaged input, {what} (--ignore-broken skips broken microcodes)",
          file=sys.stderr)
    return 1


def _amd_selected(loaded, opts):
    """AMD patches kept by the signature filters (pf and dates do not apply to AMD)."""
    from .iucode import s32
    out = []
    for _, _, _, p, v in loaded.records:
        if v != AMD:
            continue
        sigs = [s for s, _ in _amd_rows(loaded, p)]
        if opts.filters is None or any(opts.filters.selected(s, 0, s32(p.revision)) for s in sigs):
            out.append(p)
    return out


def write_atomic(path, data, overwrite):
    """Write ``data`` to ``path`` whole or not at all: a temporary file in the same
    directory, renamed (``--overwrite``) or hard-linked (refusing an existing file) at
    the end. A symlink at ``path`` is replaced, never followed."""
    import tempfile
    d = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".microcode-", dir=d)
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        raise UsageError(f"{path}: exists (use --overwrite)") from None
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _refuse_existing(path, overwrite):
    if path and os.path.lexists(path) and not overwrite:
        raise UsageError(f"{path}: exists (use --overwrite)")


# --- handlers ------------------------------------------------------------------------

class _Formatter(argparse.HelpFormatter):
    """argparse asks ``shutil`` for the terminal width whenever a parser is built; only
    a terminal needs it (the command imports what it uses)."""

    def __init__(self, prog, *a, **kw):
        if kw.get("width") is None and not sys.stdout.isatty():
            # the terminal's own variable, as argparse reads it; not through
            # harness.settings: this toolkit imports nothing outside harness/microcode/
            kw["width"] = int(os.environ.get("COLUMNS", "0") or 0) or 80
        super().__init__(prog, *a, **kw)


def _guard(fn):
    def handler(args):
        try:
            return fn(args)
        except UsageError as e:
            print(f"microcode: {e}", file=sys.stderr)
            return 2
    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


def _list_all_lines(loaded):
    """``iucode_tool -L``: each file's bundle line, then each of its records with the
    extended entries on continuation lines."""
    out, by_file = [], {}
    for r in loaded.records:
        by_file.setdefault(r[0], []).append(r)
    for i, f in enumerate(loaded.files, 1):
        out.append(f"microcode bundle {i}: {f}")
        out += _record_lines(loaded, by_file.get(i, ()))
    return out


def _record_lines(loaded, records):
    out = []
    for fno, rno, _, obj, vendor in records:
        tag = f"{fno:03d}/{rno:03d}"
        if vendor == INTEL:
            out.append(_line(tag, obj.signature, obj.pf_mask, obj.date, obj.revision,
                             obj.total_size))
            for e in obj.ext_signatures:
                out.append(_line(None, e.signature, e.pf_mask, obj.date, obj.revision))
        else:
            for i, (s, p) in enumerate(_amd_rows(loaded, obj)):
                out.append(_line(tag if not i else None, s, p, obj.date, obj.revision,
                                 obj.size if not i else None))
    return out


@_guard
def cmd_list(args):
    """iucode_tool -L (every record) or, with -l or a selection option, -l (the selection)."""
    opts = selection_options(args)
    _refuse_existing(args.write_to, args.overwrite)
    loaded = Loaded(args.paths, strict=opts.strict)
    damaged = loaded.report_defects()
    if damaged and not opts.ignore_broken:
        return _abort("nothing listed or written")
    latest = args.latest or opts.selecting or args.write_to
    sel = None
    if latest or args.json:
        sel, aborted = _select(loaded, opts)
        if aborted:
            return _abort("nothing listed or written")
    if args.json:
        if latest:
            rows = [row for e in sel.entries
                    for row in _rows(loaded, e.update, [(e.cpuid, e.pfm)])]
            rows += [row for p in _amd_selected(loaded, opts) for row in _rows(loaded, p)]
        else:
            rows = [row for _, _, _, obj, _ in loaded.records for row in _rows(loaded, obj)]
        _print_json(rows)
    else:
        if latest:
            lines = [f"microcode bundle {i}: {f}" for i, f in enumerate(loaded.files, 1)]
            lines.append("selected microcodes:")
            lines += [_line(f"{e.gid:03d}/{e.id:03d}", e.cpuid, e.pfm, e.update.date,
                            e.update.revision, e.update.total_size) for e in sel.entries]
            lines += [x for p in _amd_selected(loaded, opts)
                      for x in (_line(r["_tag"], r["signature"], r["pf_mask"], r["date"],
                                      r["revision"], r["size"]) for r in _rows(loaded, p))]
        else:
            lines = _list_all_lines(loaded)
        sys.stdout.write("".join(x + "\n" for x in lines))
    if args.write_to:
        data = b"".join(u.raw for u in sel.updates)
        if not data:
            print(f"microcode: nothing selected, {args.write_to} not written", file=sys.stderr)
            return 1
        write_atomic(args.write_to, data, args.overwrite)
    return 0


class _CliCpu(namedtuple("_CliCpu", "vendor signature pf_mask revision")):
    """A CPU given on the command line (a pf *mask*, not only one platform id)."""

    __slots__ = ()


@_guard
def cmd_select(args):
    """What Linux's loader (``--kernel`` generation, early or ``--late``) would load."""
    from . import linux
    sig = parse_number(args.signature, "--signature")
    rev = parse_number(args.revision, "--revision") if args.revision is not None else 0
    loaded = Loaded(args.paths)
    damaged = loaded.report_defects()
    vendor = args.vendor
    if vendor == "auto":
        vendor = AMD if loaded.amd and not loaded.intel else INTEL
    vendor = AMD if vendor in ("amd", AMD) else INTEL
    if vendor == AMD:
        if args.late:
            raise UsageError("--late: only Intel late loading is modelled")
        choice = linux.early_amd(loaded.amd, _CliCpu(AMD, sig, 0, rev), args.kernel)
        safe = None
    else:
        if args.platform_id is not None:
            pid = parse_number(args.platform_id, "--platform-id")
            if not 0 <= pid <= 7:
                raise UsageError(f"--platform-id: must be 0..7, got {pid}")
            pf = 1 << pid
        else:
            pf = parse_number(args.pf_mask, "--pf-mask") if args.pf_mask is not None else 0xFF
        cpu = _CliCpu(INTEL, sig, pf, rev)
        if args.late:
            late = linux.late_intel(loaded.intel, cpu, args.kernel, force_minrev=args.force_minrev)
            choice, safe = (late.update, late.safe) if late else (None, None)
        else:
            choice, safe = linux.early_intel(loaded.intel, cpu, args.kernel), None
    if choice is None:
        print("no applicable update" if not args.json else "[]")
        return 1
    if vendor == AMD:
        pairs = [(sig, 0)]
    else:
        from .select import signatures_match
        pairs = [next((s, p) for s, p in choice.signatures if signatures_match(sig, pf, s, p))]
    rows = _rows(loaded, choice, pairs)
    if safe is not None:
        for r in rows:
            r["minrev_safe"] = safe
    _print_rows(rows, args.json)
    if safe is False:
        print(f"microcode: warning: min_req_ver 0x{choice.min_req_ver:x} not met by current "
              f"revision 0x{rev:x}: Linux {args.kernel} loads it unsafely and taints "
              f"(--force-minrev refuses it)", file=sys.stderr)
    return 1 if damaged else 0


@_guard
def cmd_pack_early(args):
    """Write the early-microcode cpio for the selected updates (all or nothing)."""
    from .cpio import build_early_cpio
    opts = selection_options(args)
    mtime = parse_number(args.mtime, "--mtime") if args.mtime is not None else None
    _refuse_existing(args.out, args.overwrite)
    loaded = Loaded(args.paths, strict=opts.strict)
    if loaded.report_defects() and not opts.ignore_broken:
        return _abort(f"{args.out} not written")
    sel, aborted = _select(loaded, opts)
    if aborted:
        return _abort(f"{args.out} not written")
    from .select import pack_amd
    intel = b"".join(u.raw for u in sel.updates) or None
    wanted = {id(p) for p in _amd_selected(loaded, opts)}
    conts = [c for c in loaded.amd if any(id(p) in wanted for p in c.patches)]
    amd = pack_amd(conts) or None
    if intel is None and amd is None:
        print("microcode: nothing selected, no file written", file=sys.stderr)
        return 1
    image = build_early_cpio(intel, amd, mtime=mtime)
    write_atomic(args.out, image, args.overwrite)
    print(f"wrote {args.out}: {len(sel.updates)} Intel update(s), {len(conts)} AMD "
          f"container(s), {len(image)} bytes")
    return 0


@_guard
def cmd_find(args):
    """Locate a file inside an initrd the way the kernel does; list microcode in it."""
    from .cpio import AMD_PATH, INTEL_PATH, find_cpio_data
    image = _read(args.image) if os.path.isfile(args.image) else None
    if image is None:
        raise UsageError(f"{args.image}: no such file")
    hit = find_cpio_data(image, args.path)
    if hit is None:
        print(f"{args.path}: not found", file=sys.stderr)
        return 1
    print(f"{args.path}: offset 0x{hit.offset:x}, size {len(hit.data)}")
    if args.out:
        try:
            with open(args.out, "wb") as f:
                f.write(hit.data)
        except OSError as e:
            raise UsageError(f"{args.out}: {e.strerror or e}") from None
    if args.path in (INTEL_PATH, AMD_PATH):
        from .amd import parse_amd
        res = parse_amd(hit.data) if hit.data[:4] == AMD_MAGIC else parse_intel(hit.data)
        for d in res.defects:
            print(f"microcode: {d}", file=sys.stderr)
        items = res.updates if hasattr(res, "updates") else res.patches
        for i, u in enumerate(items, 1):
            pf = getattr(u, "pf_mask", 0)
            sig = getattr(u, "signature", getattr(u, "processor_rev_id", 0))
            print(f"  {i:03d}: sig 0x{sig:08x}, pf_mask 0x{pf:02x}, {u.date}, "
                  f"rev 0x{u.revision:04x}, size {len(u.raw)}")
        return 0 if res.ok else 1
    return 0


def _no_action(parser):
    def handler(args):
        parser.print_usage(sys.stderr)
        print("microcode: choose a subcommand: list, select, pack-early, find", file=sys.stderr)
        return 2
    return handler


def _list_parser(sub):
    p = sub.add_parser("list", formatter_class=_Formatter,
                       help="list the updates in files or directories")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="JSON list, one object per (sig, pf)")
    p.add_argument("-l", "--latest", action="store_true",
                   help="the selection (iucode_tool -l); implied by any selection option")
    p.add_argument("-w", "--write-to", metavar="FILE",
                   help="write the selected microcodes as one binary bundle")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    _add_selection_options(p)
    p.set_defaults(func=cmd_list)


def _select_parser(sub):
    p = sub.add_parser("select", formatter_class=_Formatter,
                       help="the update Linux would load for a CPU")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--signature", required=True, help="CPUID(1).EAX, e.g. 0x906ea")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pf-mask", help="the CPU's platform mask (default 0xff: any platform)")
    g.add_argument("--platform-id", help="MSR 0x17 platform id 0..7 (pf mask = 1 << id)")
    p.add_argument("--revision", help="current revision (MSR 0x8B); default 0")
    p.add_argument("--vendor", choices=("auto", "intel", "amd"), default="auto")
    p.add_argument("--kernel", choices=("6.1", "6.7"), default="6.1",
                   help="Linux generation whose rules apply: 6.1 (Debian 12's guest, "
                        "default) or 6.7 (6.7 and later)")
    p.add_argument("--late", action="store_true",
                   help="late loading (/sys/.../microcode/reload) instead of early (Intel)")
    p.add_argument("--force-minrev", action="store_true",
                   help="with --late --kernel 6.7: refuse updates whose min_req_ver the "
                        "current revision does not meet (microcode=force_minrev)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_select)


def _pack_early_parser(sub):
    p = sub.add_parser("pack-early", formatter_class=_Formatter,
                       help="write the early-microcode cpio (like --write-earlyfw)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--out", required=True, metavar="FILE")
    _add_selection_options(p, signature_alias=True)
    p.add_argument("--mtime", help="entry mtime (default: newest update date, 12:00 UTC)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_pack_early)


def _find_parser(sub):
    p = sub.add_parser("find", formatter_class=_Formatter,
                       help="find a file in an initrd as the kernel does")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("path", metavar="PATH-IN-CPIO")
    p.add_argument("--out", metavar="FILE", help="also write the file's bytes here")
    p.set_defaults(func=cmd_find)


COMMANDS = {"list": _list_parser, "select": _select_parser, "pack-early": _pack_early_parser,
            "find": _find_parser}


def register(subparsers, only=None):
    """Add ``microcode`` (list/select/pack-early/find) to an argparse subparsers object.

    Returns the ``microcode`` parser. Every leaf sets ``func=handler``; call
    ``args.func(args)`` and use the int it returns as the exit status. ``only``: build
    just that subcommand (``main`` does when the command line names one).
    """
    mc = subparsers.add_parser("microcode", formatter_class=_Formatter,
                               help="inspect, select and pack x86 microcode",
                               description=__doc__.split("\n\n")[0])
    mc.set_defaults(func=_no_action(mc))
    sub = mc.add_subparsers(dest="microcode_command", metavar="COMMAND")
    for name, build in COMMANDS.items():
        if only is None or name == only:
            build(sub)
    return mc


def main(argv=None):
    """``python -m harness microcode ...`` without the rest of the harness CLI (only the
    named subcommand's parser is built; any other word gets them all, for help)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    only = argv[1] if len(argv) > 1 and argv[0] == "microcode" and argv[1] in COMMANDS else None
    parser = argparse.ArgumentParser(prog="python -m harness", formatter_class=_Formatter)
    register(parser.add_subparsers(dest="command"), only)
    args = parser.parse_args(argv)
    return args.func(args)
