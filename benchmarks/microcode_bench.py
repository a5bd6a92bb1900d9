"""Throughput of the Intel microcode parser (parse + validate + list) on a large file.

Why: the harness lists and validates whole microcode trees and initrds; the parser must
not be the slow part. Target: >= 200 MB/s. The input is a generated concatenation of
valid updates with realistic sizes (4 KiB .. 200 KiB, some with extended tables),
repeated up to ``size_mb``.

``vs_iucode()``: the whole ``python -m harness microcode list`` process against
``iucode_tool -l`` on Debian's intel-microcode concatenated (GenuineIntel.bin, 21.3 MB
for 3.20251111.1~deb12u1; fetched into the harness cache), paired runs in alternating
order, medians and their ratio (target <= 4). Measured as a user runs it, with Python's
bytecode cache written (a warm-up run first, into a directory of its own); the ratio
without any bytecode cache (every module compiled on every run, as with
PYTHONDONTWRITEBYTECODE=1 and no __pycache__) is printed too.

Run: ``.venv/bin/python benchmarks/microcode_bench.py`` (prints JSON).
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness.microcode.intel import build_update, parse_intel  # noqa: E402
from harness.microcode.iucode import select_updates  # noqa: E402

TARGET_MB_S = 200.0


def make_blob(size_mb=100):
    """A concatenation of ~size_mb MB of valid updates of mixed sizes."""
    kib = [4, 12, 16, 24, 48, 100, 200]
    unit = b"".join(
        build_update(0x50650 + i, 1 << (i % 8), 0x100 + i, f"20{10 + i % 15:02d}-0{1 + i % 9}-1{i % 9}",
                     total_size=kib[i % len(kib)] * 1024,
                     ext_sigs=[(0x50650 + i, 0x80), (0x50660 + i, 0x01)] if i % 5 == 0 else ())
        for i in range(40))
    reps = max(1, (size_mb * 1_000_000) // len(unit))
    return unit * reps


def run(size_mb=100, repeat=3):
    """Parse+list a generated ``size_mb`` file ``repeat`` times; report the best MB/s."""
    blob = make_blob(size_mb)
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = parse_intel(blob)
        rows = [(s, p, u.revision, u.date, u.total_size) for u in res.updates for s, p in u.signatures]
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    assert res.ok and rows
    t0 = time.perf_counter()
    sel = select_updates(res.updates)
    t_sel = time.perf_counter() - t0
    mb = len(blob) / 1e6
    return {
        "bytes": len(blob),
        "updates": len(res.updates),
        "list_rows": len(rows),
        "parse_list_seconds": round(best, 4),
        "parse_list_mb_s": round(mb / best, 1),
        "select_seconds": round(t_sel, 4),
        "selected": len(sel.entries),
        "target_mb_s": TARGET_MB_S,
        "meets_target": mb / best >= TARGET_MB_S,
    }


def _time(argv, env):
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                   check=True)
    return time.perf_counter() - t0


def vs_iucode(runs=21):
    """Median wall time of both whole processes on the Debian corpus, and the ratio."""
    import shutil
    import statistics
    iucode = shutil.which("iucode_tool") or shutil.which("/usr/sbin/iucode_tool")
    if iucode is None:
        return {"skipped": "iucode_tool is not installed (Debian package iucode-tool)"}
    from harness.microcode.corpus import CONCATENATED, fetch_intel_corpus
    blob = fetch_intel_corpus().parent.parent.parent / CONCATENATED
    ours = [sys.executable, "-m", "harness", "microcode", "list", str(blob)]
    theirs = [iucode, "-l", str(blob)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {"file": str(blob), "bytes": os.path.getsize(blob), "runs": runs,
           "target_ratio": 4.0}
    import tempfile
    prefix = tempfile.mkdtemp(prefix="mc-bench-pyc-")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = prefix      # bytecode in a directory of its own
    env["PYTHONPATH"] = root
    _time(ours, env)                         # warm-up: writes the bytecode of everything
    nocache = dict(env, PYTHONDONTWRITEBYTECODE="1")
    for label, e in (("", env), ("_no_bytecode_cache", nocache)):
        if e is nocache:                     # the harness's own bytecode gone, stdlib's kept
            shutil.rmtree(os.path.join(prefix, root.lstrip(os.sep), "harness"),
                          ignore_errors=True)
        h, i = [], []
        for n in range(runs):
            pair = [(h, ours), (i, theirs)]
            for acc, argv in (pair if n % 2 == 0 else pair[::-1]):
                acc.append(_time(argv, e))
        mh, mi = statistics.median(h), statistics.median(i)
        out[f"harness_s{label}"] = round(mh, 4)
        out[f"iucode_tool_s{label}"] = round(mi, 4)
        out[f"ratio{label}"] = round(mh / mi, 2)
    out["python_startup_s"] = round(statistics.median(
        _time([sys.executable, "-c", "pass"], env) for _ in range(runs)), 4)
    out["meets_target"] = out["ratio"] <= out["target_ratio"]
    shutil.rmtree(prefix, ignore_errors=True)
    return out


if __name__ == "__main__":
    print(json.dumps({"throughput": run(), "vs_iucode": vs_iucode()}, indent=2))
