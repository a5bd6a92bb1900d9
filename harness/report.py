"""Human-readable reports: per-CPU tables and failure explanations (no Python stacks)."""
from __future__ import annotations

from .snapshot import Snapshot


def _fmt(v, hexa=False):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if hexa and isinstance(v, int):
        return f"{v:#010x}"
    return str(v)


def cpu_table(snapshot: Snapshot | None, mark=()) -> str:
    """index, APIC id, SMBASE, whether its SMRAM is inside TSEG, in SMM, halted, online
    (+ SMIs, microcode when known). A trace's snapshot is read with
    ``Snapshot.from_dict`` first."""
    from .hw import smram_in_tseg
    if snapshot is None or not snapshot.cpus:
        return "  (no snapshot)"
    t = snapshot.tseg
    cols = [("cpu", "index", False), ("apic", "apic_id", False), ("smbase", "smbase", True),
            ("in_smm", "in_smm", False), ("halted", "halted", False),
            ("online", "online", False), ("smis", "smi_count", False),
            ("ucode", "ucode_rev", True)]
    if t and t.size:
        cols.insert(3, ("smram", "smram", False))
    rows = [[h for h, _, _ in cols]]
    for c in snapshot.cpus:
        values = {k: getattr(c, k, None) for _, k, _ in cols}
        if t and t.size:
            values["smram"] = None if c.smbase is None else \
                "in TSEG" if smram_in_tseg(c.smbase, t.base, t.size) else "OUTSIDE TSEG"
        rows.append([_fmt(values[k], hx) for _, k, hx in cols])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = []
    for n, r in enumerate(rows):
        flag = "  "
        if n and snapshot.cpus[n - 1].index in mark:
            flag = "> "
        lines.append(flag + "  ".join(x.rjust(w) for x, w in zip(r, widths)))
    if t:
        lines.append(f"  TSEG [{t.base:#x}, {t.base + t.size:#x}) "
                     f"{t.size >> 20} MiB, {'locked' if t.locked else 'NOT locked'}")
    return "\n".join(lines)


def failure_report(result) -> str:
    """What a firmware engineer needs when a scenario did not meet its expectation."""
    scn, o = result.scenario, result.outcome
    exp = scn.expectation(result.accel)
    lines = [f"scenario {scn.name} ({scn.path}) on {result.backend}, accel {result.accel}",
             f"  purpose:  {scn.purpose}",
             f"  expected: {exp.outcome}" + (f" at step {exp.step}" if exp.step else "")
             + (f", message {exp.message!r}" if exp.message else "")
             + (f", in SMM {exp.in_smm}" if exp.in_smm is not None else "")
             + (f", halted {exp.halted}" if exp.halted is not None else "")
             + (f", check {exp.check}" if exp.check else ""),
             f"  observed: {o.kind}"]
    if o.step:
        step = scn.steps[o.step - 1] if 0 < o.step <= len(scn.steps) else None
        lines[-1] += f" at step {o.step}" + (
            f" ({step.describe()}, {scn.path.name}:{step.line})" if step else "")
    lines.append(f"  verdict:  {result.reason}")
    if o.message and o.kind != "fail":
        lines.append(f"  message:  {o.message}")
    for c in o.checks or []:
        mark = "ok  " if c.passed else "FAIL"
        lines.append(f"  {mark} {c.name}: expected {c.expected}, observed "
                     f"{c.observed}" + (f" - {c.detail}" if c.detail else ""))
    if o.signature:
        lines.append(f"  hang signature: CPUs in SMM {o.signature.get('in_smm')}, "
                     f"halted {o.signature.get('halted')}")
    bad = set()
    for c in o.checks or []:
        bad.update(c.cpus or [])
    lines.append(cpu_table(result.last_snapshot, mark=bad))
    if result.trace_path:
        lines.append(f"  trace:    {result.trace_path}")
    if result.run_dir:
        lines.append(f"  logs:     {result.run_dir}")
    return "\n".join(lines)
