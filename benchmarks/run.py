"""Benchmarks, printed as one JSON object. Speed is measured here, not in timed tests.

    .venv/bin/python benchmarks/run.py [--runs 3]
        [--only boot,boot_phases,scenarios,model,microcode,microcode_vs_iucode]

- boot: median boot-to-shell (cont -> guest agent answers) and snapshot (stop, migrate,
  parse, cont, plus the guest's CPU view) over --runs VMs (512 MiB, 2 of 4 CPUs, TCG),
  and hot-unplug (device_del -> CPU gone from its slot) of a cold-plugged CPU on
  multi-threaded TCG. Targets: boot <= 8 s, snapshot <= 1.5 s.
- boot_phases: where that boot time goes (benchmarks/boot_phases.py: SEC/PEI, SMM,
  DXE/BDS + the kernel's EFI stub and decompressor, Linux), by sampling CPU 0.
- scenarios: wall time of `pytest scenarios/ -n 2` (target <= 180 s), and the harness's
  own overhead: the scenario set run in this process, its CPU time (time.process_time:
  parsing, checks, traces; QEMU and the guest are other processes) over its wall time
  (target <= 10 %).
- model: `pytest scenarios/ --backend model` wall time (target < 2 s) and steps/s
  (benchmarks/model_bench.py, target >= 20,000).
- microcode: list throughput in MB/s (benchmarks/microcode_bench.py, target >= 200).
- microcode_vs_iucode: `python -m harness microcode list` against `iucode_tool -l`, whole
  processes on Debian's intel-microcode concatenated (21.3 MB), median of paired runs;
  prints the harness/iucode_tool ratio (target <= 4).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def bench_boot(runs):
    from harness.machine import CpuPlug, MachineConfig
    from harness.qemu.backend import QemuBackend
    boots, snaps, unplugs = [], [], []
    for i in range(runs):
        # boot and snapshots on the default machine (single-threaded TCG)
        b = QemuBackend()
        with tempfile.TemporaryDirectory() as d:
            try:
                b.start(MachineConfig(cpus=2, maxcpus=4), Path(d), paused=True)
                t = time.monotonic()
                b.boot()
                boots.append(time.monotonic() - t)
                for _ in range(3):
                    t = time.monotonic()
                    b.snapshot()
                    snaps.append(time.monotonic() - t)
            finally:
                b.close()
        # unplug on multi-threaded TCG: single-threaded QEMU 7.2 aborts on CPU eject
        b = QemuBackend()
        with tempfile.TemporaryDirectory() as d:
            try:
                b.start(MachineConfig(cpus=2, maxcpus=4, tcg_thread="multi"), Path(d),
                        paused=True)
                b.coldplug(CpuPlug(slot=2))
                b.boot()
                t = time.monotonic()
                b.unplug(2)
                unplugs.append(time.monotonic() - t)
            finally:
                b.close()
    med = lambda xs: round(statistics.median(xs), 3)  # noqa: E731
    return {"runs": runs, "boot_to_shell_s": med(boots), "snapshot_s": med(snaps),
            "hot_unplug_s": med(unplugs), "boot_all_s": [round(x, 2) for x in boots]}


def bench_scenarios():
    from harness import scenario
    from harness.session import Options, run_one
    t = time.monotonic()
    r = subprocess.run([str(ROOT / ".venv/bin/pytest"), "scenarios/", "-n", "2", "-q",
                        "-p", "no:cacheprovider", "--trace-dir",
                        tempfile.mkdtemp(prefix="bench-")], cwd=ROOT, capture_output=True,
                       text=True)
    wall_n2 = time.monotonic() - t
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-200:]
    opts = Options(trace_dir=Path(tempfile.mkdtemp(prefix="bench-seq-")))
    cpu0, t0 = time.process_time(), time.monotonic()
    met = 0
    files = scenario.discover([ROOT / "scenarios"])
    for f in files:
        scn = scenario.load(f)
        if "tcg" not in scn.accels:
            continue
        met += run_one(scn, "qemu", opts, "tcg").met
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    return {"pytest_n2_wall_s": round(wall_n2, 1), "pytest_summary": summary,
            "sequential_wall_s": round(wall, 1), "harness_cpu_s": round(cpu, 2),
            "harness_overhead_pct": round(100 * cpu / wall, 2), "met": met}


def bench_model():
    import model_bench
    t = time.monotonic()
    r = subprocess.run([str(ROOT / ".venv/bin/pytest"), "scenarios/", "--backend", "model",
                        "-q", "-p", "no:cacheprovider", "--trace-dir",
                        tempfile.mkdtemp(prefix="bench-model-")], cwd=ROOT,
                       capture_output=True, text=True)
    out = {"pytest_model_wall_s": round(time.monotonic() - t, 2),
           "pytest_summary": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""}
    out.update(model_bench.run())
    return out


def bench_boot_phases(runs):
    import boot_phases
    return boot_phases.run(runs)


def bench_microcode():
    import microcode_bench
    return microcode_bench.run()


def bench_microcode_vs_iucode():
    import microcode_bench
    return microcode_bench.vs_iucode()


SECTIONS = {"boot": bench_boot, "boot_phases": bench_boot_phases,
            "scenarios": bench_scenarios, "model": bench_model, "microcode": bench_microcode,
            "microcode_vs_iucode": bench_microcode_vs_iucode}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", default=",".join(SECTIONS))
    a = p.parse_args()
    out = {}
    for name in a.only.split(","):
        fn = SECTIONS[name]
        out[name] = fn(a.runs) if name in ("boot", "boot_phases") else fn()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
