"""Benchmarks, printed as one JSON object. Speed is measured here, not in timed tests.

    .venv/bin/python benchmarks/run.py [--runs 3] [--only SECTION,...]
    .venv/bin/python benchmarks/run.py --baseline main [--only boot,scenarios]
        [--qemu qemu-11.1 --firmware ovmf-2026.08]
    .venv/bin/python benchmarks/run.py --guest-kernel debian,harness --only boot,boot_phases

``--guest-kernel debian,harness`` measures the same sections on each guest kernel (Debian's
and ours, harness/qemu/image/kernel.py), one after the other, and prints harness/debian.

Sections (--only, comma-separated; default all but overhead, with --baseline: boot):
- boot: median boot-to-shell (cont -> guest agent answers) over --runs VMs (512 MiB,
  2 of 4 CPUs, TCG), and on each booted VM 3 snapshots: the migration snapshot alone
  (stop, migrate, parse, cont: ``snapshot_migrate_s``) with its file's size
  (``snapshot_mb``), and a snapshot as a scenario step takes it (``snapshot_step_s``:
  plus QOM and the guest's CPU view). Targets (issue 13): boot <= 5 s, snapshot
  <= 5 MB and <= 0.1 s.
- unplug: hot-unplug (device_del -> CPU gone from its slot) of a cold-plugged CPU on
  multi-threaded TCG, median over --runs VMs.
- boot_phases: where the boot time goes (benchmarks/boot_phases.py: SEC/PEI, SMM,
  DXE/BDS + the kernel's EFI stub and decompressor, Linux), by sampling CPU 0.
- scenarios: wall time of ``pytest scenarios/ -n 2`` (long: minutes). Target (issue 13):
  a third of today's.
- overhead: the harness's own CPU time over its wall time, the scenario set run
  sequentially in this process (long; target <= 10 %).
- boot_cache: a scenario's start and boot (start() + boot(): QEMU launched, guest agent
  answering) fresh against resumed from the booted-machine cache
  (harness/qemu/bootcache.py), median of --runs each, in a cache directory of its own;
  and what saving the entry costs once.
- scenarios_boot_cache: ``pytest scenarios/ -n 2`` with --boot-cache off, then on with an
  empty cache (the first run fills it), then on again (warm); the ratios to off (long).
- model: ``pytest scenarios/ --backend model`` wall time (target < 2 s) and steps/s
  (benchmarks/model_bench.py, target >= 20,000).
- microcode: list throughput in MB/s (benchmarks/microcode_bench.py, target >= 200).
- microcode_vs_iucode: ``python -m harness microcode list`` against ``iucode_tool -l``,
  whole processes on Debian's intel-microcode (21.3 MB), median of paired runs; the
  harness/iucode_tool ratio (target <= 4).

``--baseline REF`` measures old against new in one run: REF is checked out into a
temporary worktree (``git worktree add --detach``; the guest image cache is shared, it is
keyed by content), the same sections are measured there and here, each side in its own
process with its own tree's ``harness`` first on the path and this file's measuring
code, and the output is ``{"old": ..., "new": ..., "ratio": new/old}``, with a table of
the ratios on stderr. Old and new run one after the other: on a busy machine, compare
ratios of runs taken together, not numbers of different runs.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent               # the tree measured; --tree replaces it (a baseline)
BUILDS = {"qemu": None, "firmware": None}     # --qemu, --firmware (None: the system's)


def _med(xs):
    return round(statistics.median(xs), 3)


def _backend():
    """A QemuBackend on the --qemu / --firmware builds."""
    from harness.qemu.backend import QemuBackend
    return QemuBackend(**_build_args())


@functools.lru_cache(maxsize=None)
def _build_args():
    from harness import builds
    kw = {}
    if BUILDS["qemu"]:
        kw["qemu"] = str(builds.resolve_qemu(BUILDS["qemu"]).qemu)
    if BUILDS["firmware"]:
        fb = builds.resolve_firmware(BUILDS["firmware"])
        kw.update(ovmf_code=str(fb.ovmf_code), ovmf_vars=str(fb.ovmf_vars),
                  firmware_version=fb.version)
    return kw


def _pytest(*args):
    """``python -m pytest ARGS`` in ROOT with ROOT's harness (its pytest plugin) first,
    on the --qemu / --firmware builds."""
    args += tuple(a for k, v in BUILDS.items() if v for a in (f"--{k}", v))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    out = r.stdout.strip()
    return time.monotonic() - t, out.splitlines()[-1] if out else r.stderr[-200:]


def bench_boot(runs):
    from harness.machine import MachineConfig
    boots, migrate_s, sizes, step_s = [], [], [], []
    for _ in range(runs):
        b = _backend()
        with tempfile.TemporaryDirectory() as d:
            try:
                b.start(MachineConfig(cpus=2, maxcpus=4), Path(d), paused=True)
                t = time.monotonic()
                b.boot()
                boots.append(time.monotonic() - t)
                for _ in range(3):
                    t = time.monotonic()
                    _, path = b._migrate_snapshot(keep=True)
                    migrate_s.append(time.monotonic() - t)
                    sizes.append(path.stat().st_size / 1e6)
                    path.unlink()
                for _ in range(3):
                    t = time.monotonic()
                    b.snapshot()
                    step_s.append(time.monotonic() - t)
            finally:
                b.close()
    return {"runs": runs, "boot_to_shell_s": _med(boots), "snapshot_mb": _med(sizes),
            "snapshot_migrate_s": _med(migrate_s), "snapshot_step_s": _med(step_s),
            "boot_all_s": [round(x, 2) for x in boots]}


def bench_unplug(runs):
    from harness.machine import CpuPlug, MachineConfig
    unplugs = []
    for _ in range(runs):
        # multi-threaded TCG: single-threaded QEMU 7.2 aborts on CPU eject
        b = _backend()
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
    return {"runs": runs, "hot_unplug_s": _med(unplugs)}


def bench_scenarios(runs):
    wall, summary = _pytest("scenarios/", "-n", "2", "--trace-dir",
                            tempfile.mkdtemp(prefix="bench-"))
    return {"pytest_n2_wall_s": round(wall, 1), "pytest_summary": summary}


def bench_overhead(runs):
    from harness import scenario
    from harness.session import Options, run_one
    opts = Options(trace_dir=Path(tempfile.mkdtemp(prefix="bench-seq-")))
    cpu0, t0 = time.process_time(), time.monotonic()
    met = 0
    for f in scenario.discover([ROOT / "scenarios"]):
        scn = scenario.load(f)
        if "tcg" not in scn.accels:
            continue
        met += run_one(scn, "qemu", opts, "tcg").met
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    return {"sequential_wall_s": round(wall, 1), "harness_cpu_s": round(cpu, 2),
            "harness_overhead_pct": round(100 * cpu / wall, 2), "met": met}


def bench_boot_cache(runs):
    from harness.machine import MachineConfig
    from harness.qemu import bootcache
    root = Path(tempfile.mkdtemp(prefix="bench-bootcache-"))
    os.environ["SMM_HARNESS_BOOT_CACHE_DIR"] = str(root)
    machine = MachineConfig(cpus=2, maxcpus=4)
    fresh, resumed, loads, save = [], [], [], None

    def once(policy, out):
        b = _backend()
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


def bench_scenarios_boot_cache(runs):
    """The scenario set with the boot cache off, cold and warm, in a cache directory of
    its own (SMM_HARNESS_BOOT_CACHE_DIR, which pytest and its workers inherit)."""
    import shutil
    root = Path(tempfile.mkdtemp(prefix="bench-bootcache-set-"))
    out = {}
    try:
        os.environ["SMM_HARNESS_BOOT_CACHE_DIR"] = str(root)
        for name, extra in (("off", ("--boot-cache", "off")), ("cold", ("--boot-cache", "on")),
                            ("warm", ("--boot-cache", "on"))):
            wall, summary = _pytest("scenarios/", "-n", "2", "--trace-dir",
                                    tempfile.mkdtemp(prefix="bench-"), *extra)
            out[name] = {"wall_s": round(wall, 1), "summary": summary}
    finally:
        os.environ.pop("SMM_HARNESS_BOOT_CACHE_DIR", None)
        shutil.rmtree(root, ignore_errors=True)
    for name in ("cold", "warm"):
        out[f"ratio_{name}_to_off"] = round(out[name]["wall_s"] / out["off"]["wall_s"], 3)
    return out


def bench_model(runs):
    import model_bench
    wall, summary = _pytest("scenarios/", "--backend", "model", "--trace-dir",
                            tempfile.mkdtemp(prefix="bench-model-"))
    out = {"pytest_model_wall_s": round(wall, 2), "pytest_summary": summary}
    out.update(model_bench.run())
    return out


def bench_boot_phases(runs):
    import boot_phases
    return boot_phases.run(runs)


def bench_microcode(runs):
    import microcode_bench
    return microcode_bench.run()


def bench_microcode_vs_iucode(runs):
    import microcode_bench
    return microcode_bench.vs_iucode()


SECTIONS = {"boot": bench_boot, "unplug": bench_unplug, "boot_phases": bench_boot_phases,
            "scenarios": bench_scenarios, "overhead": bench_overhead, "model": bench_model,
            "microcode": bench_microcode, "microcode_vs_iucode": bench_microcode_vs_iucode,
            "boot_cache": bench_boot_cache, "scenarios_boot_cache": bench_scenarios_boot_cache}
DEFAULT = [s for s in SECTIONS if s not in ("overhead", "scenarios_boot_cache")]
# issue 13's targets: absolute (<=) or a ratio to the baseline (new/old <=)
TARGETS = {("boot", "boot_to_shell_s"): ("<=", 5.0), ("boot", "snapshot_mb"): ("<=", 5.0),
           ("boot", "snapshot_migrate_s"): ("<=", 0.1),
           ("scenarios", "pytest_n2_wall_s"): ("ratio <=", 0.33)}


def measure(sections, runs):
    """Measure ``sections`` of ROOT in this process."""
    import harness
    out = {"tree": str(ROOT), "harness": str(Path(harness.__file__).parent), **BUILDS,
           "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()}
    for name in sections:
        print(f"bench: {ROOT.name}: {name}", file=sys.stderr, flush=True)
        out[name] = SECTIONS[name](runs)
    return out


def measure_in(tree, sections, runs, env=None):
    """Measure ``tree`` in a child process (this file, ``--tree``)."""
    builds = [a for k, v in BUILDS.items() if v for a in (f"--{k}", v)]
    r = subprocess.run([sys.executable, __file__, "--tree", str(tree), "--runs", str(runs),
                        "--only", ",".join(sections), *builds], stdout=subprocess.PIPE,
                       text=True,
                       env=dict(os.environ, PYTHONPATH=str(tree), **(env or {})))
    if r.returncode != 0:
        sys.exit(f"bench: measuring {tree} failed (exit {r.returncode})")
    return json.loads(r.stdout)


def ratios(old, new):
    """new/old of every number both sides measured, per section."""
    out = {}
    for sec, vals in new.items():
        if not isinstance(vals, dict) or not isinstance(old.get(sec), dict):
            continue
        for k, v in vals.items():
            o = old[sec].get(k)
            if (isinstance(v, (int, float)) and isinstance(o, (int, float))
                    and not isinstance(v, bool) and k != "runs" and o):
                out.setdefault(sec, {})[k] = round(v / o, 3)
    return out


def table(old, new, ratio):
    lines = [f"{'measure':34} {'old':>10} {'new':>10} {'new/old':>8}  target"]
    for sec, vals in ratio.items():
        for k, r in vals.items():
            target = ""
            if (sec, k) in TARGETS:
                how, limit = TARGETS[(sec, k)]
                ok = (r if how.startswith("ratio") else new[sec][k]) <= limit
                target = f"{how} {limit}: {'met' if ok else 'MISSED'}"
            lines.append(f"{sec + '.' + k:34} {old[sec][k]:>10} {new[sec][k]:>10} "
                         f"{r:>8}  {target}")
    return "\n".join(lines)


def with_baseline(ref, sections, runs):
    tmp = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    tree = tmp / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        image_cache = ROOT / "images" / "build"
        if image_cache.is_dir() and not (tree / "images" / "build").exists():
            (tree / "images" / "build").symlink_to(image_cache)
        old = measure_in(tree, sections, runs)
        new = measure_in(ROOT, sections, runs)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       stdout=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", str(tmp)])
    old["ref"] = ref
    ratio = ratios(old, new)
    print(table(old, new, ratio), file=sys.stderr)
    return {"old": old, "new": new, "ratio": ratio}


def with_kernels(kernels, sections, runs):
    """The same sections on each guest kernel (SMM_HARNESS_GUEST_KERNEL), one after the
    other in this tree; ratios of the second to the first (harness / debian)."""
    old, new = (measure_in(ROOT, sections, runs, env={"SMM_HARNESS_GUEST_KERNEL": k})
                for k in kernels)
    old["guest_kernel"], new["guest_kernel"] = kernels
    ratio = ratios(old, new)
    print(f"old = guest kernel {kernels[0]}, new = {kernels[1]}", file=sys.stderr)
    print(table(old, new, ratio), file=sys.stderr)
    return {"old": old, "new": new, "ratio": ratio}


def main():
    global ROOT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", default=None, help=f"sections: {', '.join(SECTIONS)}")
    p.add_argument("--baseline", metavar="GIT_REF",
                   help="also measure this commit and print new/old ratios")
    p.add_argument("--qemu", help="QEMU build name or binary (boot, unplug, scenarios)")
    p.add_argument("--firmware", help="OVMF build name or code image (same)")
    p.add_argument("--guest-kernel", metavar="K[,K2]",
                   help="the guest kernel (debian or harness); two, comma-separated: "
                        "measure both in one run and print the second's ratios to the first")
    p.add_argument("--tree", help=argparse.SUPPRESS)      # measure another checkout
    a = p.parse_args()
    BUILDS.update(qemu=a.qemu, firmware=a.firmware)
    sections = a.only.split(",") if a.only else (["boot"] if a.baseline else DEFAULT)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    if a.tree:
        ROOT = Path(a.tree).resolve()
    sys.path[:0] = [str(ROOT), str(HERE)]
    kernels = a.guest_kernel.split(",") if a.guest_kernel else []
    if len(kernels) == 1:
        os.environ["SMM_HARNESS_GUEST_KERNEL"] = kernels[0]
    if len(kernels) == 2:
        out = with_kernels(kernels, sections, a.runs)
    elif a.baseline:
        out = with_baseline(a.baseline, sections, a.runs)
    else:
        out = measure(sections, a.runs)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
