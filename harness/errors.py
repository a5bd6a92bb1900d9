"""Typed errors. A user's mistake is a HarnessError with one clear line; never a traceback.

The CLI and the pytest plugin print ``str(error)`` of any HarnessError and exit; anything
else escaping is a bug of the harness.
"""
from .diagnosis import Diagnosis


class HarnessError(Exception):
    """Base class: a failure the harness can explain in one line."""


class ConfigError(HarnessError):
    """Bad input from the user: options, paths, topology, scenario files."""


class ScenarioError(ConfigError):
    """A scenario file is malformed. Formats as ``file:line: key: what is wrong``; one
    naming several problems (``problems``) is one such line each. ``file``, ``line``,
    ``key`` and ``message`` are the first problem's."""

    def __init__(self, file, line, key, message):
        self.file, self.line, self.key, self.message = str(file), line, key, message
        self.problems = [self]
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")

    @classmethod
    def of(cls, problems):
        """One error for every problem of a file, in the order given."""
        if len(problems) == 1:
            return problems[0]
        first = problems[0]
        e = cls(first.file, first.line, first.key, first.message)
        e.problems = list(problems)
        e.args = ("\n".join(str(p) for p in problems),)
        return e


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
        self.diagnosis = Diagnosis.from_dict(diagnosis)
        why = self.diagnosis.why
        super().__init__(f"CPU in slot {slot} not removed within {waited:g} s of device_del"
                         + (f": {why}" if why else ""))


class StillProgressing(BackendError):
    """A wait ran out while the machine was still making progress (or while there was
    not yet evidence that it was not). A slow host is not a hang: this is an ``error``
    outcome, which no expectation matches."""

    def __init__(self, what, progress):
        self.what, self.progress = what, progress
        super().__init__(f"still progressing at the deadline: {what} ({progress})")


class Hang(BackendError):
    """The guest or firmware stopped making progress, shown by evidence.

    ``diagnosis`` (a :class:`harness.diagnosis.Diagnosis`, or the backend's bag of
    findings it is made from) names which CPU is in SMM, which is halted, which spins
    and which was never relocated, and what proves the hang (stall, reset-loop or
    smi-storm).
    """

    def __init__(self, reason, diagnosis=None):
        self.reason = reason
        self.diagnosis = Diagnosis.from_dict(diagnosis)
        super().__init__(f"hang: {reason}")

    def signature(self):
        """The comparable part of the hang (:meth:`Diagnosis.signature`)."""
        return self.diagnosis.signature()
