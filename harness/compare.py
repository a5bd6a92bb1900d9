"""Compare two traces (QEMU against the model) step by step; report the first divergence.

Normalisation (docs/trace-format.md): for each step, in order,
- must be equal: op and arguments; the kind of error (none, refused, hang, check,
  error); a refusal's message; a hang's signature (CPUs in SMM, CPUs halted); which
  checks passed;
- in snapshots both sides have: the set of CPUs (by cpu index) and per CPU its APIC id,
  SMBASE, in-SMM, and (when both know it) guest online state and microcode revision;
  TSEG base, size and lock; the negotiated SMI features;
- not compared: durations, versions, paths, ``halted`` outside a hang (an idle guest's
  CPUs halt and wake at will), absolute SMI counts (boot firmware raises a
  build-dependent number of SMIs), anything only one side knows (``None``).
"""
from __future__ import annotations

from dataclasses import dataclass

from .report import cpu_table
from .trace import read_trace

CPU_FIELDS = ("apic_id", "smbase", "in_smm", "online", "ucode_rev", "guest_ucode_rev",
              "guest_msr_ucode", "guest_ucode_sysfs", "vendor")


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


def _err_kind(step):
    return (step.get("error") or {}).get("kind")


def _cpu_field_diff(a, b, fields):
    """(field, cpu, a_value, b_value) of the first per-CPU difference among CPUs both
    sides have, skipping values one side does not know (None)."""
    ca = {c["index"]: c for c in a.get("cpus", [])}
    cb = {c["index"]: c for c in b.get("cpus", [])}
    for i in sorted(set(ca) & set(cb)):
        for f in fields:
            va, vb = ca[i].get(f), cb[i].get(f)
            if va is not None and vb is not None and va != vb:
                return (f, i, va, vb)
    return None


def _compare_snapshots(a, b):
    """(field, cpu, a_value, b_value) of the first difference, or None."""
    ia = sorted(c["index"] for c in a.get("cpus", []))
    ib = sorted(c["index"] for c in b.get("cpus", []))
    if ia != ib:
        return ("cpus", None, ia, ib)
    d = _cpu_field_diff(a, b, CPU_FIELDS)
    if d:
        return d
    ta, tb = a.get("tseg"), b.get("tseg")
    if ta and tb:
        for f in ("base", "size", "locked"):
            if ta.get(f) != tb.get(f):
                return (f"tseg.{f}", None, ta.get(f), tb.get(f))
    fa = (a.get("smi_features") or {}).get("names")
    fb = (b.get("smi_features") or {}).get("names")
    if fa is not None and fb is not None and sorted(fa) != sorted(fb):
        return ("smi_features", None, sorted(fa), sorted(fb))
    return None


def _hang_snapshot(step):
    """A hang's state: the diagnosis snapshot, or at least its per-CPU table."""
    diag = (step.get("error") or {}).get("diagnosis") or {}
    if diag.get("snapshot"):
        return diag["snapshot"]
    return {"cpus": diag["cpus"]} if diag.get("cpus") else None


# in a hang, halted matters too: it is part of the signature
HANG_CPU_FIELDS = ("apic_id", "smbase", "in_smm", "halted")


def compare_traces(path_a, path_b):
    ha, sa, _ = read_trace(path_a)
    hb, sb, _ = read_trace(path_b)
    na, nb = ha.get("backend", "A"), hb.get("backend", "B")
    if na == nb:
        na, nb = f"{na} (A)", f"{nb} (B)"

    def div(step, field, cpu, va, vb, snap_a=None, snap_b=None):
        return Divergence(step=step.get("index"), op=step.get("op"), field=field, cpu=cpu,
                          left=va, right=vb, left_name=na, right_name=nb,
                          left_snapshot=snap_a, right_snapshot=snap_b, line=step.get("line"))

    for x, y in zip(sa, sb):
        if (x["op"], x["args"]) != (y["op"], y["args"]):
            return div(x, "step", None, f"{x['op']} {x['args']}", f"{y['op']} {y['args']}")
        ka, kb = _err_kind(x), _err_kind(y)
        snap_a = x.get("snapshot") or _hang_snapshot(x)
        snap_b = y.get("snapshot") or _hang_snapshot(y)
        if ka != kb:
            return div(x, "outcome", None, ka or "ok", kb or "ok", snap_a, snap_b)
        ea, eb = x.get("error") or {}, y.get("error") or {}
        if ka == "refused" and ea.get("message") != eb.get("message"):
            return div(x, "refusal message", None, ea.get("message"), eb.get("message"))
        if ka == "hang":
            for f in ("in_smm", "halted"):
                va, vb = ea.get("signature", {}).get(f), eb.get("signature", {}).get(f)
                if va != vb:
                    return div(x, f"hang.{f}", None, va, vb, snap_a, snap_b)
            if snap_a and snap_b:
                d = _cpu_field_diff(snap_a, snap_b, HANG_CPU_FIELDS)
                if d:
                    return div(x, d[0], d[1], d[2], d[3], snap_a, snap_b)
        if ka == "check":
            pa = {c["name"]: c["passed"] for c in ea.get("checks", [])}
            pb = {c["name"]: c["passed"] for c in eb.get("checks", [])}
            if pa != pb:
                return div(x, "checks", None, pa, pb, snap_a, snap_b)
        if snap_a and snap_b:
            d = _compare_snapshots(snap_a, snap_b)
            if d:
                return div(x, d[0], d[1], d[2], d[3], snap_a, snap_b)
    if len(sa) != len(sb):
        longer = sa if len(sa) > len(sb) else sb
        extra = longer[min(len(sa), len(sb))]
        return div(extra, "steps run", None, len(sa), len(sb))
    return None


def _v(v):
    return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) and v > 255 else v


def format_divergence(d: Divergence) -> str:
    where = f"step {d.step} ({d.op}" + (f", line {d.line}" if d.line else "") + ")"
    who = f"CPU {d.cpu} " if d.cpu is not None else ""
    lines = [f"first divergence at {where}: {who}{d.field}: "
             f"{d.left_name} {_v(d.left)} != {d.right_name} {_v(d.right)}"]
    if d.left_snapshot or d.right_snapshot:
        ta = cpu_table(d.left_snapshot, mark={d.cpu}).splitlines()
        tb = cpu_table(d.right_snapshot, mark={d.cpu}).splitlines()
        w = max((len(s) for s in ta), default=0)
        lines.append(f"  {d.left_name:<{w - 2}}   | {d.right_name}")
        for i in range(max(len(ta), len(tb))):
            a = ta[i] if i < len(ta) else ""
            b = tb[i] if i < len(tb) else ""
            lines.append(f"{a:<{w}} | {b}")
    return "\n".join(lines)
