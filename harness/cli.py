"""``python -m harness``: run scenarios, show and diff traces, probe a VM, build images,
and the microcode toolkit. A user's mistake prints one line and exits 2; no tracebacks."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import HarnessError
from .session import BACKEND_CHOICES, Options


LOG_LEVELS = ("debug", "info", "warning", "error")


def _add_run_options(p, backend=True):
    if backend:
        p.add_argument("--backend", choices=BACKEND_CHOICES, default="qemu")
    p.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    p.add_argument("--qemu", help="QEMU build name (see 'builds list') or binary "
                   "(default: qemu-system-x86_64)")
    p.add_argument("--firmware", help="OVMF build name (see 'builds list') or code image "
                   "(default: the system's, found through QEMU's firmware descriptors)")
    p.add_argument("--ovmf-code", help="OVMF code image of your own SMM build")
    p.add_argument("--ovmf-vars", help="OVMF vars template for --ovmf-code")
    p.add_argument("--boot-cache", choices=("on", "off"), default=None,
                   help="start scenarios marked boot: resume-ok from a machine booted "
                        "earlier (default: SMM_HARNESS_BOOT_CACHE, else on)")
    add_guest_kernel_option(p)


def add_guest_kernel_option(p):
    from .settings import GUEST_KERNELS
    p.add_argument("--guest-kernel", choices=GUEST_KERNELS, default=None,
                   help="the guest's kernel where a scenario names none: harness (our "
                   "own build, images/kernel.config) or debian (the distribution's); "
                   f"default $SMM_HARNESS_GUEST_KERNEL or {GUEST_KERNELS[0]}")


def _options(a) -> Options:
    return Options(backend=getattr(a, "backend", "qemu"), accel=a.accel, qemu=a.qemu,
                   firmware=a.firmware, ovmf_code=a.ovmf_code, ovmf_vars=a.ovmf_vars,
                   trace_dir=Path(getattr(a, "trace_dir", None) or "runs"),
                   boot_cache=getattr(a, "boot_cache", None))


def cmd_run(a):
    from . import scenario as scnmod
    from .compare import format_comparison
    from .report import failure_report
    from .session import PairResult, run_backends
    opts = _options(a)
    files = scnmod.discover(a.files)
    if not files:
        raise HarnessError("no scenario files given")
    scenarios = scnmod.load_all(files)     # every error of every file before any VM starts
    failed = 0
    for scn in scenarios:
        for item in run_backends(scn, opts):
            if isinstance(item, PairResult):
                if item.comparison is None:
                    continue
                if item.divergence is not None:
                    failed += 1
                    print(f"DIFF {scn.name}: model and QEMU diverge")
                else:
                    print(f"same {scn.name}: model and QEMU agree")
                print(format_comparison(item.comparison))
                continue
            b, accel, r = item
            if isinstance(r, str):
                print(f"SKIP {scn.name} [{b}]: {r}")
                continue
            word = "ok  " if r.met else "FAIL"
            if r.met and r.expectation is not None and r.expectation.bug:
                word = "bug "
            boot = f", boot: {r.boot}" if r.boot else ""
            print(f"{word} {scn.name} [{b}, {accel}{boot}]: {r.reason}")
            if not r.met:
                failed += 1
                print(failure_report(r))
    return 1 if failed else 0


def cmd_show(a):
    from .trace_show import show
    print(show(a.trace))
    return 0


def cmd_diff(a):
    from .compare import compare, format_comparison
    c = compare(a.a, a.b)
    print(format_comparison(c))
    return 1 if c.divergence is not None else 0


def cmd_probe(a):
    from .machine import CpuPlug, MachineConfig
    from .qemu.backend import QemuBackend
    from .machine import parse_memory
    from .session import resolve_accel, resolve_target
    mib = parse_memory(a.memory, "--memory")
    maxcpus = a.maxcpus or a.smp + a.coldplug
    if a.smp + a.coldplug > maxcpus:
        raise HarnessError(f"--smp {a.smp} + --coldplug {a.coldplug} exceeds "
                           f"--maxcpus {maxcpus}")
    opts = _options(a)
    machine = MachineConfig(cpus=a.smp, maxcpus=maxcpus, memory_mib=mib,
                            tseg_mbytes=a.tseg_mbytes, cpu_model=a.cpu,
                            accel=resolve_accel(opts))
    run_dir = Path(a.run_dir or "runs/probe")
    t = resolve_target(opts)
    b = QemuBackend(qemu=t.qemu_binary, ovmf_code=t.ovmf_code, ovmf_vars=t.ovmf_vars,
                    firmware_version=t.firmware_version)
    try:
        b.start(machine, run_dir, paused=True)
        for i in range(a.coldplug):
            b.coldplug(CpuPlug(slot=a.smp + i))
        b.boot()
        snap = b.snapshot()
    finally:
        b.close()
    if a.json:
        out = {"tseg": snap.tseg.__dict__ if snap.tseg else None,
               "smi_features": snap.smi_features,
               "cpus": [{k: getattr(c, k) for k in ("index", "apic_id", "smbase", "in_smm",
                                                    "halted", "smi_count")}
                        for c in snap.cpus]}
        print(json.dumps(out, indent=2))
    else:
        from .report import cpu_table
        print(cpu_table(snap))
        print(f"  SMI features negotiated: {snap.smi_features.get('names')}")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="python -m harness",
                                description="SMM CPU hot-plug test harness for QEMU q35 + OVMF")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run scenario files (exit 0 only if all met expectations)")
    r.add_argument("files", nargs="+", help="scenario files or directories")
    r.add_argument("--trace-dir", default="runs", help="where traces and logs go")
    _add_run_options(r)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("show", help="print a trace as a readable table")
    s.add_argument("trace")
    s.set_defaults(func=cmd_show)

    d = sub.add_parser("diff", help="first divergence between two traces (exit 1 if any)")
    d.add_argument("a")
    d.add_argument("b")
    d.set_defaults(func=cmd_diff)

    pr = sub.add_parser("probe", help="boot one VM and print every CPU's SMM state")
    pr.add_argument("--smp", type=int, default=2)
    pr.add_argument("--maxcpus", type=int, default=None)
    pr.add_argument("--memory", default="512M")
    pr.add_argument("--tseg-mbytes", type=int, default=16)
    pr.add_argument("--cpu", default="qemu64", help="CPU model")
    pr.add_argument("--coldplug", type=int, default=0, help="CPUs to cold-plug before boot")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--run-dir", default=None)
    _add_run_options(pr, backend=False)
    pr.set_defaults(func=cmd_probe)

    from . import builds, matrix
    from .qemu import bootcache
    from .qemu.image import cli as images_cli
    bootcache.register(sub)
    images_cli.register(sub)
    builds.register(sub)
    matrix.register(sub)
    try:
        from .microcode import cli as mcli
        mcli.register(sub)
    except ImportError:
        pass
    return p


def main(argv=None):
    from .qemu.process import install_signal_handlers
    install_signal_handlers()
    parser = build_parser()
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="say what the harness does (-v: info, -vv: debug)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                        help="how much the harness says on stderr (overrides -v)")
    a = parser.parse_args(argv)
    if getattr(a, "guest_kernel", None):
        # one place every image build reads (harness.settings.guest_kernel)
        from . import settings
        settings.choose_guest_kernel(a.guest_kernel)
    import logging
    level = a.log_level or ("warning", "info", "debug")[min(a.verbose, 2)]
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(name)s: %(message)s")
    if level != "debug":
        # qemu.qmp logs a QEMU that quits before its greeting as an error; the harness
        # says that once, in QEMU's own words, as its one error line
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    try:
        return a.func(a)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}): QEMU stopped, logs and traces kept",
              file=sys.stderr)
        return 130
