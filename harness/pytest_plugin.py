"""pytest plugin: every ``scenarios/**/*.yaml`` becomes tests, one per scenario and backend.

Registered through the ``pytest11`` entry point. A scenario file is collected only when it
lies under a directory named ``scenarios`` (so corpora of bad files elsewhere are not).
A failure is reported as the step, the check, expected against observed and a per-CPU
table, never as a Python stack; a malformed file is one ``file:line: key: problem`` line.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from . import scenario as scnmod
from .errors import HarnessError
from .report import failure_report
from .session import BACKEND_CHOICES, Options, resolve_accel, run_one


def pytest_addoption(parser):
    g = parser.getgroup("smm-hotplug-harness")
    g.addoption("--backend", choices=BACKEND_CHOICES, default="qemu",
                help="run scenarios on real QEMU, the model, or both and compare traces")
    g.addoption("--accel", choices=("auto", "tcg", "kvm"), default="auto",
                help="accelerator (auto: kvm when it can run SMM guests, else tcg)")
    g.addoption("--qemu", default=None,
                help="QEMU build name (python -m harness builds list) or binary")
    g.addoption("--firmware", default=None,
                help="OVMF build name (python -m harness builds list) or code image")
    g.addoption("--ovmf-code", default=None, help="OVMF code image of your own SMM build")
    g.addoption("--ovmf-vars", default=None, help="OVMF vars template for --ovmf-code")
    g.addoption("--boot-cache", choices=("on", "off"), default=None,
                help="start scenarios marked boot: resume-ok from a machine booted "
                     "earlier (default: SMM_HARNESS_BOOT_CACHE, else on)")
    from .settings import GUEST_KERNELS
    g.addoption("--guest-kernel", choices=GUEST_KERNELS, default=None,
                help="the guest's kernel where a scenario names none: harness (our own "
                "build) or debian (the distribution's); default "
                f"$SMM_HARNESS_GUEST_KERNEL or {GUEST_KERNELS[0]}")
    g.addoption("--trace-dir", default=None,
                help="where traces and logs go (default: runs/ under the rootdir)")


def _options(config) -> Options:
    o = config.option
    trace_dir = Path(o.trace_dir) if o.trace_dir else Path(config.rootpath) / "runs"
    return Options(backend=o.backend, accel=o.accel, qemu=o.qemu, firmware=o.firmware,
                   ovmf_code=o.ovmf_code, ovmf_vars=o.ovmf_vars, trace_dir=trace_dir,
                   boot_cache=o.boot_cache)


def pytest_configure(config):
    from .qemu.process import install_signal_handlers
    install_signal_handlers()
    if config.option.guest_kernel:
        # every image build reads it (harness.settings.guest_kernel), xdist workers too
        from . import settings
        settings.choose_guest_kernel(config.option.guest_kernel)


def pytest_collect_file(file_path, parent):
    if file_path.suffix in (".yaml", ".yml") and "scenarios" in file_path.parent.parts:
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    def collect(self):
        try:
            scn = scnmod.load(self.path)
        except HarnessError as e:
            yield BadScenarioItem.from_parent(self, name=f"{self.path.stem}[load]", error=e)
            return
        backend = self.config.option.backend
        backends = ["qemu", "model"] if backend == "both" else [backend]
        for b in backends:
            yield ScenarioItem.from_parent(self, name=f"{scn.name}[{b}]", scenario=scn,
                                           backend=b)


class ScenarioFailure(Exception):
    def __init__(self, text):
        super().__init__(text)
        self.text = text


class BadScenarioItem(pytest.Item):
    def __init__(self, *, error, **kw):
        super().__init__(**kw)
        self.error = error

    def runtest(self):
        raise ScenarioFailure(str(self.error))

    def repr_failure(self, excinfo):
        return str(excinfo.value)

    def reportinfo(self):
        return self.path, 0, self.name


class ScenarioItem(pytest.Item):
    """One scenario on one backend. With ``--backend both`` the QEMU item also runs the
    model for the same build and compares the two traces (the model item then checks
    only the model's own expectation, from its own run).

    A known bug that reproduces where the build has it is a strict xfail ("known bug
    reproduced"); where it was expected and is gone, the item fails and says so."""

    def __init__(self, *, scenario, backend, **kw):
        super().__init__(**kw)
        self.scenario, self.backend = scenario, backend
        if backend == "qemu":
            self.add_marker(pytest.mark.vm)

    def runtest(self):
        from .session import resolve_target, skip_reason
        opts = _options(self.config)
        try:
            accel = resolve_accel(opts)
        except HarnessError as e:
            raise ScenarioFailure(str(e)) from None
        try:
            target = resolve_target(opts, need_qemu=self.backend != "model")
        except HarnessError as e:
            raise ScenarioFailure(str(e)) from None
        why = skip_reason(self.scenario, self.backend, accel, target)
        if why:
            pytest.skip(f"{self.scenario.name} {why}")
        try:
            result = run_one(self.scenario, self.backend, opts, accel)
        except HarnessError as e:
            raise ScenarioFailure(f"{self.scenario.path}: {e}") from None
        self.user_properties.append(("trace", str(result.trace_path)))
        self.user_properties.append(("verdict", result.reason))
        if result.boot:
            self.user_properties.append(("boot", result.boot))
        if not result.met:
            raise ScenarioFailure(failure_report(result))
        if opts.backend == "both" and self.backend == "qemu" \
                and not skip_reason(self.scenario, "model", accel, target):
            self._compare(opts, accel, result)
        if result.expectation is not None and result.expectation.bug:
            pytest.xfail(result.reason)

    def _compare(self, opts, accel, qemu_result):
        """--backend both: the model runs the same scenario for the same build
        (milliseconds) and its trace must not diverge from QEMU's; compared as the CLI
        compares (session.compare_runs). Items are independent (xdist may run the model
        item on another worker), so this run has its own directory."""
        from .compare import format_comparison
        from .session import compare_runs
        try:
            model_result = run_one(self.scenario, "model", opts, accel, suffix="-vs-qemu")
        except HarnessError as e:
            raise ScenarioFailure(f"{self.scenario.path}: model: {e}") from None
        self.user_properties.append(("model_trace", str(model_result.trace_path)))
        c = compare_runs(qemu_result, model_result)
        text = format_comparison(c)
        self.user_properties.append(("comparison", text))
        if c.divergence is not None:
            raise ScenarioFailure(text)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, ScenarioFailure):
            return excinfo.value.text
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, self.scenario.expectation_line(), f"scenario {self.name}"


def pytest_terminal_summary(terminalreporter):
    """How each QEMU scenario booted (fresh or resumed from the boot cache), and with
    --backend both what each model-versus-QEMU comparison could not compare, so a green
    run says what it did not look at (the full report: comparison.txt)."""
    seen, boots = {}, {}
    for reports in terminalreporter.stats.values():
        for rep in reports:
            props = dict(getattr(rep, "user_properties", ()) or ())
            if "comparison" in props and getattr(rep, "when", "call") == "call":
                seen[rep.nodeid] = props["comparison"]
            if "boot" in props and getattr(rep, "when", "call") == "call":
                boots[rep.nodeid] = props["boot"]
    if boots:
        resumed = sorted(n for n, b in boots.items() if b.startswith("resumed"))
        terminalreporter.write_line(
            f"boot cache: {len(resumed)} of {len(boots)} QEMU scenarios resumed from a "
            f"cached boot, {len(boots) - len(resumed)} booted fresh")
        if terminalreporter.config.option.verbose > 0:
            for nodeid, b in sorted(boots.items()):
                terminalreporter.write_line(f"  {nodeid}: boot: {b}")
    if not seen:
        return
    terminalreporter.section("model against QEMU: what was not compared")
    for nodeid, text in sorted(seen.items()):
        lines = text.splitlines()
        missing = lines[lines.index("not compared:") + 1:] if "not compared:" in lines \
            else []
        terminalreporter.write_line(f"{nodeid}: {lines[0]}; "
                                    f"{len(missing)} item(s) not compared")
        for x in missing:
            terminalreporter.write_line(f"  {x.strip()}")
