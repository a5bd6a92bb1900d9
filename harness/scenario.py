"""Scenario files: load, validate, and report every mistake as ``file:line: key: problem``.

The YAML is composed into nodes first (PyYAML keeps each node's line), then validated
against the schema below by hand, so that every error can name its line. A mistake
stops only the part it is in (a key, a step, an expectation): the rest is still
validated, and every problem of the file is reported at once, one line each, in the
order of the file. Steps are validated from ``steps.STEP_TABLE`` (their argument kinds
parsed by ``ARG_PARSERS`` below), checks from ``checks.CHECK_TABLE``. The format is
documented key by key in docs/scenarios.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from . import bootpolicy
from . import firmware as fwmod
from . import known_bugs
from .checks import CHECK_ARGS, backend_problems
from .errors import ConfigError, ScenarioError
from .machine import (ACCELS, CPUS_RANGE, SMI_FEATURES, TSEG_MBYTES_RANGE,
                      MachineConfig, parse_memory)
from .steps import AFTER_BOOT, BEFORE_BOOT, STEP_OPS, STEP_TABLE, STEP_VERDICTS

OUTCOMES = ("pass", "refused", "hang", "fail", "crash")
CHECKS = CHECK_ARGS       # name -> kind of argument (None = takes none): checks.CHECK_TABLE
# What proves a hang (harness.qemu.progress): every CPU at one place with no output,
# or the firmware resetting the machine over and over.
HANG_EVIDENCE = ("stall", "reset-loop", "smi-storm")
# Signals QEMU dies of by itself (abort(), assertions, glibc's heap checks, a bad
# pointer): SIGKILL and SIGTERM come from outside and are never an expected crash.
CRASH_SIGNALS = ("SIGABRT", "SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGTRAP")


@dataclass
class Step:
    op: str
    args: dict
    line: int

    def describe(self):
        return f"{self.op} {self.args}" if self.args else self.op


@dataclass
class Expectation:
    outcome: str = "pass"
    step: int | None = None           # 1-based index of the step where it must happen
    message: str | None = None        # refused: substring of QEMU's message
    in_smm: list | None = None        # hang: cpu indexes in SMM
    halted: list | None = None        # hang: cpu indexes halted
    spinning: list | None = None      # hang: cpu indexes spinning at one place
    smbase_default: list | None = None   # hang: cpu indexes never relocated (0x30000)
    evidence: str | None = None       # hang: what proves it (stall, reset-loop, smi-storm)
    signal: list | None = None        # crash: the signals QEMU may die of (SIGABRT ...)
    check: str | None = None          # fail: the check that must fail
    bug: str | None = None            # a known bug (harness.known_bugs) this reproduces
    otherwise: "Expectation | None" = None   # where the bug's builds are not in use
    absent_bug: str | None = None     # set on the expectation used instead of a bug's
    line: int = 0

    def summary(self):
        d = {k: v for k, v in self.__dict__.items()
             if v is not None and k not in ("otherwise", "line")}
        return d


@dataclass
class Scenario:
    name: str
    path: Path
    purpose: str
    machine: MachineConfig
    steps: list
    accels: tuple = ("tcg", "kvm")    # where this scenario may run
    expect: dict = field(default_factory=dict)   # accel -> Expectation
    backends: tuple = ("qemu", "model")
    boot: str = bootpolicy.DEFAULT    # fresh: the boot is under test; resume-ok: may
                                      # start from the boot cache (harness/bootpolicy.py)

    def expectation(self, accel, qemu_version=None, firmware_edk2=None):
        """The expectation in force for a run: a known bug's where the build has it,
        else the plain one (``otherwise``, by default pass), marked with the bug that
        this build does not have."""
        e = self.expect.get(accel) or self.expect.get("any") or Expectation()
        absent = None
        while e.bug and not known_bugs.get(e.bug).affects(accel, qemu_version,
                                                          firmware_edk2):
            absent = e.bug
            e = e.otherwise or Expectation(line=e.line)
        return replace(e, absent_bug=absent) if absent else e

    def expectation_line(self):
        """0-based line of the expectation (pytest's item location), else 0."""
        lines = [e.line for e in self.expect.values() if e.line]
        return min(lines) - 1 if lines else 0

    @property
    def needs_paused_start(self):
        return any(s.op == "coldplug" for s in self.steps)


# --- YAML nodes with lines -------------------------------------------------------------
class _Ctx:
    def __init__(self, path):
        self.path = path
        self.problems = []        # ScenarioError, every one found so far

    def err(self, node_or_line, key, msg):
        line = node_or_line if isinstance(node_or_line, int) else node_or_line.start_mark.line + 1
        return ScenarioError(self.path, line, key, msg)

    def note(self, error):
        self.problems.append(error)

    def attempt(self, parse, *args, default=None):
        """``parse(*args)``; a mistake in it is noted and ``default`` returned, so that
        the parts after it are validated too."""
        try:
            return parse(*args)
        except ScenarioError as e:
            self.note(e)
            return default


def _scalar(ctx, node, key):
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.err(node, key, f"expected a single value, got a {_kind(node)}")
    if node.tag == "tag:yaml.org,2002:null":
        return None             # an empty value serializes to no document at all
    return yaml.safe_load(yaml.serialize(node)) if node.tag != "tag:yaml.org,2002:str" \
        else node.value


def _kind(node):
    return {yaml.MappingNode: "mapping", yaml.SequenceNode: "list",
            yaml.ScalarNode: "value"}[type(node)]


def _mapping(ctx, node, key, allowed):
    if not isinstance(node, yaml.MappingNode):
        raise ctx.err(node, key, f"expected a mapping, got a {_kind(node)}")
    out = {}
    for k, v in node.value:
        name = k.value if isinstance(k, yaml.ScalarNode) else None
        if name is None:
            ctx.note(ctx.err(k, key, "keys must be plain names"))
            continue
        full = f"{key}.{name}" if key else name
        if allowed is not None and name not in allowed:
            ctx.note(ctx.err(k, full, f"unknown key (allowed: {', '.join(sorted(allowed))})"))
            continue
        if name in out:
            ctx.note(ctx.err(k, full, "duplicate key"))
            continue
        out[name] = v
    return out


def _int(ctx, node, key, lo=None, hi=None):
    v = _scalar(ctx, node, key)
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, str):
            try:
                v = int(v, 0)
            except ValueError:
                raise ctx.err(node, key, f"expected an integer, got {v!r}") from None
        else:
            raise ctx.err(node, key, f"expected an integer, got {v!r}")
    if lo is not None and v < lo or hi is not None and v > hi:
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ctx.err(node, key, f"{v} out of range ({rng})")
    return v


def _bool(ctx, node, key):
    v = _scalar(ctx, node, key)
    if not isinstance(v, bool):
        raise ctx.err(node, key, f"expected true or false, got {v!r}")
    return v


def _str(ctx, node, key):
    v = _scalar(ctx, node, key)
    if not isinstance(v, str) or not v.strip():
        raise ctx.err(node, key, f"expected a non-empty string, got {v!r}")
    return v


def _number(ctx, node, key, lo=0.0, hi=3600.0):
    v = _scalar(ctx, node, key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ctx.err(node, key, f"expected a number of seconds, got {v!r}")
    if not lo <= v <= hi:
        raise ctx.err(node, key, f"{v} out of range ({lo}..{hi})")
    return float(v)


def _memory(ctx, node, key):
    try:
        return parse_memory(_scalar(ctx, node, key), key)
    except ConfigError as e:
        raise ctx.err(node, key, str(e).split(": ", 1)[1]) from None


def _props(ctx, node, key):
    props = {}
    for name, v in _mapping(ctx, node, key, None).items():
        val = _scalar(ctx, v, f"{key}.{name}")
        if isinstance(val, (list, dict)) or val is None:
            raise ctx.err(v, f"{key}.{name}", "expected a single value")
        props[name] = val
    return props


# --- sections --------------------------------------------------------------------------
MACHINE_KEYS = {"cpu_model", "cpus", "maxcpus", "memory", "tseg_mbytes", "firmware",
                "smi_features", "cpu_props", "extra_args", "tcg_thread", "guest_kernel"}


def _machine(ctx, node):
    m = _mapping(ctx, node, "machine", MACHINE_KEYS)
    cfg = MachineConfig()
    before = len(ctx.problems)

    def key(name, parse):
        if name in m:
            ctx.attempt(parse, m[name])

    def _cpus(n):
        cfg.cpus = _int(ctx, n, "machine.cpus", *CPUS_RANGE)
    key("cpus", _cpus)
    cfg.maxcpus = cfg.cpus
    key("cpu_model", lambda n: setattr(cfg, "cpu_model", _str(ctx, n, "machine.cpu_model")))
    key("maxcpus", lambda n: setattr(cfg, "maxcpus",
                                     _int(ctx, n, "machine.maxcpus", *CPUS_RANGE)))
    key("memory", lambda n: setattr(cfg, "memory_mib", _memory(ctx, n, "machine.memory")))
    key("tseg_mbytes", lambda n: setattr(cfg, "tseg_mbytes", _int(
        ctx, n, "machine.tseg_mbytes", *TSEG_MBYTES_RANGE)))

    def _firmware(n):
        name = _str(ctx, n, "machine.firmware") if n is not None else cfg.firmware
        if name not in fwmod.profile_names():
            raise ctx.err(n if n is not None else node, "machine.firmware",
                          f"unknown firmware profile {name!r} "
                          f"(known: {', '.join(fwmod.profile_names())})")
        cfg.firmware = name
    ctx.attempt(_firmware, m.get("firmware"))

    def _smi_features(n):
        feats = _mapping(ctx, n, "machine.smi_features", set(SMI_FEATURES))
        for k, v in feats.items():
            cfg.smi_features[k] = ctx.attempt(_bool, ctx, v, f"machine.smi_features.{k}",
                                              default=False)
    key("smi_features", _smi_features)
    key("cpu_props", lambda n: setattr(cfg, "cpu_props", _props(ctx, n, "machine.cpu_props")))
    key("tcg_thread", lambda n: setattr(cfg, "tcg_thread",
                                        _str(ctx, n, "machine.tcg_thread")))
    key("guest_kernel", lambda n: setattr(cfg, "guest_kernel",
                                          _str(ctx, n, "machine.guest_kernel")))

    def _extra_args(n):
        if not isinstance(n, yaml.SequenceNode):
            raise ctx.err(n, "machine.extra_args", "expected a list of strings")
        cfg.extra_args = [_str(ctx, x, "machine.extra_args") for x in n.value]
    key("extra_args", _extra_args)
    if len(ctx.problems) == before:          # the rules between keys (machine.py)
        for name, problem in cfg.problems():
            ctx.note(ctx.err(m.get(name, node), f"machine.{name}", problem))
    return cfg


def _slot(ctx, node, key, machine):
    return _int(ctx, node, key, 0, machine.maxcpus - 1)


def _cpu_plug(ctx, node, key, machine):
    if isinstance(node, yaml.ScalarNode):
        return {"slot": _slot(ctx, node, key, machine), "props": {}}
    m = _mapping(ctx, node, key, {"slot", "props"})
    if "slot" not in m:
        raise ctx.err(node, f"{key}.slot", "missing (which CPU slot to plug)")
    return {"slot": _slot(ctx, m["slot"], f"{key}.slot", machine),
            "props": _props(ctx, m["props"], f"{key}.props") if "props" in m else {}}


def _check_args(ctx, node, key):
    """check: name | [name, {name: arg}, ...] | {name: arg, ...} -> list of (name, arg)"""
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    out = []
    for item in items:
        if isinstance(item, yaml.ScalarNode):
            pairs = [(item, None)]
        else:
            pairs = [(k, v) for k, v in _mapping(ctx, item, key, set(CHECKS)).items()]
        for k, v in pairs:
            name = k if isinstance(k, str) else _str(ctx, k, key)
            knode = item if isinstance(k, str) else k
            if name not in CHECKS:
                raise ctx.err(knode, key, f"unknown check {name!r} "
                              f"(known: {', '.join(sorted(CHECKS))})")
            kind = CHECKS[name]
            if kind is None:
                if v is not None and not (isinstance(v, yaml.ScalarNode) and v.value in
                                          ("", "null", "~", "true")):
                    raise ctx.err(v, f"{key}.{name}", "takes no argument")
                arg = None
            elif v is None:
                raise ctx.err(knode, f"{key}.{name}", f"needs an argument ({kind})")
            elif kind == "int":
                arg = _int(ctx, v, f"{key}.{name}", 0)
            else:
                if not isinstance(v, yaml.SequenceNode):
                    raise ctx.err(v, f"{key}.{name}", "expected a list of names")
                arg = sorted(_str(ctx, x, f"{key}.{name}") for x in v.value)
                bad = [a for a in arg if a not in SMI_FEATURES]
                if bad:
                    raise ctx.err(v, f"{key}.{name}", f"unknown SMI feature {bad[0]!r}")
            out.append({"name": name, "arg": arg})
    return {"checks": out}


def _step(ctx, node, index, machine):
    key = f"steps[{index}]"
    if isinstance(node, yaml.ScalarNode):
        op, val = node.value, None
    else:
        m = _mapping(ctx, node, key, None)
        if len(m) != 1:
            raise ctx.err(node, key, f"a step is one operation, got {len(m)} keys "
                          f"({', '.join(m)})")
        op, val = next(iter(m.items()))
    if op not in STEP_TABLE:
        raise ctx.err(node, key, f"unknown step {op!r} (known: {', '.join(STEP_OPS)})")
    k = f"{key}.{op}"
    no_arg = val is None or (isinstance(val, yaml.ScalarNode) and val.value in ("", "~", "null"))
    args = ARG_PARSERS[STEP_TABLE[op].arg](ctx, node, None if no_arg else val, k, machine)
    return Step(op, args, node.start_mark.line + 1)


# --- step arguments, by the argument kind of steps.STEP_TABLE --------------------------
# Each parser gets the step's node, its value (None when the step has none), the key to
# name in errors and the machine, and returns the step's args.
def _arg_none(ctx, node, val, k, machine):
    if val is not None:
        raise ctx.err(val, k, "takes no argument")
    return {}


def _needs(ctx, node, val, k):
    if val is None:
        raise ctx.err(node, k, "needs an argument")
    return val


def _arg_boot(ctx, node, val, k, machine):
    if val is None:
        return {}
    m = _mapping(ctx, val, k, {"timeout"})
    return {"timeout": _number(ctx, m["timeout"], f"{k}.timeout", 1, 3600)} \
        if "timeout" in m else {}


def _arg_plug(ctx, node, val, k, machine):
    return _cpu_plug(ctx, _needs(ctx, node, val, k), k, machine)


def _arg_plugs(ctx, node, val, k, machine):
    val = _needs(ctx, node, val, k)
    if not isinstance(val, yaml.SequenceNode):
        return _cpu_plug(ctx, val, k, machine)
    # device_add of each, back to back, before the guest has handled the first
    # (what `virsh setvcpus` does); then the guest must list them all
    if len(val.value) < 2:
        raise ctx.err(val, k, "a list names two or more CPUs added back to back")
    plugs = [_cpu_plug(ctx, x, f"{k}[{j}]", machine) for j, x in enumerate(val.value)]
    slots = [p["slot"] for p in plugs]
    if len(set(slots)) != len(slots):
        raise ctx.err(val, k, f"slot listed twice ({slots})")
    return {"plugs": plugs}


def _arg_slot(ctx, node, val, k, machine):
    return {"slot": _slot(ctx, _needs(ctx, node, val, k), k, machine)}


def _arg_unplug(ctx, node, val, k, machine):
    val = _needs(ctx, node, val, k)
    if isinstance(val, yaml.ScalarNode):
        return {"slot": _slot(ctx, val, k, machine)}
    m = _mapping(ctx, val, k, {"slot", "timeout"})
    if "slot" not in m:
        raise ctx.err(val, f"{k}.slot", "missing (which CPU slot to unplug)")
    args = {"slot": _slot(ctx, m["slot"], f"{k}.slot", machine)}
    if "timeout" in m:
        args["timeout"] = _number(ctx, m["timeout"], f"{k}.timeout", 1, 3600)
    return args


def _arg_smi(ctx, node, val, k, machine):
    val = _needs(ctx, node, val, k)
    if isinstance(val, yaml.ScalarNode):
        return {"value": _int(ctx, val, k, 0, 255), "data": None, "count": 1}
    m = _mapping(ctx, val, k, {"value", "data", "count"})
    return {
        "value": _int(ctx, m["value"], f"{k}.value", 0, 255) if "value" in m else 0,
        "data": _int(ctx, m["data"], f"{k}.data", 0, 255) if "data" in m else None,
        "count": _int(ctx, m["count"], f"{k}.count", 1, 100000) if "count" in m else 1,
    }


def _arg_guest(ctx, node, val, k, machine):
    val = _needs(ctx, node, val, k)
    if isinstance(val, yaml.ScalarNode):
        return {"command": _str(ctx, val, k), "expect_rc": 0, "expect_output": None}
    m = _mapping(ctx, val, k, {"command", "expect_rc", "expect_output"})
    if "command" not in m:
        raise ctx.err(val, f"{k}.command", "missing")
    pattern = _str(ctx, m["expect_output"], f"{k}.expect_output") \
        if "expect_output" in m else None
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ctx.err(m["expect_output"], f"{k}.expect_output",
                          f"bad regular expression: {e}") from None
    return {"command": _str(ctx, m["command"], f"{k}.command"),
            "expect_rc": _int(ctx, m["expect_rc"], f"{k}.expect_rc", 0, 255)
            if "expect_rc" in m else 0,
            "expect_output": pattern}


def _arg_seconds(ctx, node, val, k, machine):
    return {"seconds": _number(ctx, _needs(ctx, node, val, k), k)}


def _arg_checks(ctx, node, val, k, machine):
    return _check_args(ctx, _needs(ctx, node, val, k), k)


ARG_PARSERS = {"none": _arg_none, "boot": _arg_boot, "plug": _arg_plug,
               "plugs": _arg_plugs, "slot": _arg_slot, "unplug": _arg_unplug,
               "smi": _arg_smi, "guest": _arg_guest, "seconds": _arg_seconds,
               "checks": _arg_checks}


def _int_list(ctx, node, key):
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.err(node, key, "expected a list of cpu indexes")
    return sorted(_int(ctx, x, key, 0, 255) for x in node.value)


def _expectation(ctx, node, key, nsteps):
    if isinstance(node, yaml.ScalarNode):
        outcome = _str(ctx, node, key)
        if outcome not in OUTCOMES:
            raise ctx.err(node, key, f"unknown outcome {outcome!r} "
                          f"(known: {', '.join(OUTCOMES)})")
        if outcome in ("refused", "fail", "crash"):
            raise ctx.err(node, key, f"outcome {outcome} needs details "
                          f"({'check' if outcome == 'fail' else 'message'})")
        return Expectation(outcome=outcome, line=node.start_mark.line + 1)
    m = _mapping(ctx, node, key, {"outcome", "step", "message", "in_smm", "halted", "check",
                                  "bug", "otherwise", "spinning", "smbase_default",
                                  "evidence", "signal"})
    if "outcome" not in m:
        raise ctx.err(node, f"{key}.outcome", "missing")
    e = Expectation(outcome=_str(ctx, m["outcome"], f"{key}.outcome"),
                    line=node.start_mark.line + 1)
    if e.outcome not in OUTCOMES:
        raise ctx.err(m["outcome"], f"{key}.outcome", f"unknown outcome {e.outcome!r} "
                      f"(known: {', '.join(OUTCOMES)})")
    allowed = {"pass": set(), "refused": {"step", "message"}, "crash": {"step", "message", "signal"},
               "hang": {"step", "in_smm", "halted", "spinning", "smbase_default",
                        "evidence"},
               "fail": {"step", "check", "message"}}[e.outcome]
    for k, v in m.items():
        if k not in ("outcome", "bug", "otherwise") and k not in allowed:
            raise ctx.err(v, f"{key}.{k}", f"not used with outcome {e.outcome}")
    if "step" in m:
        e.step = _int(ctx, m["step"], f"{key}.step", 1, nsteps)
    if "message" in m:
        e.message = _str(ctx, m["message"], f"{key}.message")
    if e.outcome == "refused" and not e.message:
        raise ctx.err(node, f"{key}.message", "missing (QEMU's expected message)")
    if e.outcome == "crash":
        if not e.message:
            raise ctx.err(node, f"{key}.message", "missing (a regular expression for "
                          "what QEMU says when it dies)")
        try:
            re.compile(e.message)
        except re.error as err:
            raise ctx.err(m["message"], f"{key}.message",
                          f"bad regular expression: {err}") from None
    if "signal" in m:
        n = m["signal"]
        e.signal = [_str(ctx, x, f"{key}.signal") for x in
                    (n.value if isinstance(n, yaml.SequenceNode) else [n])]
        bad = [x for x in e.signal if x not in CRASH_SIGNALS]
        if bad or not e.signal:
            raise ctx.err(n, f"{key}.signal", f"unknown signal {bad[0] if bad else None!r} "
                          f"(QEMU's own deaths: {', '.join(CRASH_SIGNALS)})")
    if "in_smm" in m:
        e.in_smm = _int_list(ctx, m["in_smm"], f"{key}.in_smm")
    for k in ("halted", "spinning", "smbase_default"):
        if k in m:
            setattr(e, k, _int_list(ctx, m[k], f"{key}.{k}"))
    if "evidence" in m:
        e.evidence = _str(ctx, m["evidence"], f"{key}.evidence")
        if e.evidence not in HANG_EVIDENCE:
            raise ctx.err(m["evidence"], f"{key}.evidence", f"unknown evidence "
                          f"{e.evidence!r} (known: {', '.join(HANG_EVIDENCE)})")
    if "check" in m:
        e.check = _str(ctx, m["check"], f"{key}.check")
        if e.check not in CHECKS and e.check not in STEP_VERDICTS:
            raise ctx.err(m["check"], f"{key}.check", f"unknown check {e.check!r}")
    if e.outcome == "fail" and not e.check:
        raise ctx.err(node, f"{key}.check", "missing (which check is expected to fail)")
    if "bug" in m:
        e.bug = _str(ctx, m["bug"], f"{key}.bug")
        if e.bug not in known_bugs.BY_NAME:
            raise ctx.err(m["bug"], f"{key}.bug", f"unknown bug {e.bug!r} (known: "
                          f"{', '.join(known_bugs.BY_NAME)})")
        if e.outcome == "pass":
            raise ctx.err(m["bug"], f"{key}.bug", "a known bug's expectation is the "
                          "failure it causes, not pass")
    if "otherwise" in m:
        if "bug" not in m:
            raise ctx.err(m["otherwise"], f"{key}.otherwise", "only with bug: (what "
                          "holds on the builds without it)")
        e.otherwise = _expectation(ctx, m["otherwise"], f"{key}.otherwise", nsteps)
    return e


TOP_KEYS = {"name", "purpose", "machine", "accel", "expect", "steps", "backends", "boot"}


def load(path) -> Scenario:
    """The scenario in ``path``; a ScenarioError naming every problem of the file (one
    ``file:line: key: problem`` line each, in the order of the file) if it has any."""
    path = Path(path)
    ctx = _Ctx(path)
    try:
        scn = _load(ctx, path)
    except ScenarioError as e:
        ctx.note(e)
    if ctx.problems:
        raise ScenarioError.of(sorted(ctx.problems, key=lambda e: e.line))
    return scn


def _load(ctx, path):
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError(path, 0, None, f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ScenarioError(path, 0, None, "not UTF-8 text") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise ScenarioError(path, mark.line + 1 if mark else 0, None,
                            f"YAML syntax: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ScenarioError(path, 0, None, f"YAML: {e}") from None
    if root is None:
        raise ScenarioError(path, 1, None, "empty file")
    top = _mapping(ctx, root, "", TOP_KEYS)
    for required in ("purpose", "steps"):
        if required not in top:
            ctx.note(ctx.err(root, required, "missing"))

    def _name():
        name = _str(ctx, top["name"], "name") if "name" in top else path.stem
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ctx.err(top.get("name", root), "name",
                          "use letters, digits, '-', '_' and '.' only")
        return name
    name = ctx.attempt(_name)
    purpose = ctx.attempt(_str, ctx, top["purpose"], "purpose") if "purpose" in top else None
    machine = ctx.attempt(_machine, ctx, top["machine"], default=MachineConfig()) \
        if "machine" in top else MachineConfig()
    steps = ctx.attempt(_steps, ctx, top["steps"], machine, default=[]) \
        if "steps" in top else []
    accels = ctx.attempt(_choices, ctx, top, "accel", ("tcg", "kvm"), "accelerator",
                         default=("tcg", "kvm"))
    backends = ctx.attempt(_choices, ctx, top, "backends", ("qemu", "model"), "backend",
                           default=())
    for i, s in enumerate(steps, 1):   # the tables say which backends run a step, a check
        if s is None:
            continue
        for b in backends:
            if b not in STEP_TABLE[s.op].backends:
                ctx.note(ctx.err(s.line, f"steps[{i}].{s.op}", f"not on {b}"))
        for problem in backend_problems(s.args["checks"] if s.op == "check" else [], backends):
            ctx.note(ctx.err(s.line, f"steps[{i}].check", problem))
    expect = {}
    if "expect" in top:
        en = top["expect"]
        direct = isinstance(en, yaml.MappingNode) and any(
            isinstance(k, yaml.ScalarNode) and k.value == "outcome" for k, _ in en.value)
        if isinstance(en, yaml.ScalarNode) or direct:   # one expectation for any accel
            expect["any"] = ctx.attempt(_expectation, ctx, en, "expect", len(steps))
        else:
            for k, v in ctx.attempt(_mapping, ctx, en, "expect", {"tcg", "kvm", "any"},
                                    default={}).items():
                expect[k] = ctx.attempt(_expectation, ctx, v, f"expect.{k}", len(steps))
    boot = ctx.attempt(_boot_policy, ctx, top, steps, expect)
    if ctx.problems:
        return None
    return Scenario(name=name, path=path, purpose=purpose, machine=machine, steps=steps,
                    accels=accels, expect=expect, backends=backends, boot=boot)


def _boot_policy(ctx, top, steps, expect):
    """``boot: fresh | resume-ok``; resume-ok is refused where the scenario shows its
    boot is under test (harness/bootpolicy.py), naming the line that shows it."""
    if "boot" not in top:
        return bootpolicy.DEFAULT
    policy = _str(ctx, top["boot"], "boot")
    if policy not in bootpolicy.POLICIES:
        raise ctx.err(top["boot"], "boot", f"unknown boot policy {policy!r} "
                      f"({' or '.join(bootpolicy.POLICIES)})")
    if policy == bootpolicy.RESUME_OK:
        for line, key, problem in bootpolicy.resume_problems(
                [s for s in steps if s is not None],
                {k: e for k, e in expect.items() if e is not None}):
            raise ctx.err(top["boot"], "boot", f"resume-ok, but {key} (line {line}) "
                          f"{problem}")
    return policy


def _steps(ctx, sn, machine):
    """Every step (None for one with a mistake), then their order if all are valid."""
    if not isinstance(sn, yaml.SequenceNode) or not sn.value:
        raise ctx.err(sn, "steps", "expected a non-empty list of steps")
    steps = [ctx.attempt(_step, ctx, s, i + 1, machine) for i, s in enumerate(sn.value)]
    if None not in steps:
        _check_order(ctx, steps)
    return steps


def _choices(ctx, top, key, allowed, what):
    """``key: one`` or ``key: [one, two]`` out of ``allowed``; all of them by default."""
    if key not in top:
        return allowed
    n = top[key]
    nodes = n.value if isinstance(n, yaml.SequenceNode) else [n]
    values = tuple(_str(ctx, v, key) for v in nodes)
    for v, name in zip(nodes, values):
        if name not in allowed:
            raise ctx.err(v, key, f"unknown {what} {name!r} ({' or '.join(allowed)})")
    return values


def _check_order(ctx, steps):
    """When each step may come (steps.STEP_TABLE): before boot only while paused, after
    it only once booted; boot itself once (reset boots again)."""
    booted = False
    for i, s in enumerate(steps, 1):
        key = f"steps[{i}].{s.op}"
        when = STEP_TABLE[s.op].when
        if s.op == "boot":
            if booted:
                ctx.note(ctx.err(s.line, key, "the machine is already booted (use reset)"))
            booted = True
        elif when == BEFORE_BOOT and booted:
            ctx.note(ctx.err(s.line, key, f"{_TITLES.get(s.op, s.op)} must come before boot"))
        elif when == AFTER_BOOT and not booted:
            ctx.note(ctx.err(s.line, key, "needs a booted machine: add a boot step before it"))


_TITLES = {"coldplug": "cold-plug"}


def discover(paths):
    """Scenario files under ``paths`` (files or directories), sorted."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(p.rglob("*.yaml")) + sorted(p.rglob("*.yml"))
        else:
            out.append(p)
    return out


def load_all(paths) -> list:
    """Load every file; if any is malformed, one error listing every bad file's line."""
    scenarios, errors = [], []
    for p in paths:
        try:
            scenarios.append(load(p))
        except ScenarioError as e:
            errors.append(str(e))
    if errors:
        raise ConfigError("\n".join(errors))
    return scenarios


__all__ = ["Scenario", "Step", "Expectation", "load", "discover", "ACCELS", "CHECKS",
           "STEP_VERDICTS"]
