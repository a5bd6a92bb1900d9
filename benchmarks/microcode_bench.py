"""Throughput of the Intel microcode parser (parse + validate + list) on a large file.

Why: the harness lists and validates whole microcode trees and initrds; the parser must
not be the slow part. Target: >= 200 MB/s. The input is a generated concatenation of
valid updates with realistic sizes (4 KiB .. 200 KiB, some with extended tables),
repeated up to ``size_mb``.

Run: ``.venv/bin/python benchmarks/microcode_bench.py`` (prints JSON).
"""

import json
import os
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


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
