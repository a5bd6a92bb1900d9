"""Typed errors. A user's mistake is a HarnessError with one clear line; never a traceback.

The CLI and the pytest plugin print ``str(error)`` of any HarnessError and exit; anything
else escaping is a bug of the harness.
"""


class HarnessError(Exception):
    """Base class: a failure the harness can explain in one line."""


class ConfigError(HarnessError):
    """Bad input from the user: options, paths, topology, scenario files."""


class ScenarioError(ConfigError):
    """A scenario file is malformed. Formats as ``file:line: key: what is wrong``."""

    def __init__(self, file, line, key, message):
        self.file, self.line, self.key, self.message = str(file), line, key, message
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class BackendError(HarnessError):
    """The machine (real or model) failed in a way that is not a scenario verdict."""


class QemuError(BackendError):
    """QEMU could not be started or died unexpectedly."""


class QemuCrashed(QemuError):
    """QEMU died under a running scenario; ``message`` is its last stderr line, ``status``
    its exit status as subprocess reports it (negative: killed by that signal).

    ``source`` says whose words ``message`` is: "qemu" (QEMU's stderr, or a model
    repeating QEMU's exact text) or "model rule" (the model's description of a crash it
    reproduces by a rule, not QEMU's text): only QEMU's words are compared."""

    def __init__(self, status, message, source="qemu"):
        self.status, self.message, self.source = status, message, source
        super().__init__(f"QEMU {self.how()}: {message}" if message else f"QEMU {self.how()}")

    @property
    def signal(self):
        """The signal's name (SIGABRT, SIGSEGV, SIGKILL ...) if a signal ended QEMU."""
        import signal as _signal
        if self.status is None or self.status >= 0:
            return None
        try:
            return _signal.Signals(-self.status).name
        except ValueError:
            return f"signal {-self.status}"

    def how(self):
        if self.signal:
            return f"killed by {self.signal}"
        return f"exited (status {self.status})"

    def record(self):
        """How QEMU ended, for traces and outcomes."""
        return {"message": self.message, "status": self.status, "signal": self.signal,
                "message_source": self.source}


class Refused(BackendError):
    """QEMU (or the model) refused a request, e.g. device_add; ``message`` is QEMU's text."""

    def __init__(self, message):
        self.message = message
        super().__init__(f"refused: {message}")


class NotRemoved(BackendError):
    """``device_del`` was accepted but the CPU is still in its slot after the deadline,
    while the guest still answers: the unplug request was lost or declined somewhere
    between QEMU, the guest's ACPI code and the firmware. ``diagnosis`` says where."""

    def __init__(self, slot, waited, diagnosis=None):
        self.slot, self.waited = slot, waited
        self.diagnosis = diagnosis or {}
        why = self.diagnosis.get("why")
        super().__init__(f"CPU in slot {slot} not removed within {waited:g} s of device_del"
                         + (f": {why}" if why else ""))


class StillProgressing(BackendError):
    """A wait ran out while the machine was still making progress (or while there was
    not yet evidence that it was not). A slow host is not a hang: this is an ``error``
    outcome, which no expectation matches."""

    def __init__(self, what, progress):
        self.what, self.progress = what, progress
        super().__init__(f"still progressing at the deadline: {what} ({progress})")


# Hangs in which the machine keeps cycling: one instant's CPU state is not the hang's
CYCLING_EVIDENCE = {"reset-loop": "reset loop", "smi-storm": "SMI storm"}


class Hang(BackendError):
    """The guest or firmware stopped making progress, shown by evidence.

    ``diagnosis`` is a dict: {"reason": str, "evidence": {"kind": "stall" |
    "reset-loop" | "smi-storm", ...} (what proves it: harness.qemu.progress.Evidence, or the model's
    own scheduler), "cpus": [{"index", "apic_id", "in_smm", "halted", "cs", "eip",
    "smbase"}...], ...} so reports and expectations can name which CPU is in SMM, which
    is halted, which spins and which was never relocated.
    """

    def __init__(self, reason, diagnosis=None):
        self.reason = reason
        self.diagnosis = diagnosis or {}
        super().__init__(f"hang: {reason}")

    def signature(self):
        """The comparable part of a hang, by cpu index: CPUs in SMM, halted, spinning
        at one place (from the evidence), still at the default SMBASE 0x30000 (never
        relocated), and what proves the hang (``evidence``: stall, reset-loop or
        smi-storm)."""
        from .hw import DEFAULT_SMBASE
        cpus = self.diagnosis.get("cpus", [])
        ev = self.diagnosis.get("evidence") or {}
        sig = {"evidence": ev.get("kind"),
               "smbase_default": sorted(c["index"] for c in cpus
                                        if c.get("smbase") == DEFAULT_SMBASE)}
        if ev.get("kind") in CYCLING_EVIDENCE:
            # the machine cycles (through boot, or in and out of SMM): no CPU state of
            # one instant describes it
            return {**sig, "in_smm": None, "halted": None, "spinning": None}
        places = ev.get("cpus") or cpus     # a stall: the state the samples proved
        return {**sig,
                "in_smm": sorted(c["index"] for c in places if c.get("in_smm")),
                "halted": sorted(c["index"] for c in places if c.get("halted")),
                "spinning": sorted(c["index"] for c in places if not c.get("halted"))}
