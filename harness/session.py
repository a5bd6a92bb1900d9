"""The one orchestration, shared by the CLI and the pytest plugin: what a run targets
(which QEMU build, which firmware image, which accelerator), running a scenario on a
backend, and comparing model and QEMU from the same pair of runs.

Run parameters travel in a :class:`Target`, resolved once per set of options; nothing
here writes them into the scenario. The model stands for the same build as QEMU: it
takes the QEMU version (for the defects of that version, :mod:`harness.known_bugs`) and
the firmware image's identity (for its SMBASE layout, :mod:`harness.firmware`).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import firmware as fwmod
from . import known_bugs
from .errors import ConfigError
from .runner import run_scenario

log = logging.getLogger(__name__)

BACKEND_CHOICES = ("qemu", "model", "both")


@dataclass
class Options:
    backend: str = "qemu"
    accel: str = "auto"
    qemu: str | None = None          # a build name (qemu-11.1) or a QEMU binary
    firmware: str | None = None      # a build name (ovmf-2025.02) or an OVMF code image
    ovmf_code: str | None = None
    ovmf_vars: str | None = None
    trace_dir: Path = Path("runs")
    boot_cache: str | None = None    # on | off; None: SMM_HARNESS_BOOT_CACHE (default on)


@dataclass(frozen=True)
class Target:
    """The builds a run is for, resolved from Options."""
    qemu_binary: str | None = None
    qemu_version: str | None = None
    qemu_name: str | None = None              # build name, or None for a path/system
    ovmf_code: str | None = None              # None: discovered through descriptors
    ovmf_vars: str | None = None
    firmware_version: str | None = None
    firmware_name: str | None = None
    identity: fwmod.FirmwareIdentity | None = field(default=None, compare=False)
    ovmf_code_resolved: str | None = None     # the image files actually used
    ovmf_vars_resolved: str | None = None

    @property
    def firmware_edk2(self):
        return self.identity.edk2 if self.identity else None

    def describe(self):
        q = f"QEMU {self.qemu_version}" if self.qemu_version else "no QEMU"
        return f"{q}, firmware {self.identity.describe() if self.identity else 'unknown'}"

    def label(self):
        q = self.qemu_name or (f"qemu-{self.qemu_version}" if self.qemu_version else "qemu")
        f = self.firmware_name or (f"ovmf-{self.firmware_version}"
                                   if self.firmware_version else "ovmf")
        return f"{q}+{f}"


_targets: dict = {}


def resolve_target(opts: Options, need_qemu=True) -> Target:
    """Resolve the QEMU build and firmware image once per distinct options."""
    key = (opts.qemu, opts.firmware, opts.ovmf_code, opts.ovmf_vars, need_qemu)
    if key not in _targets:
        _targets[key] = _resolve_target(opts, need_qemu)
    return _targets[key]


def _resolve_target(opts, need_qemu):
    from . import builds
    from .qemu import process
    binary = version = qname = None
    try:
        qb = builds.resolve_qemu(opts.qemu)
        binary, qname = str(qb.qemu), (qb.name if qb.source != "path" else None)
        version = process.qemu_version(binary)
    except ConfigError:
        if need_qemu:
            raise
    code, varsf, fver, fname = opts.ovmf_code, opts.ovmf_vars, None, None
    if opts.firmware and opts.ovmf_code:
        raise ConfigError("--firmware and --ovmf-code name the firmware twice: give one")
    if opts.firmware:
        fb = builds.resolve_firmware(opts.firmware, opts.ovmf_vars)
        code, varsf, fver = str(fb.ovmf_code), str(fb.ovmf_vars), fb.version
        fname = fb.name if fb.source != "path" else None
    profile, images = fwmod.resolve("ovmf-smm", code, varsf, version=fver)
    return Target(qemu_binary=binary, qemu_version=version, qemu_name=qname,
                  ovmf_code=code, ovmf_vars=varsf, firmware_version=images.version,
                  firmware_name=fname, identity=profile.identity,
                  ovmf_code_resolved=str(images.code),
                  ovmf_vars_resolved=str(images.vars_template))


_learned: dict = {}


def model_identity(target: Target):
    """The firmware identity the model stands for. An image whose SMBASE layout no table
    knows is booted once on the run's QEMU and its layout learned (cached by sha256);
    only the model needs it, so only a model run pays for it."""
    ident = target.identity
    if ident is None or ident.layout is not None or target.qemu_binary is None:
        return ident
    if ident.sha256 not in _learned:
        import sys
        from .qemu.learn import learn_identity
        _learned[ident.sha256] = learn_identity(
            ident, target.qemu_binary, target.qemu_version, target.ovmf_code_resolved,
            target.ovmf_vars_resolved, say=lambda m: print(m, file=sys.stderr))
    return _learned[ident.sha256]


def resolve_accel(opts: Options) -> str:
    """The accelerator a run targets: what the user said; else, where QEMU runs, what
    its build can do on this host (KVM only where it runs SMM guests). The model never
    probes QEMU: alone it stands for TCG, beside QEMU (``--backend both``) it takes the
    QEMU run's accelerator, so both stand for the same machine."""
    if opts.accel != "auto":
        return opts.accel
    if opts.backend == "model":
        return "tcg"
    from .qemu import process
    target = resolve_target(opts, need_qemu=True)
    return "kvm" if process.kvm_can_do_smm(target.qemu_binary) else "tcg"


def make_backend(name, target: Target, accel, boot_cache=None):
    if name == "qemu":
        from .qemu.backend import QemuBackend
        return QemuBackend(qemu=target.qemu_binary, ovmf_code=target.ovmf_code,
                           ovmf_vars=target.ovmf_vars, firmware_version=target.firmware_version,
                           boot_cache=boot_cache)
    if name == "model":
        from .model.backend import ModelBackend
        from .model.cpu import semantics_for_build
        from .model.qemu_defects import for_build
        return ModelBackend(semantics=semantics_for_build(accel, target.qemu_version),
                            firmware=model_identity(target),
                            qemu_defects=for_build(accel, target.qemu_version,
                                                   target.firmware_edk2))
    raise ConfigError(f"unknown backend {name!r}")


def safe(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def run_one(scn, backend_name, opts: Options, accel=None, suffix=""):
    """Run a scenario on one backend; the trace and logs go under the trace dir."""
    accel = accel or resolve_accel(opts)
    target = resolve_target(opts, need_qemu=backend_name != "model")
    base = Path(opts.trace_dir) / f"{safe(scn.name)}-{backend_name}-{accel}{suffix}"
    backend = make_backend(backend_name, target, accel, opts.boot_cache)
    return run_scenario(scn, backend, accel, run_dir=base, trace_path=base / "trace.jsonl",
                        qemu_version=target.qemu_version,
                        firmware_edk2=target.firmware_edk2)


@dataclass
class PairResult:
    """One scenario on the backends asked for, and, with both, their comparison."""
    results: dict                    # backend -> RunResult
    divergence: object = None        # compare.Divergence or None
    comparison: object = None        # compare.Comparison: the divergence and coverage


def run_backends(scn, opts: Options):
    """Run a scenario on the backends of ``opts`` (both: QEMU, then the model standing
    for the same build) and compare them when both ran. Yields (backend, accel, result
    or skip reason) as each finishes, then the PairResult."""
    backends = ["qemu", "model"] if opts.backend == "both" else [opts.backend]
    results = {}
    accel = resolve_accel(opts)
    for b in backends:
        why = skip_reason(scn, b, accel, resolve_target(opts, need_qemu=b != "model"))
        if why:
            yield b, accel, why
            continue
        results[b] = run_one(scn, b, opts, accel)
        yield b, accel, results[b]
    if len(results) == 2:
        comparison = compare_runs(results["qemu"], results["model"])
        yield PairResult(results, comparison.divergence, comparison)
        return
    yield PairResult(results)


def compare_runs(qemu_result, model_result):
    """The model's trace against QEMU's for the same scenario and build: the first
    divergence and what was compared, also kept as ``comparison.txt`` beside the
    model's trace. The CLI and the pytest plugin both compare through here."""
    from .compare import compare, format_comparison
    comparison = compare(qemu_result.trace_path, model_result.trace_path)
    (model_result.run_dir / "comparison.txt").write_text(
        format_comparison(comparison) + "\n")
    return comparison


def skip_reason(scn, backend, accel, target=None):
    if backend not in scn.backends:
        return f"not meant for the {backend} backend"
    if backend == "model" and target is not None:
        e = scn.expectation(accel, target.qemu_version, target.firmware_edk2)
        if e.bug and not known_bugs.get(e.bug).modelled:
            return (f"expects known bug {e.bug} on {target.label()}, which the model "
                    f"does not reproduce")
    if accel not in scn.accels:
        if accel == "tcg":
            return (f"runs only under {'/'.join(scn.accels)}: KVM cannot run SMM guests "
                    f"on this host (or --accel tcg was given)")
        return f"runs only under {'/'.join(scn.accels)}"
    return None
