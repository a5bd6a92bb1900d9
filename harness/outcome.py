"""What a scenario run ended with, typed: the runner builds one ``Outcome`` when the run
stops, the judge, the reports and the pytest plugin read its fields, and the trace
writer serialises it (``to_dict``) into the ``end`` record; readers of a trace get it
back with ``Outcome.from_dict``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .checks import CheckResult
from .snapshot import Snapshot

KINDS = ("pass", "refused", "hang", "fail", "crash", "error")


@dataclass
class Outcome:
    kind: str = "pass"                    # one of KINDS (the trace's "outcome")
    step: int | None = None               # 1-based step it happened at (0: start)
    op: str | None = None                 # that step's operation
    line: int | None = None               # that step's line in the scenario file
    message: str | None = None            # QEMU's words, the failed checks, the error
    checks: list[CheckResult] | None = None   # fail: every verdict of the failing step
    signature: dict | None = None         # hang: Diagnosis.signature()
    # crash: how QEMU ended (QemuCrashed.record()); message_source says whose words
    # ``message`` is
    status: int | None = None
    signal: str | None = None
    message_source: str | None = None
    # the state the failing step left (its check or hang snapshot); never serialised
    snapshot: Snapshot | None = None

    @property
    def failed_checks(self) -> list[str]:
        return [c.name for c in self.checks or () if not c.passed]

    def to_dict(self) -> dict:
        """The trace's ``end.outcome`` record (no snapshot: the steps carry those)."""
        d = {"outcome": self.kind}
        for k in ("step", "op", "line", "message", "signature"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.checks is not None:
            d["failed_checks"] = self.failed_checks
            d["checks"] = [c.to_dict() for c in self.checks]
        if self.kind == "crash":
            d.update(message=self.message, status=self.status, signal=self.signal,
                     message_source=self.message_source)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Outcome":
        """From a trace's ``end.outcome`` record."""
        checks = d.get("checks")
        return cls(kind=d["outcome"], step=d.get("step"), op=d.get("op"),
                   line=d.get("line"), message=d.get("message"),
                   checks=[CheckResult(**c) for c in checks] if checks is not None
                   else None,
                   signature=d.get("signature"), status=d.get("status"),
                   signal=d.get("signal"), message_source=d.get("message_source"))
