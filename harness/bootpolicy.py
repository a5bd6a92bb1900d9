"""Whether a scenario's boot is under test or only its precondition: the scenario key
``boot: fresh | resume-ok`` (docs/scenarios.md) and the rules that keep it honest.

Why: the real backend can start a scenario from a machine booted earlier with the same
QEMU, firmware, guest image and machine arguments (harness/qemu/bootcache.py) instead of
booting the firmware again, which saves most of a TCG scenario's time. That is right
only where the boot is not what the scenario looks at. So resuming is opt-in
(``resume-ok``; the default is ``fresh``), and the loader refuses ``resume-ok`` where the
scenario itself shows that its boot is under test:

- something happens before the boot (a snapshot or check of the paused machine, a
  wait): the machine the cache holds is not the one the scenario boots. Cold-plugs are
  the exception: the CPUs they add are part of the machine (and of its cache key), and
  a resumed machine gets them by ``device_add`` before its stream loads;
- an expectation (for any accelerator, any known bug or its ``otherwise``) puts a
  verdict at the boot step: a hang, crash or failure *of the boot*, or a hang or crash
  without a step (which may be the boot's).

This module is pure (no QEMU), so the loader and the unit tests read it directly.
"""
from __future__ import annotations

# steps that may come before a resumed boot: they make the machine the cache holds (a
# cold-plug's CPU is part of the entry's key and device_add-ed before its stream loads)
BEFORE_A_RESUMED_BOOT = ("coldplug",)

FRESH = "fresh"
RESUME_OK = "resume-ok"
POLICIES = (FRESH, RESUME_OK)
DEFAULT = FRESH

# outcomes that can only come from a step running the machine: without a step they may
# be the boot's own
_UNPINNED_AT_BOOT = ("hang", "crash")


def _chain(key, e):
    """(key, expectation) for an expectation and every ``otherwise`` under it."""
    while e is not None:
        yield key, e
        key, e = f"{key}.otherwise", e.otherwise


def resume_problems(steps, expect) -> list:
    """Why a scenario with ``steps`` (scenario.Step) and ``expect`` (accel ->
    Expectation) may not resume from the boot cache: a list of (line, key, problem),
    empty when it may."""
    problems = []
    k = 0
    while k < len(steps) and steps[k].op in BEFORE_A_RESUMED_BOOT:
        k += 1
    if k == len(steps) or steps[k].op != "boot":
        first = steps[k] if k < len(steps) else None
        problems.append((first.line if first else 0, f"steps[{k + 1}]",
                         f"is {first.op if first else 'nothing'} before the boot: what "
                         f"happens before the boot (but cold-plugs, which are part of the "
                         f"machine booted) is part of the scenario, so it must boot fresh"))
        return problems
    boot_index = k + 1
    for accel, top in expect.items():
        for key, e in _chain(f"expect.{accel}" if accel != "any" else "expect", top):
            if e.outcome == "pass":
                continue
            if e.step == boot_index:
                problems.append((e.line, key, f"expects {e.outcome} at the boot step "
                                 f"(step {boot_index}): the boot is under test, so it "
                                 f"must boot fresh"))
            elif e.step is None and e.outcome in _UNPINNED_AT_BOOT:
                problems.append((e.line, key, f"expects {e.outcome} at no particular "
                                 f"step, which may be the boot: give its step, or boot "
                                 f"fresh"))
    return problems


def may_resume(scn) -> bool:
    """A loaded scenario asked to resume (the loader has already refused it where its
    boot is under test)."""
    return getattr(scn, "boot", DEFAULT) == RESUME_OK
