"""Shared by the CLI and the pytest plugin: options, backends, running and comparing."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .runner import run_scenario

BACKEND_CHOICES = ("qemu", "model", "both")


@dataclass
class Options:
    backend: str = "qemu"
    accel: str = "auto"
    qemu: str | None = None
    firmware: str | None = None
    ovmf_code: str | None = None
    ovmf_vars: str | None = None
    trace_dir: Path = Path("runs")


def resolve_accel(opts: Options, backend: str) -> str:
    """The accelerator a run targets. The model follows the host unless told otherwise,
    so that its semantics agree with the QEMU run beside it."""
    if opts.accel != "auto":
        return opts.accel
    from .qemu import process
    try:
        binary = process.resolve_binary(opts.qemu)
    except ConfigError:
        if backend == "model":
            return "tcg"
        raise
    return "kvm" if process.kvm_can_do_smm(binary) else "tcg"


def make_backend(name, opts: Options, accel):
    if name == "qemu":
        from .qemu.backend import QemuBackend
        return QemuBackend(qemu=opts.qemu, firmware=opts.firmware,
                           ovmf_code=opts.ovmf_code, ovmf_vars=opts.ovmf_vars)
    if name == "model":
        from .model.backend import ModelBackend
        return ModelBackend(semantics=accel)
    raise ConfigError(f"unknown backend {name!r}")


def safe(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def run_one(scn, backend_name, opts: Options, accel=None, suffix=""):
    """Run a scenario on one backend; the trace and logs go under the trace dir."""
    accel = accel or resolve_accel(opts, backend_name)
    if opts.firmware:
        scn.machine.firmware = opts.firmware
    base = Path(opts.trace_dir) / f"{safe(scn.name)}-{backend_name}-{accel}{suffix}"
    backend = make_backend(backend_name, opts, accel)
    return run_scenario(scn, backend, accel, run_dir=base,
                        trace_path=base / "trace.jsonl")
