"""Benchmarks, printed as one JSON object. Speed is measured here, not in timed tests.

    .venv/bin/python benchmarks/run.py [--runs 3]
        [--only boot,boot_phases,boot_cache,scenarios,scenarios_boot_cache,model,
                microcode,microcode_vs_iucode]

- boot: median boot-to-shell (cont -> guest agent answers) and snapshot (stop, migrate,
  parse, cont, plus the guest's CPU view) over --runs VMs (512 MiB, 2 of 4 CPUs, TCG),
  and hot-unplug (device_del -> CPU gone from its slot) of a cold-plugged CPU on
  multi-threaded TCG. Targets: boot <= 8 s, snapshot <= 1.5 s.
- boot_phases: where that boot time goes (benchmarks/boot_phases.py: SEC/PEI, SMM,
  DXE/BDS + the kernel's EFI stub and decompressor, Linux), by sampling CPU 0.
- boot_cache: a scenario's start and boot (start() + boot(): QEMU launched, guest agent
  answering) fresh against resumed from the booted-machine cache
  (harness/qemu/bootcache.py), median of --runs each on the default machine, in a cache
  directory of its own; and what saving the entry costs once.
- scenarios_boot_cache: `pytest scenarios/ -n 2` with --boot-cache off, then on with an
  empty cache (the first run fills it), then on again (warm); the ratios to off.
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


def bench_boot_cache(runs):
    from harness.machine import MachineConfig
    from harness.qemu import bootcache
    from harness.qemu.backend import QemuBackend
    import os
    root = Path(tempfile.mkdtemp(prefix="bench-bootcache-"))
    os.environ["SMM_HARNESS_BOOT_CACHE_DIR"] = str(root)
    machine = MachineConfig(cpus=2, maxcpus=4)
    fresh, resumed, loads, save = [], [], [], None

    def once(policy, out):
        b = QemuBackend()
        with tempfile.TemporaryDirectory() as d:
            try:
                t = time.monotonic()
                b.start(machine, Path(d), paused=True, boot=policy)
                res = b.boot()
                out.append(time.monotonic() - t)
                return b, res
            finally:
                b.close()

    try:
        _, res = once("resume-ok", [])               # fills the cache (not timed here)
        entry = bootcache.BootCache().entries()[0]
        save = entry.meta().get("save_seconds")
        size = entry.stream.stat().st_size
        for _ in range(runs):
            once("fresh", fresh)
            _, res = once("resume-ok", resumed)
            loads.append(res.get("load_seconds"))
    finally:
        import shutil
        os.environ.pop("SMM_HARNESS_BOOT_CACHE_DIR", None)
        shutil.rmtree(root, ignore_errors=True)
    med = lambda xs: round(statistics.median(xs), 2)  # noqa: E731
    return {"runs": runs, "fresh_start_boot_s": med(fresh),
            "resumed_start_boot_s": med(resumed), "resumed_load_s": med(loads),
            "ratio_resumed_to_fresh": round(med(resumed) / med(fresh), 3),
            "save_once_s": save, "stream_mb": round(size / 1e6, 1),
            "fresh_all_s": [round(x, 2) for x in fresh],
            "resumed_all_s": [round(x, 2) for x in resumed]}


def _pytest_scenarios(*extra):
    t = time.monotonic()
    r = subprocess.run([str(ROOT / ".venv/bin/pytest"), "scenarios/", "-n", "2", "-q",
                        "-p", "no:cacheprovider", "--trace-dir",
                        tempfile.mkdtemp(prefix="bench-"), *extra], cwd=ROOT,
                       capture_output=True, text=True)
    wall = time.monotonic() - t
    lines = r.stdout.strip().splitlines()
    cache_line = next((x for x in lines if x.startswith("boot cache:")), "")
    return round(wall, 1), (lines[-1] if lines else r.stderr[-200:]), cache_line


def bench_scenarios_boot_cache():
    """The scenario set with the boot cache off, cold and warm, in a cache directory of
    its own (SMM_HARNESS_BOOT_CACHE_DIR, which pytest and its workers inherit)."""
    import os
    import shutil
    root = Path(tempfile.mkdtemp(prefix="bench-bootcache-set-"))
    out = {}
    try:
        os.environ["SMM_HARNESS_BOOT_CACHE_DIR"] = str(root)
        for name, extra in (("off", ("--boot-cache", "off")), ("cold", ("--boot-cache", "on")),
                            ("warm", ("--boot-cache", "on"))):
            wall, summary, cache = _pytest_scenarios(*extra)
            out[name] = {"wall_s": wall, "summary": summary, "boot_cache": cache}
    finally:
        os.environ.pop("SMM_HARNESS_BOOT_CACHE_DIR", None)
        shutil.rmtree(root, ignore_errors=True)
    for name in ("cold", "warm"):
        out[f"ratio_{name}_to_off"] = round(out[name]["wall_s"] / out["off"]["wall_s"], 3)
    return out


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
            "boot_cache": bench_boot_cache,
            "scenarios_boot_cache": bench_scenarios_boot_cache,
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
        out[name] = fn(a.runs) if name in ("boot", "boot_phases", "boot_cache") else fn()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
