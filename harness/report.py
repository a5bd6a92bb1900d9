"""Human-readable reports: per-CPU tables and failure explanations (no Python stacks)."""
from __future__ import annotations


def _fmt(v, hexa=False):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if hexa and isinstance(v, int):
        return f"{v:#010x}"
    return str(v)


def cpu_table(snapshot: dict | None, mark=()) -> str:
    """index, APIC id, SMBASE, whether its SMRAM is inside TSEG, in SMM, halted, online
    (+ SMIs, microcode when known)."""
    from .hw import smram_in_tseg
    if not snapshot or not snapshot.get("cpus"):
        return "  (no snapshot)"
    t = snapshot.get("tseg")
    cols = [("cpu", "index", False), ("apic", "apic_id", False), ("smbase", "smbase", True),
            ("in_smm", "in_smm", False), ("halted", "halted", False),
            ("online", "online", False), ("smis", "smi_count", False),
            ("ucode", "ucode_rev", True)]
    if t and t.get("size"):
        cols.insert(3, ("smram", "smram", False))
    rows = [[h for h, _, _ in cols]]
    for c in snapshot["cpus"]:
        if t and t.get("size"):
            c = dict(c, smram=None if c.get("smbase") is None else
                     "in TSEG" if smram_in_tseg(c["smbase"], t["base"], t["size"])
                     else "OUTSIDE TSEG")
        rows.append([_fmt(c.get(k), hx) for _, k, hx in cols])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = []
    for n, r in enumerate(rows):
        flag = "  "
        if n and snapshot["cpus"][n - 1].get("index") in mark:
            flag = "> "
        lines.append(flag + "  ".join(x.rjust(w) for x, w in zip(r, widths)))
    if t:
        lines.append(f"  TSEG [{t['base']:#x}, {t['base'] + t['size']:#x}) "
                     f"{t['size'] >> 20} MiB, {'locked' if t['locked'] else 'NOT locked'}")
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
             f"  observed: {o['outcome']}"]
    if o.get("step"):
        step = scn.steps[o["step"] - 1] if 0 < o["step"] <= len(scn.steps) else None
        lines[-1] += f" at step {o['step']}" + (
            f" ({step.describe()}, {scn.path.name}:{step.line})" if step else "")
    lines.append(f"  verdict:  {result.reason}")
    if o.get("message") and o["outcome"] != "fail":
        lines.append(f"  message:  {o['message']}")
    for c in o.get("checks") or []:
        mark = "ok  " if c["passed"] else "FAIL"
        lines.append(f"  {mark} {c['name']}: expected {c['expected']}, observed "
                     f"{c['observed']}" + (f" - {c['detail']}" if c.get("detail") else ""))
    if o.get("signature"):
        lines.append(f"  hang signature: CPUs in SMM {o['signature'].get('in_smm')}, "
                     f"halted {o['signature'].get('halted')}")
    bad = set()
    for c in o.get("checks") or []:
        bad.update(c.get("cpus") or [])
    lines.append(cpu_table(result.last_snapshot, mark=bad))
    if result.trace_path:
        lines.append(f"  trace:    {result.trace_path}")
    if result.run_dir:
        lines.append(f"  logs:     {result.run_dir}")
    return "\n".join(lines)
