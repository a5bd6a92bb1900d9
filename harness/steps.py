"""The steps a scenario is made of, in one table (``STEP_TABLE``): each step's name, the
kind of argument the scenario loader parses for it, when in a run it may come, which
backends run it, its own verdict (if it has one) and the function that runs it. The
loader validates from this table and the runner dispatches through it, so a new step is
a function here and a row in the table (its argument kind, if new, a parser in
``scenario.ARG_PARSERS``), plus a line in docs/scenarios.md.

A step function takes the run (``StepRun``: the backend and the snapshots so far) and the
step's parsed arguments, and returns (result, snapshot or None); a step whose own verdict
fails raises ``StepFailed`` with its CheckResults.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .checks import BACKENDS, CheckContext, CheckResult, run_check
from .errors import Hang, NotRemoved
from .hw import APM_NO_SMI
from .machine import CpuPlug


class StepFailed(Exception):
    """A step's own verdicts failed (``results``: CheckResult, every one of the step);
    ``result`` is what the step returned, ``snapshot`` the state it left."""

    def __init__(self, results, result, snapshot=None):
        super().__init__("; ".join(r.name for r in results if not r.passed))
        self.results, self.result, self.snapshot = results, result, snapshot


class StepRun:
    """What steps share within one run: the backend, the last two snapshots and the
    SMIs raised since the last one (the smi_delivered check counts them)."""

    def __init__(self, backend):
        self.backend = backend
        self.last = None          # last Snapshot
        self.previous = None      # the one before it
        self.smis = 0             # SMIs raised since self.last

    def take_snapshot(self):
        snap = self.backend.snapshot()
        self.previous, self.last = self.last, snap
        smis, self.smis = self.smis, 0
        return snap, smis

    def step(self, step):
        """Run one scenario Step: (result, snapshot or None)."""
        return STEP_TABLE[step.op].run(self, step.args)


def plug_of(args) -> CpuPlug:
    """The CPU a coldplug/hotplug step's arguments name."""
    return CpuPlug(slot=args["slot"], props=dict(args.get("props") or {}))


def plugs_of(args) -> list:
    """The CPUs a (hot)plug step adds: one, or several back to back."""
    if "plugs" in args:
        return [plug_of(p) for p in args["plugs"]]
    return [plug_of(args)]


def coldplugs_before_boot(steps) -> list:
    """The CPUs the cold-plug steps before a scenario's boot add, in order."""
    out = []
    for step in steps:
        if step.op != "coldplug":
            break
        out.append(plug_of(step.args))
    return out


def coldplug(run, a):
    return run.backend.coldplug(plug_of(a)), None


def hotplug(run, a):
    return run.backend.hotplug(*plugs_of(a)), None


def boot(run, a):
    b = run.backend
    return (b.boot(a["timeout"]) if "timeout" in a else b.boot()), None


def unplug(run, a):
    b = run.backend
    # the state just before: the last a QEMU whose migration fails after an unplug can
    # show in full, so that the comparison has it (compare.py)
    before = b.snapshot()
    try:
        return {**b.unplug(a["slot"], a.get("timeout")), "before": before}, None
    except NotRemoved as e:
        # the unplug's own verdict, so a known lost unplug is an expected `fail` whose
        # diagnosis (`message`) is checked like any other signature
        snap, _ = run.take_snapshot()
        verdict = CheckResult(
            "cpu_removed", False, f"slot {e.slot} empty within {e.waited:g} s",
            f"CPU still in slot {e.slot}", e.diagnosis.why or "the CPU was not ejected",
            diagnosis=e.diagnosis)
        raise StepFailed([verdict], {"removed": None}, snap) from None


def online(run, a):
    return run.backend.online(a["slot"]), None


def offline(run, a):
    return run.backend.offline(a["slot"]), None


def smi(run, a):
    res = run.backend.smi(a["value"], a["data"], a["count"])
    if a["value"] not in APM_NO_SMI:
        run.smis += a["count"]
    return res, None


def guest(run, a):
    res = run.backend.guest(a["command"])
    problems = []
    if res.get("rc") != a["expect_rc"]:
        problems.append(f"exit status {res.get('rc')}, expected {a['expect_rc']}")
    if a["expect_output"] and not re.search(a["expect_output"], res.get("output", ""),
                                            re.M):
        problems.append(f"output does not match /{a['expect_output']}/")
    if problems:
        raise StepFailed([CheckResult(
            "guest", False, {"rc": a["expect_rc"], "output": a["expect_output"]},
            {"rc": res.get("rc"), "output": res.get("output", "")[-500:]},
            "; ".join(problems))], res)
    return res, None


def wait(run, a):
    return run.backend.wait(a["seconds"]), None


def reset(run, a):
    return run.backend.reset(), None


def snapshot(run, a):
    snap, _ = run.take_snapshot()
    return {"cpus": len(snap.cpus)}, snap


def check(run, a):
    names = [c["name"] for c in a["checks"]]
    alive = None
    if "guest_alive" in names:
        try:
            alive = run.backend.guest("true").get("rc") == 0
        except Hang:
            alive = False
    snap, smis = run.take_snapshot()
    ctx = CheckContext(snapshot=snap, previous=run.previous, smis_since_previous=smis,
                       guest_alive=alive)
    results = [run_check(c["name"], c["arg"], ctx) for c in a["checks"]]
    if not all(r.passed for r in results):
        raise StepFailed(results, None, snap)
    return {"checks": results}, snap


# --- the table of steps ----------------------------------------------------------------
# when a step may come: before boot (only while the machine is paused), after it, or any
BEFORE_BOOT, AFTER_BOOT, ANY_TIME = "before boot", "after boot", "any time"


@dataclass(frozen=True)
class StepKind:
    """One step as scenarios name it: the function (its name is the step's name), the
    kind of argument the loader parses (``scenario.ARG_PARSERS``), when it may come,
    the backends that can run it, and its own verdict (name, what it is) if it has one,
    which a ``fail`` expectation may name like a check."""
    function: Callable
    arg: str
    when: str = AFTER_BOOT
    backends: tuple = BACKENDS
    verdict: tuple | None = None

    @property
    def name(self):
        return self.function.__name__

    def run(self, run, args):
        return self.function(run, args)


# A new step is a function above and one row here; the loader and the runner read
# nothing else. Order: the order the loader's messages list them in.
STEP_TABLE = {s.name: s for s in (
    StepKind(boot, "boot", BEFORE_BOOT),
    StepKind(coldplug, "plug", BEFORE_BOOT),
    StepKind(hotplug, "plugs"),
    StepKind(unplug, "unplug",
             verdict=("cpu_removed", "an unplug step's CPU still in its slot")),
    StepKind(online, "slot"),
    StepKind(offline, "slot"),
    StepKind(smi, "smi"),
    StepKind(guest, "guest", verdict=("guest", "a guest step's exit status or output")),
    StepKind(snapshot, "none", ANY_TIME),
    StepKind(wait, "seconds", ANY_TIME),
    StepKind(reset, "none"),
    StepKind(check, "checks", ANY_TIME),
)}
STEP_OPS = tuple(STEP_TABLE)
# Verdicts of steps other than `check`, which a `fail` expectation may name too.
STEP_VERDICTS = dict(s.verdict for s in STEP_TABLE.values() if s.verdict)
