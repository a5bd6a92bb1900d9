"""``python -m harness show TRACE``: a trace as a readable table."""
from __future__ import annotations

from .report import cpu_table
from .snapshot import Snapshot
from .trace import read_trace


def show(path) -> str:
    header, steps, end = read_trace(path)
    info = header.get("info") or {}
    m = header.get("machine") or {}
    out = [f"scenario {header.get('scenario')} ({header.get('file')})",
           f"backend {header.get('backend')}, accel {header.get('accel')}, "
           f"QEMU {info.get('qemu_version', '-')}, firmware {info.get('firmware', '-')}",
           f"machine: {m.get('cpus')} of {m.get('maxcpus')} CPUs, {m.get('memory_mib')} MiB, "
           f"TSEG {m.get('tseg_mbytes')} MiB, {m.get('cpu_model')}"]
    if info.get("boot"):
        out.append(f"boot: {info['boot']}")
    out.append("")
    out.append(f"{'#':>3}  {'line':>4}  {'op':<9} {'seconds':>7}  result")
    for s in steps:
        err = s.get("error")
        res = f"{err['kind'].upper()}: {err.get('message', '')}" if err else \
            _short(s.get("result"))
        args = " ".join(f"{k}={v}" for k, v in (s.get("args") or {}).items()
                        if v not in (None, {}, []) and k != "checks")
        if s["op"] == "check":
            args = ",".join(c["name"] for c in s["args"].get("checks", []))
        out.append(f"{s['index']:>3}  {s.get('line') or '':>4}  {s['op']:<9} "
                   f"{s.get('duration', 0):>7.2f}  {args}  {res}")
        snap = s.get("snapshot") or ((err or {}).get("diagnosis") or {}).get("snapshot")
        if snap:
            out.append(cpu_table(Snapshot.from_dict(snap)))
    if end:
        out.append("")
        out.append(f"outcome: {end['outcome'].get('outcome')} - "
                   f"{'met' if end.get('met') else 'NOT met'}: {end.get('reason')} "
                   f"({end.get('duration')} s)")
    else:
        out.append("(run cut short: no end record)")
    return "\n".join(out)


def _short(result):
    if not result:
        return "ok"
    if "checks" in result:
        return "ok: " + ", ".join(c["name"] for c in result["checks"])
    text = ", ".join(f"{k}={v}" for k, v in result.items() if k != "output")
    if "output" in result:
        text += f" output={result['output'][:60]!r}"
    return text[:120]
