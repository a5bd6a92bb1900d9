"""Run one scenario on one backend: steps in order, a trace record per step, a verdict.

The run stops at the first step that does not pass (a refusal, a hang, a failed check,
an error): after that the machine's state is no longer what the scenario describes.
The outcome is then judged against the scenario's expectation for the accelerator,
so a known bug (an expected hang) passes while it reproduces and fails once it is gone.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import __version__, known_bugs
from .hw import APM_NO_SMI
from .checks import CheckContext, CheckResult, run_check
from .errors import BackendError, HarnessError, Hang, NotRemoved, QemuCrashed, Refused
from .scenario import Expectation, Scenario, plug_of, plugs_of
from .trace import TraceWriter

# a QEMU ended by these was killed from outside (a user, the OOM killer, a test)
OUTSIDE_SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT", "SIGHUP")
HANG_SIGNATURE = ("in_smm", "halted", "spinning", "smbase_default")


@dataclass
class RunResult:
    scenario: Scenario
    backend: str
    accel: str
    outcome: dict                       # what happened
    met: bool                           # outcome matches the expectation
    reason: str                         # why not (or a summary)
    trace_path: Path | None = None
    run_dir: Path | None = None
    last_snapshot: dict | None = None
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


def _judge(expect, outcome):
    got = outcome["outcome"]
    where = f" at step {outcome['step']} ({outcome.get('op')})" if outcome.get("step") else ""
    if got != expect.outcome:
        extra = outcome.get("message") or ""
        if got == "pass" and expect.outcome in ("hang", "refused", "fail", "crash"):
            extra = (f"the expected {expect.outcome} did not happen"
                     + ("" if expect.bug else ": if the bug is fixed, update the "
                        "scenario's expectation"))
        return False, f"expected {expect.outcome}, got {got}{where}" + \
            (f": {extra}" if extra else "")
    if expect.step is not None and outcome.get("step") != expect.step:
        return False, f"expected {expect.outcome} at step {expect.step}, got it{where}"
    if got == "crash":
        sig = outcome.get("signal")
        if sig in OUTSIDE_SIGNALS:
            return False, (f"QEMU was killed from outside ({sig}{where}): not a crash "
                           f"of QEMU's own")
        if expect.signal and sig not in expect.signal:
            return False, (f"crash by a different signal: expected "
                           f"{' or '.join(expect.signal)}, "
                           f"QEMU {'was killed by ' + sig if sig else 'exited with status '}"
                           f"{'' if sig else outcome.get('status')}")
        if outcome.get("message_source", "qemu") != "qemu":
            return True, (f"crash{where} as expected (QEMU's message not checked: this "
                          f"one is a {outcome['message_source']})")
        if not re.search(expect.message or "(?!)", outcome.get("message") or ""):
            return False, (f"crash with a different message: expected /{expect.message}/,"
                           f" QEMU said {outcome.get('message')!r}")
    if got in ("refused", "fail") and expect.message and \
            expect.message not in (outcome.get("message") or ""):
        return False, (f"{got} with a different message: expected "
                       f"{expect.message!r} in it, got {outcome.get('message')!r}")
    if got == "hang":
        sig = outcome.get("signature") or {}
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
    if got == "fail" and expect.check not in (outcome.get("failed_checks") or []):
        return False, (f"expected check {expect.check} to fail, but failed: "
                       f"{outcome.get('failed_checks')}")
    return True, f"{got}{where}" + (" as expected" if got != "pass" else "")


class _Run:
    def __init__(self, scn, backend, trace):
        self.scn, self.backend, self.trace = scn, backend, trace
        self.last = None          # last Snapshot
        self.previous = None      # the one before it
        self.smis = 0             # SMIs raised since self.last

    def take_snapshot(self):
        snap = self.backend.snapshot()
        self.previous, self.last = self.last, snap
        smis, self.smis = self.smis, 0
        return snap, smis

    def step(self, step):
        op, a, b = step.op, step.args, self.backend
        if op == "coldplug":
            return b.coldplug(plug_of(step)), None
        if op == "hotplug":
            return b.hotplug(*plugs_of(step)), None
        if op == "boot":
            return (b.boot(a["timeout"]) if "timeout" in a else b.boot()), None
        if op == "unplug":
            # the state just before: the last a QEMU whose migration fails after an
            # unplug can show in full, so that the comparison has it (compare.py)
            before = b.snapshot().to_dict()
            try:
                return {**b.unplug(a["slot"], a.get("timeout")), "before": before}, None
            except NotRemoved as e:
                # the unplug's own verdict, so a known lost unplug is an expected `fail`
                # whose diagnosis (`message`) is checked like any other signature
                snap, _ = self.take_snapshot()
                verdict = CheckResult(
                    "cpu_removed", False, f"slot {e.slot} empty within {e.waited:g} s",
                    f"CPU still in slot {e.slot}",
                    e.diagnosis.get("why") or "the CPU was not ejected").to_dict()
                raise _CheckFailed([{**verdict, "diagnosis": e.diagnosis}],
                                   {"removed": None}, snap) from None
        if op == "online":
            return b.online(a["slot"]), None
        if op == "offline":
            return b.offline(a["slot"]), None
        if op == "smi":
            res = b.smi(a["value"], a["data"], a["count"])
            if a["value"] not in APM_NO_SMI:
                self.smis += a["count"]
            return res, None
        if op == "guest":
            res = b.guest(a["command"])
            problems = []
            if res.get("rc") != a["expect_rc"]:
                problems.append(f"exit status {res.get('rc')}, expected {a['expect_rc']}")
            if a["expect_output"] and not re.search(a["expect_output"], res.get("output", ""),
                                                    re.M):
                problems.append(f"output does not match /{a['expect_output']}/")
            if problems:
                raise _CheckFailed([CheckResult(
                    "guest", False, {"rc": a["expect_rc"], "output": a["expect_output"]},
                    {"rc": res.get("rc"), "output": res.get("output", "")[-500:]},
                    "; ".join(problems)).to_dict()], res)
            return res, None
        if op == "wait":
            return b.wait(a["seconds"]), None
        if op == "reset":
            return b.reset(), None
        if op == "snapshot":
            snap, _ = self.take_snapshot()
            return {"cpus": len(snap.cpus)}, snap
        if op == "check":
            names = [c["name"] for c in a["checks"]]
            alive = None
            if "guest_alive" in names:
                try:
                    alive = b.guest("true").get("rc") == 0
                except Hang:
                    alive = False
            snap, smis = self.take_snapshot()
            ctx = CheckContext(snapshot=snap, previous=self.previous,
                               smis_since_previous=smis, guest_alive=alive)
            results = [run_check(c["name"], c["arg"], ctx).to_dict() for c in a["checks"]]
            if not all(r["passed"] for r in results):
                raise _CheckFailed(results, None, snap)
            return {"checks": results}, snap
        raise AssertionError(op)


class _CheckFailed(Exception):
    def __init__(self, results, result, snapshot=None):
        self.results, self.result, self.snapshot = results, result, snapshot


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
    outcome = {"outcome": "pass"}
    steps_done = 0
    t_start = time.monotonic()
    run = _Run(scn, backend, None)
    try:
        try:
            info = backend.start(machine, run_dir, paused=True, boot=scn.boot) or {}
        except HarnessError as e:
            trace = TraceWriter(trace_path, {**header, "info": {}})
            outcome = {"outcome": "error", "step": 0, "op": "start", "message": str(e)}
            trace.step(0, "start", {}, error={"kind": "error", "message": str(e)})
            raise _Stop() from None
        trace = TraceWriter(trace_path, {**header, "info": {**info, **backend.info()}})
        for i, step in enumerate(scn.steps, 1):
            t0 = time.monotonic()
            snap = result = error = None
            try:
                result, snap = run.step(step)
            except Refused as e:
                error = {"kind": "refused", "message": e.message}
                outcome = {"outcome": "refused", "message": e.message}
            except Hang as e:
                sig = e.signature()
                error = {"kind": "hang", "message": e.reason, "signature": sig,
                         "diagnosis": e.diagnosis}
                snap = e.diagnosis.get("snapshot")
                outcome = {"outcome": "hang", "message": e.reason, "signature": sig}
            except _CheckFailed as e:
                failed = [r["name"] for r in e.results if not r["passed"]]
                error = {"kind": "check", "message": "; ".join(
                    f"{r['name']}: {r['detail'] or 'failed'}" for r in e.results
                    if not r["passed"]), "checks": e.results}
                result, snap = e.result, e.snapshot
                outcome = {"outcome": "fail", "failed_checks": failed,
                           "checks": e.results, "message": error["message"]}
            except QemuCrashed as e:
                error = {"kind": "crash", **e.record()}
                outcome = {"outcome": "crash", **e.record()}
            except BackendError as e:
                error = {"kind": "error", "message": str(e)}
                outcome = {"outcome": "error", "message": str(e)}
            trace.step(i, step.op, step.args, result=result, error=error,
                       duration=time.monotonic() - t0, snapshot=snap, line=step.line)
            steps_done = i
            if snap is not None:
                outcome["snapshot"] = snap if isinstance(snap, dict) else snap.to_dict()
            if error:
                outcome.update(step=i, op=step.op, line=step.line)
                break
    except _Stop:
        pass
    except BaseException as e:      # Ctrl-C, SIGTERM, a harness bug: say so in the trace
        outcome = {"outcome": "error", "step": steps_done + 1,
                   "message": f"run interrupted: {type(e).__name__}: {e}"}
        raise
    finally:
        try:
            backend.close()
        finally:
            if trace is None:
                trace = TraceWriter(trace_path, {**header, "info": {}})
            last = outcome.get("snapshot") or (run.last.to_dict() if run.last else None)
            if outcome["outcome"] == "error":
                met, reason = False, outcome.get("message", "error")
            else:
                met, reason = judge(expectation, outcome, qemu_version)
            trace.end({"outcome": {k: v for k, v in outcome.items() if k != "snapshot"},
                       "met": met, "reason": reason,
                       "duration": round(time.monotonic() - t_start, 3)})
            trace.close()
    return RunResult(scenario=scn, backend=backend.name, accel=accel, outcome=outcome,
                     met=met, reason=reason, expectation=expectation,
                     qemu_version=qemu_version, trace_path=Path(trace_path), run_dir=run_dir,
                     last_snapshot=last, steps_done=steps_done,
                     boot=backend.info().get("boot"))


class _Stop(Exception):
    pass
