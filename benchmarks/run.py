"""Benchmarks, printed as one JSON object. Speed is measured here, not in timed tests.

    .venv/bin/python benchmarks/run.py [--runs 3] [--guest-kernel debian,harness]
        [--only boot,boot_phases,scenarios,model,microcode,microcode_vs_iucode]

boot and boot_phases run once per guest kernel of --guest-kernel (debian: the
distribution's, harness: our own build, harness/qemu/image/kernel.py), one kernel after
the other, and print each kernel's figures and their ratios (harness / debian).

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
import contextlib
import json
import os
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
    from harness.errors import Hang
    from harness.qemu.backend import QemuBackend
    boots, snaps, unplugs, hangs = [], [], [], []
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
            except Hang as e:       # counted and said, not a crash of the whole run
                hangs.append(str(e)[:300])
            finally:
                b.close()
    med = lambda xs: round(statistics.median(xs), 3) if xs else None  # noqa: E731
    return {"runs": runs, "boot_to_shell_s": med(boots), "snapshot_s": med(snaps),
            "hot_unplug_s": med(unplugs), "boot_all_s": [round(x, 2) for x in boots],
            "unplug_machine_hangs": hangs}


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


@contextlib.contextmanager
def guest_kernel(name):
    """Every image built in the block boots ``name`` (harness.settings.guest_kernel)."""
    old = os.environ.get("SMM_HARNESS_GUEST_KERNEL")
    os.environ["SMM_HARNESS_GUEST_KERNEL"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SMM_HARNESS_GUEST_KERNEL", None)
        else:
            os.environ["SMM_HARNESS_GUEST_KERNEL"] = old


#: the figures compared between guest kernels: section -> keys (seconds)
KERNEL_RATIOS = {"boot": ("boot_to_shell_s", "hot_unplug_s", "snapshot_s"),
                 "boot_phases": ("median_total_s",)}


def per_kernel(name, fn, runs, kernels):
    """``fn(runs)`` once per guest kernel; with two, also their ratios."""
    if len(kernels) == 1:
        with guest_kernel(kernels[0]):
            return {"guest_kernel": kernels[0], **fn(runs)}
    out = {}
    for k in kernels:
        with guest_kernel(k):
            out[k] = fn(runs)
    if len(kernels) == 2:
        a, b = kernels
        out[f"ratio_{b}_over_{a}"] = {
            key: round(out[b][key] / out[a][key], 3)
            for key in KERNEL_RATIOS[name] if out[a].get(key) and key in out[b]}
        if name == "boot_phases":
            out[f"ratio_{b}_over_{a}"].update(
                {f"{ph}_s": round(out[b]["median_seconds"][ph] / out[a]["median_seconds"][ph], 3)
                 for ph in out[a]["median_seconds"] if out[a]["median_seconds"][ph]})
    return out


SECTIONS = {"boot": bench_boot, "boot_phases": bench_boot_phases,
            "scenarios": bench_scenarios, "model": bench_model, "microcode": bench_microcode,
            "microcode_vs_iucode": bench_microcode_vs_iucode}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", default=",".join(SECTIONS))
    p.add_argument("--guest-kernel", default="debian,harness",
                   help="guest kernels boot and boot_phases run on, comma-separated "
                   "(debian, harness); two print their ratios")
    a = p.parse_args()
    from harness.settings import GUEST_KERNELS
    kernels = [k for k in a.guest_kernel.split(",") if k]
    bad = [k for k in kernels if k not in GUEST_KERNELS]
    if bad or not kernels:
        p.error(f"--guest-kernel: {', '.join(bad) or 'none'} (one of {', '.join(GUEST_KERNELS)})")
    out = {}
    for name in a.only.split(","):
        fn = SECTIONS[name]
        out[name] = (per_kernel(name, fn, a.runs, kernels) if name in ("boot", "boot_phases")
                     else fn())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
