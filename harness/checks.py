"""Checks: verdicts on a snapshot, each with what was expected and what was observed.

A check never raises for a failed condition: it returns a CheckResult whose ``detail``
names the CPUs and values at fault, so a report reads like a firmware engineer's note.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

from . import hw
from .snapshot import Snapshot


@dataclass
class CheckResult:
    name: str
    passed: bool
    expected: object
    observed: object
    detail: str = ""
    cpus: list = field(default_factory=list)     # indexes of the CPUs at fault
    diagnosis: object = None      # a step verdict's Diagnosis (an unplug's: why not)

    def to_dict(self):
        d = {"name": self.name, "passed": self.passed, "expected": self.expected,
             "observed": self.observed, "detail": self.detail, "cpus": self.cpus}
        if self.diagnosis is not None:
            d["diagnosis"] = self.diagnosis
        return d

    def line(self):
        mark = "ok  " if self.passed else "FAIL"
        return f"{mark} {self.name}: expected {self.expected}, observed {self.observed}" + \
            (f" ({self.detail})" if self.detail else "")


@dataclass
class CheckContext:
    """What some checks need beyond the snapshot itself."""
    snapshot: Snapshot
    previous: Snapshot | None = None      # the snapshot before it in the run
    smis_since_previous: int = 0          # SMIs the guest raised since ``previous``
    guest_alive: bool | None = None


def _hex(v):
    return f"{v:#x}" if isinstance(v, int) else str(v)


def needs_smbase(check):
    """A check about SMBASEs fails, saying why, on a snapshot that has none (one taken
    without migration): it must never pass vacuously."""
    @functools.wraps(check)
    def wrapper(ctx, arg):
        missing = [c.index for c in ctx.snapshot.cpus if c.smbase is None]
        if missing:
            return CheckResult(check.__name__, False, "every CPU's SMBASE", "unknown",
                               f"this snapshot ({ctx.snapshot.source}) has no SMBASE for "
                               f"CPU {', '.join(map(str, missing))}", missing)
        return check(ctx, arg)
    return wrapper


@needs_smbase
def smbase_relocated(ctx, arg):
    bad = [c.index for c in ctx.snapshot.cpus if c.smbase == hw.DEFAULT_SMBASE]
    return CheckResult("smbase_relocated", not bad, f"no CPU at SMBASE {hw.DEFAULT_SMBASE:#x}",
                       {c.index: _hex(c.smbase) for c in ctx.snapshot.cpus},
                       f"CPU {', '.join(map(str, bad))} still at the default SMBASE"
                       if bad else "", bad)


@needs_smbase
def smbase_in_tseg(ctx, arg):
    t = ctx.snapshot.tseg
    if t is None or not t.size:
        return CheckResult("smbase_in_tseg", False, "TSEG enabled", "no TSEG",
                           "ESMRAMC T_EN/G_SMRAME not set", [])
    bad = [c.index for c in ctx.snapshot.cpus
           if not hw.smram_in_tseg(c.smbase, t.base, t.size)]
    return CheckResult("smbase_in_tseg", not bad,
                       f"entry and save state in TSEG [{t.base:#x}, {t.base + t.size:#x})",
                       {c.index: _hex(c.smbase) for c in ctx.snapshot.cpus},
                       f"CPU {', '.join(map(str, bad))} outside TSEG" if bad else "", bad)


def smram_areas(smbase):
    """The SMRAM a CPU uses: its entry page and its save-state map (hw.py)."""
    return [(smbase + hw.SMI_ENTRY_OFFSET, smbase + hw.SMI_ENTRY_OFFSET + hw.SMI_ENTRY_SPAN),
            (smbase + hw.SAVE_STATE_OFFSET, smbase + hw.SAVE_STATE_END)]


@needs_smbase
def smbase_tiles_disjoint(ctx, arg):
    spans = sorted((lo, hi, c.index) for c in ctx.snapshot.cpus for lo, hi in
                   smram_areas(c.smbase))
    clashes = set()
    for i, (lo, hi, idx) in enumerate(spans):
        for lo2, hi2, idx2 in spans[i + 1:]:
            if lo2 >= hi:
                break
            if idx2 != idx:
                clashes.add(tuple(sorted((idx, idx2))))
    bad = sorted({i for pair in clashes for i in pair})
    return CheckResult("smbase_tiles_disjoint", not clashes,
                       "no two CPUs' SMI entry pages or save-state maps overlap",
                       {c.index: _hex(c.smbase) for c in ctx.snapshot.cpus},
                       "; ".join(f"CPU {a} and CPU {b} overlap" for a, b in sorted(clashes)),
                       bad)


def no_cpu_in_smm(ctx, arg):
    bad = [c.index for c in ctx.snapshot.cpus if c.in_smm]
    return CheckResult("no_cpu_in_smm", not bad, "no CPU in SMM",
                       {"in_smm": bad}, f"CPU {', '.join(map(str, bad))} in SMM"
                       if bad else "", bad)


def smi_delivered(ctx, arg):
    n, prev = ctx.smis_since_previous, ctx.previous
    if prev is None:
        return CheckResult("smi_delivered", False, "a snapshot before the SMIs",
                           "none", "add a snapshot step before the smi step", [])
    before = {c.index: c.smi_count for c in prev.cpus}
    bad, observed = [], {}
    for c in ctx.snapshot.cpus:
        if c.smi_count is None:
            observed[c.index] = "unknown"
            bad.append(c.index)
            continue
        if c.index in before and before[c.index] is not None:
            delta = c.smi_count - before[c.index]
            observed[c.index] = f"+{delta}"
            if delta != n:
                bad.append(c.index)
        else:   # a CPU new since the previous snapshot: it took at least these
            observed[c.index] = f"{c.smi_count} (new)"
            if c.smi_count < n:
                bad.append(c.index)
    return CheckResult("smi_delivered", not bad, f"every CPU +{n} SMIs", observed,
                       f"CPU {', '.join(map(str, bad))} did not take exactly {n}"
                       if bad else "", bad)


@needs_smbase
def smbase_unchanged(ctx, arg):
    if ctx.previous is None:
        return CheckResult("smbase_unchanged", False, "a snapshot before", "none",
                           "add a snapshot step earlier in the scenario", [])
    before = {c.index: c.smbase for c in ctx.previous.cpus}
    bad = [c.index for c in ctx.snapshot.cpus
           if c.index in before and before[c.index] != c.smbase]
    return CheckResult("smbase_unchanged", not bad, "SMBASEs as in the previous snapshot",
                       {c.index: f"{_hex(before.get(c.index))} -> {_hex(c.smbase)}"
                        for c in ctx.snapshot.cpus},
                       f"CPU {', '.join(map(str, bad))} moved" if bad else "", bad)


def smi_features(ctx, arg):
    got = sorted(ctx.snapshot.smi_features.get("names") or [])
    return CheckResult("smi_features", got == sorted(arg), sorted(arg), got,
                       "" if got == sorted(arg) else "negotiated SMI features differ")


def cpus_present(ctx, arg):
    n = len(ctx.snapshot.cpus)
    return CheckResult("cpus_present", n == arg, arg, n,
                       "" if n == arg else f"CPUs present: {[c.index for c in ctx.snapshot.cpus]}")


def cpus_online(ctx, arg):
    known = [c for c in ctx.snapshot.cpus if c.online is not None]
    if not known:
        return CheckResult("cpus_online", False, arg, "unknown",
                           "the guest did not report online CPUs", [])
    n = sum(1 for c in known if c.online)
    offline = [c.index for c in known if not c.online]
    return CheckResult("cpus_online", n == arg, arg, n,
                       f"offline: {offline}" if n != arg else "", offline if n != arg else [])


def tseg_locked(ctx, arg):
    regs = ctx.snapshot.registers
    smram, esmramc = regs.get("smram"), regs.get("esmramc")
    if smram is None or esmramc is None:
        return CheckResult("tseg_locked", False, "D_LCK and T_EN set", "registers unknown")
    d_lck = bool(smram & hw.SMRAM_D_LCK)
    t_en = bool(esmramc & hw.ESMRAMC_T_EN)
    return CheckResult("tseg_locked", d_lck and t_en, "SMRAM.D_LCK=1, ESMRAMC.T_EN=1",
                       f"SMRAM={smram:#04x} (D_LCK={int(d_lck)}), "
                       f"ESMRAMC={esmramc:#04x} (T_EN={int(t_en)})")


def guest_alive(ctx, arg):
    return CheckResult("guest_alive", bool(ctx.guest_alive), "guest agent answers",
                       {True: "answers", False: "no answer", None: "not asked"}[ctx.guest_alive])


def microcode_uniform(ctx, arg):
    revs = {c.index: c.ucode_rev for c in ctx.snapshot.cpus}
    distinct = set(revs.values())
    ok = len(distinct) == 1 and None not in distinct
    majority = max(distinct, key=lambda r: sum(1 for v in revs.values() if v == r)) \
        if distinct else None
    bad = [i for i, r in revs.items() if r != majority]
    return CheckResult("microcode_uniform", ok, "every CPU at the same microcode revision",
                       {i: _hex(r) for i, r in revs.items()},
                       "" if ok else f"CPU {', '.join(map(str, bad))} differ", bad)


def microcode_revision(ctx, arg):
    # ucode_rev is the raw MSR 0x8B value: the revision is in its high 32 bits on Intel,
    # the whole low value on AMD (QEMU stores what the guest reads).
    bad = [c.index for c in ctx.snapshot.cpus if c.ucode_rev != arg]
    return CheckResult("microcode_revision", not bad, _hex(arg),
                       {c.index: _hex(c.ucode_rev) for c in ctx.snapshot.cpus},
                       f"CPU {', '.join(map(str, bad))} differ" if bad else "", bad)


def microcode_guest(ctx, arg):
    """What each CPU the guest runs reports as its microcode (MSR 0x8B read through the
    msr driver, /proc/cpuinfo, sysfs when Linux publishes it) agrees with QEMU's
    ``ucode-rev`` decoded for the CPU's vendor, and every such CPU reports the same
    revision: the guest's own view, where microcode_uniform reads QEMU's property."""
    from .microcode.cpuid import ucode_revision
    observed, disagree, revs = {}, [], {}
    for c in ctx.snapshot.cpus:
        if not c.online:
            continue
        want = ucode_revision(c.vendor, c.ucode_rev)
        observed[c.index] = (f"{c.vendor}: msr {_hex(c.guest_msr_ucode)}, cpuinfo "
                             f"{_hex(c.guest_ucode_rev)}, sysfs {_hex(c.guest_ucode_sysfs)}; "
                             f"ucode-rev {_hex(c.ucode_rev)}")
        if (c.vendor is None or c.guest_msr_ucode is None or c.guest_msr_ucode != c.ucode_rev
                or c.guest_ucode_rev != want or c.guest_ucode_sysfs not in (None, want)):
            disagree.append(c.index)
        else:
            revs[c.index] = want
    odd = []
    if len(set(revs.values())) > 1:
        values = list(revs.values())
        majority = max(sorted(set(values)), key=values.count)
        odd = [i for i, r in revs.items() if r != majority]
    why = ([] if observed else ["no CPU the guest runs was read"]) + \
        ([f"CPU {', '.join(map(str, disagree))}: the guest reads another value than "
          f"QEMU's ucode-rev"] if disagree else []) + \
        ([f"CPU {', '.join(map(str, odd))}: another revision than the other CPUs"]
         if odd else [])
    return CheckResult("microcode_guest", not why,
                       "every online CPU's MSR 0x8B = ucode-rev, /proc/cpuinfo and sysfs = "
                       "its revision for the vendor, the same on every CPU",
                       observed, "; ".join(why), sorted(set(disagree) | set(odd)))


# --- the table of checks ---------------------------------------------------------------
BACKENDS = ("qemu", "model")
ARG_KINDS = (None, "int", "names")    # none, an integer >= 0, a list of SMI feature names


@dataclass(frozen=True)
class Check:
    """One check as scenarios name it: the function (its name is the check's name), the
    kind of argument the loader accepts (``ARG_KINDS``) and the backends that can run
    it (a scenario that runs on another backend is refused by the loader)."""
    function: Callable
    arg: str | None = None
    backends: tuple = BACKENDS

    @property
    def name(self):
        return self.function.__name__


# A new check is a function above and one row here; the scenario loader (scenario.CHECKS)
# and the runner (run_check) read nothing else.
CHECK_TABLE = {c.name: c for c in (
    Check(smbase_relocated),
    Check(smbase_in_tseg),
    Check(smbase_tiles_disjoint),
    Check(no_cpu_in_smm),
    Check(smi_delivered),
    Check(smbase_unchanged),
    Check(smi_features, "names"),
    Check(cpus_present, "int"),
    Check(cpus_online, "int"),
    Check(tseg_locked),
    Check(guest_alive),
    Check(microcode_uniform),
    Check(microcode_revision, "int"),
    Check(microcode_guest),
)}
CHECK_ARGS = {name: c.arg for name, c in CHECK_TABLE.items()}        # name -> argument kind
CHECK_FUNCTIONS = {name: c.function for name, c in CHECK_TABLE.items()}


def backend_problems(step_checks, backends):
    """For the loader: each check of a step that a backend the scenario runs on cannot
    run, as ``"check NAME: not on BACKEND"``."""
    return [f"check {c['name']}: not on {b}" for c in step_checks for b in backends
            if b not in CHECK_TABLE[c["name"]].backends]


def run_check(name, arg, ctx: CheckContext) -> CheckResult:
    return CHECK_FUNCTIONS[name](ctx, arg)
