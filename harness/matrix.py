"""``python -m harness matrix``: the scenario set over several builds, one table.

Each cell (a QEMU build × a firmware build) is one pytest run of ``scenarios/`` in a
process of its own, with its run directory and JUnit XML named by the cell, so nothing
of one cell overwrites another's. The table at the end says, per scenario and cell:
``pass``, ``bug`` (a known bug reproduced where that build has it: a strict xfail),
``absent`` (a known bug expected on that build and not reproduced: a failure),
``FAIL`` (any other failure), ``skip`` or ``-`` (not run). Exit status 1 if any cell
has an ``absent`` or ``FAIL``.
"""
from __future__ import annotations

import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from . import builds

REPO = Path(__file__).resolve().parent.parent
MARKS = {"pass": "pass", "xfail": "bug", "absent": "absent", "fail": "FAIL", "skip": "skip"}


def cell_name(qemu, firmware):
    return f"{qemu}+{firmware}"


def parse_junit(path):
    """{scenario item name: status} from a pytest JUnit XML file."""
    out = {}
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return out
    for tc in root.iter("testcase"):
        name = tc.get("name", "")
        status = "pass"
        for child in tc:
            if child.tag == "skipped":
                status = "xfail" if child.get("type") == "pytest.xfail" else "skip"
            elif child.tag in ("failure", "error"):
                text = (child.get("message") or "") + (child.text or "")
                status = "absent" if "but not reproduced" in text else "fail"
        out[name] = status
    return out


def format_table(cells, results, walls):
    names = sorted({n for r in results.values() for n in r})
    width = max([len(n) for n in names] + [8])
    cols = [max(len(c), 6) for c in cells]
    lines = [" " * width + "  " + "  ".join(c.ljust(w) for c, w in zip(cells, cols))]
    for n in names:
        row = [MARKS.get(results[c].get(n), "-").ljust(w) for c, w in zip(cells, cols)]
        lines.append(n.ljust(width) + "  " + "  ".join(row))
    lines.append("wall".ljust(width) + "  " + "  ".join(
        f"{walls.get(c, 0):.0f} s".ljust(w) for c, w in zip(cells, cols)))
    total = sum(walls.values())
    lines.append(f"{len(cells)} cells in {total:.0f} s ({total / 60:.1f} min)")
    return "\n".join(lines)


def run_matrix(qemus, firmwares, out_dir: Path, pytest_args=(), paths=("scenarios/",)):
    builds.fetch(list(dict.fromkeys(qemus + firmwares)))     # fetched once, before cells
    cells, results, walls, bad = [], {}, {}, 0
    for q in qemus:
        for f in firmwares:
            cell = cell_name(q, f)
            cells.append(cell)
            d = out_dir / cell
            d.mkdir(parents=True, exist_ok=True)
            junit = d / "junit.xml"
            argv = [sys.executable, "-m", "pytest", *paths, "--qemu", q, "--firmware", f,
                    "--trace-dir", str(d / "runs"), f"--junitxml={junit}",
                    "-p", "no:cacheprovider", "-q", *pytest_args]
            print(f"matrix: {cell}: pytest {' '.join(argv[3:])}", flush=True)
            t0 = time.monotonic()
            with open(d / "pytest.log", "w") as log:
                rc = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
            walls[cell] = time.monotonic() - t0
            results[cell] = parse_junit(junit)
            summary = (d / "pytest.log").read_text(errors="replace").strip().splitlines()
            print(f"matrix: {cell}: {summary[-1] if summary else 'no output'} "
                  f"({walls[cell]:.0f} s, exit {rc})", flush=True)
            bad += any(s in ("fail", "absent") for s in results[cell].values()) or rc not in (0, 5)
    table = format_table(cells, results, walls)
    (out_dir / "table.txt").write_text(table + "\n")
    print(table)
    return 1 if bad else 0


def _cmd(a):
    qemus = [x for x in a.qemu.split(",") if x]
    firmwares = [x for x in a.firmware.split(",") if x]
    return run_matrix(qemus, firmwares, Path(a.out), a.pytest_args)


def register(subparsers):
    p = subparsers.add_parser("matrix", help="the scenario set over QEMU x firmware builds")
    p.add_argument("--qemu", default="qemu-7.2,qemu-10.0,qemu-11.1",
                   help="comma-separated QEMU builds (default: %(default)s)")
    p.add_argument("--firmware", default="ovmf-2022.11,ovmf-2025.02,ovmf-2026.08",
                   help="comma-separated firmware builds (default: %(default)s)")
    p.add_argument("--out", default="runs/matrix", help="where each cell's runs go")
    p.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    p.set_defaults(func=_cmd)
