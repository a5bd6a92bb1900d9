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
    """QEMU died under a running scenario; ``message`` is its last stderr line."""

    def __init__(self, status, message):
        self.status, self.message = status, message
        super().__init__(f"QEMU exited (status {status}): {message}")


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


class Hang(BackendError):
    """The guest or firmware stopped making progress within a deadline.

    ``diagnosis`` is a dict: {"reason": str, "cpus": [{"index", "apic_id", "in_smm",
    "halted", "cs", "eip", "smbase"}...], ...} so reports and expectations can name which
    CPU is in SMM and which is halted.
    """

    def __init__(self, reason, diagnosis=None):
        self.reason = reason
        self.diagnosis = diagnosis or {}
        super().__init__(f"hang: {reason}")

    def signature(self):
        """The comparable part of a hang: CPUs in SMM and halted CPUs, by cpu index."""
        cpus = self.diagnosis.get("cpus", [])
        return {
            "in_smm": sorted(c["index"] for c in cpus if c.get("in_smm")),
            "halted": sorted(c["index"] for c in cpus if c.get("halted")),
        }
