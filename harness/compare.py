"""Compare two traces (QEMU against the model) step by step: the first divergence, and
what was compared and what could not be (docs/trace-format.md).

For each step, in order,
- must be equal: op and arguments; the kind of error (none, refused, hang, check,
  crash, error); a refusal's message; a hang's signature (evidence, CPUs in SMM,
  halted, spinning, at the default SMBASE); which checks passed; a crash's signal and
  message when both are QEMU's words (one contained in the other: the model keeps the
  essential part of QEMU's line);
- in snapshots (a step's own, and the one taken just before an ``unplug``): the set of
  CPUs (by cpu index) and per CPU its APIC id, SMBASE, in-SMM, guest online state and
  microcode revision; TSEG base, size and lock; the negotiated SMI features;
- not compared: durations, versions, paths; ``halted`` outside a hang (an idle guest's
  CPUs halt and wake at will); absolute SMI counts (boot firmware raises a
  build-dependent number of SMIs); the CPU state of one instant of a reset loop.

Nothing is skipped quietly. A value one side does not know is an item of the coverage
report ("smbase at step 5 (check), after the unplug at step 4: not observable on QEMU
7.2.22 (...)"). And a value one side does not know may not change unseen: if the other
side's value differs from the last value both sides observed for that CPU and field,
that is a divergence (a model that moved an SMBASE or unlocked TSEG while QEMU could
only be read through QMP is caught).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .diagnosis import CYCLING_EVIDENCE
from .report import cpu_table
from .snapshot import Snapshot
from .trace import read_trace

CPU_FIELDS = ("apic_id", "smbase", "in_smm", "online", "ucode_rev", "guest_ucode_rev",
              "guest_msr_ucode", "guest_ucode_sysfs", "vendor")
# in a hang, halted matters too: it is part of the signature
HANG_CPU_FIELDS = ("apic_id", "smbase", "in_smm", "halted")
SIGNATURE_FIELDS = ("evidence", "in_smm", "halted", "spinning", "smbase_default")
TSEG_FIELDS = ("base", "size", "locked")


@dataclass
class Divergence:
    step: int
    op: str
    field: str
    cpu: int | None
    left: object
    right: object
    left_name: str
    right_name: str
    left_snapshot: dict | None = None
    right_snapshot: dict | None = None
    line: int | None = None
    note: str = ""


@dataclass
class Coverage:
    """What was compared, and what one side (or both) could not observe, by field."""
    compared: dict = field(default_factory=dict)      # field -> set of step labels
    unobserved: dict = field(default_factory=dict)    # (field, why) -> list of labels
    notes: list = field(default_factory=list)

    def saw(self, name, label):
        self.compared.setdefault(name, [])
        if label not in self.compared[name]:
            self.compared[name].append(label)

    def missed(self, name, label, why):
        labels = self.unobserved.setdefault((name, why), [])
        if label not in labels:
            labels.append(label)

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)

    def lines(self):
        out = ["compared:"]
        if not self.compared:
            out.append("  nothing (no step both traces ran)")
        for name, labels in self.compared.items():
            out.append(f"  {name}: {_labels(labels)}")
        if self.unobserved or self.notes:
            out.append("not compared:")
        for (name, why), labels in self.unobserved.items():
            out.append(f"  {name} {_labels(labels)}: {why}")
        for text in self.notes:
            out.append(f"  {text}")
        return out


def _labels(labels):
    return ", ".join(labels)


@dataclass
class Comparison:
    divergence: Divergence | None
    coverage: Coverage


def _err_kind(step):
    return (step.get("error") or {}).get("kind")


def _snapshot(record):
    """A trace's snapshot record (or a hang's per-CPU table) as a Snapshot."""
    return Snapshot.from_dict(record) if record else None


def _hang_snapshot(step):
    """A hang's state: the diagnosis snapshot, or at least its per-CPU table."""
    diag = (step.get("error") or {}).get("diagnosis") or {}
    if diag.get("snapshot"):
        return diag["snapshot"]
    return {"cpus": diag["cpus"]} if diag.get("cpus") else None


class _Walk:
    def __init__(self, ha, hb):
        self.na, self.nb = ha.get("backend", "A"), hb.get("backend", "B")
        if self.na == self.nb:
            self.na, self.nb = f"{self.na} (A)", f"{self.nb} (B)"
        self.who = {0: _who(ha, self.na), 1: _who(hb, self.nb)}
        self.cov = Coverage()
        self.agreed = {}          # (cpu or None, field) -> (label, value) both observed
        self.unplug_at = None     # step index of the last unplug

    def why_missing(self, side, snap):
        source = (snap or {}).get("source")
        who = self.who[side]
        if source == "qmp":
            return (f"not observable on {who} (snapshot from QMP/HMP only: a migration "
                    f"after an unplug would crash or stall this QEMU)")
        if snap is None:
            return f"not observable on {who} (no snapshot)"
        return f"not reported by {who}"

    def value(self, name, label, cpu, va, vb, snaps):
        """Compare one value; returns (field, cpu, a, b, note) of a divergence or None."""
        key = (cpu, name)
        if va is not None and vb is not None:
            self.cov.saw(name, label)
            if va != vb:
                return (name, cpu, va, vb, "")
            self.agreed[key] = (label, va)
            return None
        if va is None and vb is None:
            self.cov.missed(name, label, "known to neither side")
            return None
        side = 0 if va is None else 1
        self.cov.missed(name, label, self.why_missing(side, snaps[side]))
        known = vb if va is None else va
        if key in self.agreed and self.agreed[key][1] != known:
            seen_at, seen = self.agreed[key]
            note = (f"changed where {self.who[side]} could not observe it (both saw "
                    f"{_v(seen)} at {seen_at})")
            return (name, cpu, va, vb, note)
        return None

    def snapshots(self, a, b, label, fields=CPU_FIELDS):
        """(field, cpu, a, b, note) of the first difference between two snapshots."""
        snaps = (a, b)
        ia = sorted(c["index"] for c in a.get("cpus", []))
        ib = sorted(c["index"] for c in b.get("cpus", []))
        self.cov.saw("cpus", label)
        if ia != ib:
            return ("cpus", None, ia, ib, "")
        ca = {c["index"]: c for c in a.get("cpus", [])}
        cb = {c["index"]: c for c in b.get("cpus", [])}
        for i in ia:
            for f in fields:
                d = self.value(f, label, i, ca[i].get(f), cb[i].get(f), snaps)
                if d:
                    return d
        ta, tb = a.get("tseg") or {}, b.get("tseg") or {}
        for f in TSEG_FIELDS:
            d = self.value(f"tseg.{f}", label, None, ta.get(f), tb.get(f), snaps)
            if d:
                return d
        fa = (a.get("smi_features") or {}).get("names")
        fb = (b.get("smi_features") or {}).get("names")
        return self.value("smi_features", label, None,
                          sorted(fa) if fa is not None else None,
                          sorted(fb) if fb is not None else None, snaps)


def _who(header, name):
    info = header.get("info") or {}
    if header.get("backend") == "qemu" and info.get("qemu_version"):
        return f"QEMU {info['qemu_version']}"
    return name


def compare(path_a, path_b) -> Comparison:
    """Walk both traces; stop at the first divergence; say what was compared."""
    ha, sa, _ = read_trace(path_a)
    hb, sb, _ = read_trace(path_b)
    w = _Walk(ha, hb)

    def div(step, fld, cpu, va, vb, snap_a=None, snap_b=None, note=""):
        return Comparison(Divergence(
            step=step.get("index"), op=step.get("op"), field=fld, cpu=cpu, left=va,
            right=vb, left_name=w.na, right_name=w.nb, left_snapshot=snap_a,
            right_snapshot=snap_b, line=step.get("line"), note=note), w.cov)

    for x, y in zip(sa, sb):
        label = f"step {x.get('index')} ({x.get('op')})"
        if w.unplug_at is not None:
            label += f" after the unplug at step {w.unplug_at}"
        if (x["op"], x["args"]) != (y["op"], y["args"]):
            return div(x, "step", None, f"{x['op']} {x['args']}", f"{y['op']} {y['args']}")
        # the snapshot taken just before an unplug (QEMU migrates it while it still can)
        ba = (x.get("result") or {}).get("before") if isinstance(x.get("result"), dict) \
            else None
        bb = (y.get("result") or {}).get("before") if isinstance(y.get("result"), dict) \
            else None
        if ba or bb:
            blabel = f"step {x.get('index')} (before the unplug)"
            if ba and bb:
                d = w.snapshots(ba, bb, blabel)
                if d:
                    return div(x, *d[:4], ba, bb, note=d[4])
            else:
                w.cov.missed("snapshot", blabel, w.why_missing(0 if not ba else 1, None))
        ka, kb = _err_kind(x), _err_kind(y)
        snap_a = x.get("snapshot") or _hang_snapshot(x)
        snap_b = y.get("snapshot") or _hang_snapshot(y)
        w.cov.saw("outcome", label)
        if ka != kb:
            return div(x, "outcome", None, ka or "ok", kb or "ok", snap_a, snap_b)
        ea, eb = x.get("error") or {}, y.get("error") or {}
        if ka == "refused":
            w.cov.saw("refusal message", label)
            if ea.get("message") != eb.get("message"):
                return div(x, "refusal message", None, ea.get("message"), eb.get("message"))
        if ka == "crash":
            d = _crash(w, label, ea, eb)
            if d:
                return div(x, *d)
        hang_fields = CPU_FIELDS
        if ka == "hang":
            siga, sigb = ea.get("signature") or {}, eb.get("signature") or {}
            pinned = _pinned_signature(ha, hb)
            for f in SIGNATURE_FIELDS:
                if pinned is not None and f != "evidence" and f not in pinned:
                    w.cov.missed(f"hang.{f}", label, "not pinned by the scenario's hang "
                                 "expectation (where those CPUs end is timing-dependent)")
                    continue
                if f in siga and f in sigb:
                    w.cov.saw(f"hang.{f}", label)
                    if siga[f] != sigb[f]:
                        return div(x, f"hang.{f}", None, siga[f], sigb[f], snap_a, snap_b)
                else:
                    w.cov.missed(f"hang.{f}", label, "not in both signatures (an older "
                                 "trace)")
            hang_fields = HANG_CPU_FIELDS
            if pinned is not None:
                hang_fields = tuple(f for f in HANG_CPU_FIELDS
                                    if f not in ("in_smm", "halted") or f in pinned)
            cycling = {siga.get("evidence"), sigb.get("evidence")} & set(CYCLING_EVIDENCE)
            if cycling:
                hang_fields = ("apic_id", "smbase")
                what = " or ".join(CYCLING_EVIDENCE[k] for k in sorted(cycling))
                w.cov.note(f"in_smm, halted at {label}: one instant of a {what}, "
                           f"not compared")
        if ka == "check":
            pa = {c["name"]: c["passed"] for c in ea.get("checks", [])}
            pb = {c["name"]: c["passed"] for c in eb.get("checks", [])}
            w.cov.saw("checks passed", label)
            if pa != pb:
                return div(x, "checks", None, pa, pb, snap_a, snap_b)
        if snap_a and snap_b:
            d = w.snapshots(snap_a, snap_b, label, hang_fields)
            if d:
                return div(x, *d[:4], snap_a, snap_b, note=d[4])
        elif snap_a or snap_b:
            w.cov.missed("snapshot", label, w.why_missing(0 if not snap_a else 1, None))
        if x["op"] == "unplug":
            w.unplug_at = x.get("index")
        if x["op"] == "boot":
            _resumed_boot(w, label, x, y)
    if len(sa) != len(sb):
        longer = sa if len(sa) > len(sb) else sb
        extra = longer[min(len(sa), len(sb))]
        return div(extra, "steps run", None, len(sa), len(sb))
    return Comparison(None, w.cov)


def _resumed_boot(w, label, x, y):
    """A boot resumed from the boot cache (harness/qemu/bootcache.py) did not run the
    firmware in this run: say so, since the steps after it are compared as always."""
    for side, step in enumerate((x, y)):
        res = step.get("result") if isinstance(step.get("result"), dict) else {}
        if res.get("boot") == "resumed":
            w.cov.note(f"the firmware boot at {label}: {w.who[side]} resumed a machine "
                       f"booted earlier (boot cache {res.get('boot_cache')}), so this "
                       f"run did not boot the firmware; its state after boot was "
                       f"compared as always")


def _pinned_signature(ha, hb):
    """The hang signature fields the scenario's expectation pins, when it pins some and
    both traces agree on it (the header's ``expect``); None: compare every field. A
    scenario that pins only some (hotadd-back-to-back: which new CPU the broadcast SMI
    reaches first is a race) is compared on those, the rest listed as not compared."""
    ea, eb = ha.get("expect") or {}, hb.get("expect") or {}
    if ea.get("outcome") != "hang" or ea != eb:
        return None
    pinned = {f for f in ("in_smm", "halted", "spinning", "smbase_default") if f in ea}
    return pinned or None


def _crash(w, label, ea, eb):
    """A crash's signal and message, compared only where both are QEMU's words."""
    sources = (ea.get("message_source", "qemu"), eb.get("message_source", "qemu"))
    rule = [(w.who[i], s) for i, s in enumerate(sources) if s != "qemu"]
    if rule:
        who, what = rule[0]
        w.cov.note(f"crash message and signal at {label}: {who}'s is a {what}, not "
                   f"QEMU's words")
        return None
    w.cov.saw("crash signal", label)
    if ea.get("signal") != eb.get("signal") or (
            ea.get("signal") is None and ea.get("status") != eb.get("status")):
        return ("crash signal", None, ea.get("signal") or ea.get("status"),
                eb.get("signal") or eb.get("status"))
    ma, mb = ea.get("message") or "", eb.get("message") or ""
    w.cov.saw("crash message", label)
    if not (ma in mb or mb in ma):
        return ("crash message", None, ma, mb)
    return None


def compare_traces(path_a, path_b):
    """The first divergence between two traces, or None."""
    return compare(path_a, path_b).divergence


def _v(v):
    return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) and v > 255 else v


def format_divergence(d: Divergence) -> str:
    where = f"step {d.step} ({d.op}" + (f", line {d.line}" if d.line else "") + ")"
    who = f"CPU {d.cpu} " if d.cpu is not None else ""
    lines = [f"first divergence at {where}: {who}{d.field}: "
             f"{d.left_name} {_v(d.left)} != {d.right_name} {_v(d.right)}"
             + (f": {d.note}" if d.note else "")]
    if d.left_snapshot or d.right_snapshot:
        ta = cpu_table(_snapshot(d.left_snapshot), mark={d.cpu}).splitlines()
        tb = cpu_table(_snapshot(d.right_snapshot), mark={d.cpu}).splitlines()
        w = max((len(s) for s in ta), default=0)
        lines.append(f"  {d.left_name:<{w - 2}} | {d.right_name}")   # | over the rows' |
        for i in range(max(len(ta), len(tb))):
            a = ta[i] if i < len(ta) else ""
            b = tb[i] if i < len(tb) else ""
            lines.append(f"{a:<{w}} | {b}")
    return "\n".join(lines)


def format_comparison(c: Comparison) -> str:
    """The divergence (or agreement), then what was compared and what was not."""
    head = format_divergence(c.divergence) if c.divergence else "traces agree"
    return "\n".join([head, *c.coverage.lines()])
