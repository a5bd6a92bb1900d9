"""``microcode`` subcommand: list, select, pack-early, find.

Why: engineers need to inspect the microcode files a scenario uses, see which update a
CPU would get and build/inspect early-microcode initrds without leaving the harness.
``register(subparsers)`` plugs this into the main ``argparse`` CLI (``harness/cli.py``);
every handler returns an exit status and never lets a traceback reach the user:

- 0 success; 1 the files were read but are damaged (defects printed) or nothing was
  found/selected; 2 bad user input (missing file, bad number, refusing to overwrite).

Output lines mimic ``iucode_tool -l``:
``  001/002: sig 0x000906ea, pf_mask 0x22, 2024-11-17, rev 0x00f0, size 1024`` where
001 is the file number on the command line and 002 the record number in it.
"""

import json
import os
import sys
from typing import NamedTuple

from .amd import CONTAINER_MAGIC_BYTES, parse_amd
from .cpio import AMD_PATH, INTEL_PATH, build_early_cpio, find_cpio_data
from .intel import parse_intel
from .select import AMD, INTEL, iucode_select, pack_amd, signatures_match

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


def parse_sig_filter(text):
    """``SIG[,PF]`` → (sig, pf or None)."""
    parts = str(text).split(",")
    if len(parts) > 2 or not parts[0]:
        raise UsageError(f"--signature: expected SIG[,PF_MASK], got {text!r}")
    sig = parse_number(parts[0], "--signature")
    pf = parse_number(parts[1], "--signature pf mask") if len(parts) == 2 and parts[1] else None
    return sig, pf


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


class Loaded:
    """Everything parsed from the command-line paths."""

    def __init__(self, paths, strict=True):
        self.files = expand_paths(paths)
        self.intel, self.amd, self.defects = [], [], []
        self.records = []           # (file_no, record_no, file, update_or_patch, vendor)
        for fno, path in enumerate(self.files, 1):
            data = _read(path)
            if data[:4] == CONTAINER_MAGIC_BYTES:
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


def _print_rows(rows, as_json):
    if as_json:
        print(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
                         indent=1))
        return
    for r in rows:
        print(f"  {r['_tag']}: sig 0x{r['signature']:08x}, pf_mask 0x{r['pf_mask']:02x}, "
              f"{r['date']}, rev 0x{r['revision']:04x}, size {r['size']}, {r['file']}")


# --- handlers ------------------------------------------------------------------------

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


@_guard
def cmd_list(args):
    """One line per (update, sig, pf); with --latest, iucode_tool -l's selection."""
    loaded = Loaded(args.paths, strict=not args.no_strict)
    damaged = loaded.report_defects()
    if args.latest:
        sel = iucode_select(loaded.intel)
        for d in sel.conflicts:
            print(f"microcode: {d}", file=sys.stderr)
        rows = [row for e in sel.entries for row in _rows(loaded, e.update, [(e.signature, e.pf_mask)])]
        rows += [row for _, _, _, p, v in loaded.records if v == AMD for row in _rows(loaded, p)]
        damaged = damaged or bool(sel.conflicts)
    else:
        rows = [row for _, _, _, obj, _ in loaded.records for row in _rows(loaded, obj)]
    _print_rows(rows, args.json)
    return 1 if damaged else 0


class _CliCpu(NamedTuple):
    """A CPU given on the command line (a pf *mask*, not only one platform id)."""

    vendor: str
    signature: int
    pf_mask: int
    revision: int


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
    """Write the early-microcode cpio for the selected updates."""
    filters = [parse_sig_filter(s) for s in args.signature] or None
    mtime = parse_number(args.mtime, "--mtime") if args.mtime is not None else None
    if os.path.lexists(args.out) and not args.overwrite:
        raise UsageError(f"{args.out}: exists (use --overwrite)")
    loaded = Loaded(args.paths)
    damaged = loaded.report_defects()
    sel = iucode_select(loaded.intel, filters)
    for d in sel.conflicts:
        print(f"microcode: {d}", file=sys.stderr)
    if sel.conflicts:
        print("microcode: refusing to pack conflicting updates", file=sys.stderr)
        return 1
    intel = b"".join(u.raw for u in sel.updates) or None
    conts = loaded.amd
    if filters is not None:
        wanted = {s for s, _ in filters}
        conts = [c for c in conts if any(e.installed_cpu in wanted for e in c.equiv_table)]
    amd = pack_amd(conts) or None
    if intel is None and amd is None:
        print("microcode: nothing selected, no file written", file=sys.stderr)
        return 1
    image = build_early_cpio(intel, amd, mtime=mtime)
    try:
        if args.overwrite and os.path.lexists(args.out):
            os.unlink(args.out)
        with open(args.out, "xb") as f:
            f.write(image)
    except OSError as e:
        raise UsageError(f"{args.out}: {e.strerror or e}") from None
    print(f"wrote {args.out}: {len(sel.updates)} Intel update(s), {len(conts)} AMD "
          f"container(s), {len(image)} bytes")
    return 1 if damaged else 0


@_guard
def cmd_find(args):
    """Locate a file inside an initrd the way the kernel does; list microcode in it."""
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
        res = parse_amd(hit.data) if hit.data[:4] == CONTAINER_MAGIC_BYTES else parse_intel(hit.data)
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


def register(subparsers):
    """Add ``microcode`` (list/select/pack-early/find) to an argparse subparsers object.

    Returns the ``microcode`` parser. Every leaf sets ``func=handler``; call
    ``args.func(args)`` and use the int it returns as the exit status.
    """
    mc = subparsers.add_parser("microcode", help="inspect, select and pack x86 microcode",
                               description=__doc__.split("\n\n")[0])
    mc.set_defaults(func=_no_action(mc))
    sub = mc.add_subparsers(dest="microcode_command", metavar="COMMAND")

    p = sub.add_parser("list", help="list the updates in files or directories")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="JSON list, one object per (sig, pf)")
    p.add_argument("--latest", action="store_true",
                   help="only the newest revision per (sig, pf), sorted (iucode_tool -l)")
    p.add_argument("--no-strict", action="store_true",
                   help="accept non-KiB sizes and bad dates (iucode_tool --no-strict-checks)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("select", help="the update Linux would load for a CPU")
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

    p = sub.add_parser("pack-early", help="write the early-microcode cpio (like --write-earlyfw)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--signature", action="append", default=[], metavar="SIG[,PF]",
                   help="select only these (repeatable, like iucode_tool -s)")
    p.add_argument("--mtime", help="entry mtime (default: newest update date, 12:00 UTC)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_pack_early)

    p = sub.add_parser("find", help="find a file in an initrd as the kernel does")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("path", metavar="PATH-IN-CPIO")
    p.add_argument("--out", metavar="FILE", help="also write the file's bytes here")
    p.set_defaults(func=cmd_find)
    return mc
