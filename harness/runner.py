"""Run one scenario on one backend: steps in order, a trace record per step, a verdict.

The run stops at the first step that does not pass (a refusal, a hang, a failed check,
an error): after that the machine's state is no longer what the scenario describes.
The outcome is then judged against the scenario's expectation for the accelerator,
so a known bug (an expected hang) passes while it reproduces and fails once it is gone.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import __version__, known_bugs
from .errors import BackendError, HarnessError, Hang, QemuCrashed, Refused
from .outcome import Outcome
from .scenario import Expectation, Scenario
from .snapshot import Snapshot
from .steps import StepFailed, StepRun, coldplugs_before_boot
from .trace import TraceWriter

log = logging.getLogger(__name__)

# a QEMU ended by these was killed from outside (a user, the OOM killer, a test)
OUTSIDE_SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT", "SIGHUP")
HANG_SIGNATURE = ("in_smm", "halted", "spinning", "smbase_default")


@dataclass
class RunResult:
    scenario: Scenario
    backend: str
    accel: str
    outcome: Outcome                    # what happened
    met: bool                           # outcome matches the expectation
    reason: str                         # why not (or a summary)
    trace_path: Path | None = None
    run_dir: Path | None = None
    last_snapshot: Snapshot | None = None   # the failing step's, else the last taken
    expectation: Expectation | None = None
    qemu_version: str | None = None
    steps_done: int = 0
    durations: dict = field(default_factory=dict)
    boot: str | None = None             # QEMU: "fresh ..." or "resumed from cache KEY"


def judge(expect, outcome, qemu_version=None):
    """(met, explanation) for an outcome against an Expectation, saying which known bug
    reproduced, vanished, or is not one of this build's."""
    met, why = _judge(expect, outcome)
    on = f" on QEMU {qemu_version}" if qemu_version else ""
    if expect.bug:
        bug = known_bugs.get(expect.bug)
        if met:
            return True, f"known bug {bug.name} reproduced{on}: {why}"
        return False, (f"known bug {bug.name} expected{on} ({bug.scope()}) but not "
                       f"reproduced: {why}")
    if expect.absent_bug:
        bug = known_bugs.get(expect.absent_bug)
        note = f"known bug {bug.name} not present{on} (it affects {bug.scope()})"
        return met, f"{note}; {why}"
    return met, why


def _judge(expect, outcome: Outcome):
    got = outcome.kind
    where = f" at step {outcome.step} ({outcome.op})" if outcome.step else ""
    if got != expect.outcome:
        extra = outcome.message or ""
        if got == "pass" and expect.outcome in ("hang", "refused", "fail", "crash"):
            extra = (f"the expected {expect.outcome} did not happen"
                     + ("" if expect.bug else ": if the bug is fixed, update the "
                        "scenario's expectation"))
        return False, f"expected {expect.outcome}, got {got}{where}" + \
            (f": {extra}" if extra else "")
    if expect.step is not None and outcome.step != expect.step:
        return False, f"expected {expect.outcome} at step {expect.step}, got it{where}"
    if got == "crash":
        sig = outcome.signal
        if sig in OUTSIDE_SIGNALS:
            return False, (f"QEMU was killed from outside ({sig}{where}): not a crash "
                           f"of QEMU's own")
        if expect.signal and sig not in expect.signal:
            return False, (f"crash by a different signal: expected "
                           f"{' or '.join(expect.signal)}, "
                           f"QEMU {'was killed by ' + sig if sig else 'exited with status '}"
                           f"{'' if sig else outcome.status}")
        if (outcome.message_source or "qemu") != "qemu":
            return True, (f"crash{where} as expected (QEMU's message not checked: this "
                          f"one is a {outcome.message_source})")
        if not re.search(expect.message or "(?!)", outcome.message or ""):
            return False, (f"crash with a different message: expected /{expect.message}/,"
                           f" QEMU said {outcome.message!r}")
    if got in ("refused", "fail") and expect.message and \
            expect.message not in (outcome.message or ""):
        return False, (f"{got} with a different message: expected "
                       f"{expect.message!r} in it, got {outcome.message!r}")
    if got == "hang":
        sig = outcome.signature or {}
        if not sig.get("evidence"):
            return False, "a hang without evidence of no progress is not a verdict"
        if expect.evidence is not None and sig["evidence"] != expect.evidence:
            return False, (f"hang evidence differs: expected {expect.evidence}, "
                           f"observed {sig['evidence']}")
        for key in HANG_SIGNATURE:
            want = getattr(expect, key)
            if want is None:
                continue
            got_cpus = sig.get(key)
            if got_cpus is None or sorted(got_cpus) != sorted(want):
                return False, (f"hang signature differs: {key} expected {want}, "
                               f"observed {got_cpus}")
    if got == "fail" and expect.check not in outcome.failed_checks:
        return False, (f"expected check {expect.check} to fail, but failed: "
                       f"{outcome.failed_checks}")
    return True, f"{got}{where}" + (" as expected" if got != "pass" else "")


def run_scenario(scn: Scenario, backend, accel, run_dir, trace_path, qemu_version=None,
                 firmware_edk2=None) -> RunResult:
    """Run ``scn`` on ``backend`` (already constructed, not started); always closes it.
    The expectation judged is the one in force for the build (``qemu_version``,
    ``firmware_edk2``): a known bug's only where that build has it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    machine = replace(scn.machine, accel=accel)
    expectation = scn.expectation(accel, qemu_version, firmware_edk2)
    header = {"scenario": scn.name, "file": str(scn.path), "backend": backend.name,
              "accel": accel, "harness": __version__, "machine": machine.__dict__,
              "expect": expectation.summary(), "boot_policy": scn.boot,
              "build": {"qemu_version": qemu_version, "firmware_edk2": firmware_edk2}}
    trace = None
    outcome = None
    steps_done = 0
    t_start = time.monotonic()
    run = StepRun(backend)
    try:
        try:
            info = backend.start(machine, run_dir, paused=True, boot=scn.boot,
                                 coldplugs=coldplugs_before_boot(scn.steps)) or {}
        except HarnessError as e:
            trace = TraceWriter(trace_path, {**header, "info": {}})
            outcome = Outcome("error", step=0, op="start", message=str(e))
            trace.step(0, "start", {}, error={"kind": "error", "message": str(e)})
            raise _Stop() from None
        trace = TraceWriter(trace_path, {**header, "info": {**info, **backend.info()}})
        log.info("%s on %s (%s): started, trace %s", scn.name, backend.name, accel,
                 trace_path)
        for i, step in enumerate(scn.steps, 1):
            log.info("%s step %d (line %d): %s", scn.name, i, step.line, step.describe())
            t0 = time.monotonic()
            snap = result = error = None
            try:
                result, snap = run.step(step)
            except (StepFailed, BackendError) as e:   # Refused, Hang, QemuCrashed ...
                error, stopped = _stopped_by(e)
                if isinstance(e, StepFailed):
                    result = e.result
                snap = stopped.snapshot
                outcome = replace(stopped, step=i, op=step.op, line=step.line)
            trace.step(i, step.op, step.args, result=result, error=error,
                       duration=time.monotonic() - t0, snapshot=snap, line=step.line)
            steps_done = i
            if error:
                break
        else:
            outcome = Outcome("pass")
    except _Stop:
        pass
    except BaseException as e:      # Ctrl-C, SIGTERM, a harness bug: say so in the trace
        outcome = Outcome("error", step=steps_done + 1,
                          message=f"run interrupted: {type(e).__name__}: {e}")
        raise
    finally:
        try:
            backend.close()
        finally:
            if trace is None:
                trace = TraceWriter(trace_path, {**header, "info": {}})
            last = outcome.snapshot or run.last
            if outcome.kind == "error":
                met, reason = False, outcome.message or "error"
            else:
                met, reason = judge(expectation, outcome, qemu_version)
            log.info("%s on %s: %s, %s: %s", scn.name, backend.name, outcome.kind,
                     "met" if met else "NOT met", reason)
            trace.end({"outcome": outcome.to_dict(), "met": met, "reason": reason,
                       "duration": round(time.monotonic() - t_start, 3)})
            trace.close()
    return RunResult(scenario=scn, backend=backend.name, accel=accel, outcome=outcome,
                     met=met, reason=reason, expectation=expectation,
                     qemu_version=qemu_version, trace_path=Path(trace_path), run_dir=run_dir,
                     last_snapshot=last, steps_done=steps_done,
                     boot=backend.info().get("boot"))


def _stopped_by(e) -> tuple[dict, Outcome]:
    """The trace's error record and the outcome (without its step) of a step that
    raised ``e``: each kind of stop is described here once."""
    if isinstance(e, Refused):
        return ({"kind": "refused", "message": e.message},
                Outcome("refused", message=e.message))
    if isinstance(e, Hang):
        sig = e.signature()
        return ({"kind": "hang", "message": e.reason, "signature": sig,
                 "diagnosis": e.diagnosis},
                Outcome("hang", message=e.reason, signature=sig,
                        snapshot=e.diagnosis.snapshot))
    if isinstance(e, StepFailed):
        message = "; ".join(f"{r.name}: {r.detail or 'failed'}" for r in e.results
                            if not r.passed)
        return ({"kind": "check", "message": message, "checks": e.results},
                Outcome("fail", message=message, checks=e.results, snapshot=e.snapshot))
    if isinstance(e, QemuCrashed):
        return {"kind": "crash", **e.record()}, Outcome("crash", **e.record())
    return ({"kind": "error", "message": str(e)},
            Outcome("error", message=str(e)))


class _Stop(Exception):
    pass
