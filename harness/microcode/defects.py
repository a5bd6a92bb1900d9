"""The one error object every microcode parser reports.

Why: a damaged microcode file must never crash the tool nor hide the good updates
around it. Parsers therefore do not raise on bad input; they return the updates they
could trust plus a list of ``Defect`` objects, each pinned to a file offset and field
with what was expected and what was found, so a person can fix the file.
"""

from collections import namedtuple


class Defect(namedtuple("Defect", "offset field expected found record fatal source",
                        defaults=(None, True, None))):
    """One problem found in a microcode file.

    ``offset`` is the absolute file offset of the offending field; ``record`` the offset
    of the update/section it belongs to (None for file-level problems). ``fatal`` means
    the record was rejected (not returned); non-fatal defects are warnings (e.g. strict
    checks in loose mode). A named tuple: the parsers are imported by the lean
    ``microcode`` command, which avoids ``dataclasses``.
    """

    __slots__ = ()

    @property
    def message(self):
        where = f"{self.source}: " if self.source else ""
        kind = "" if self.fatal else "warning: "
        return (f"{where}{kind}offset 0x{self.offset:x}: {self.field}: "
                f"expected {self.expected}, found {self.found}")

    def __str__(self):
        return self.message


class MicrocodeError(ValueError):
    """Raised only by builders and strict helpers given impossible arguments."""


class DefectVerdicts:
    """What a parse result (with a ``defects`` list) says about its whole blob."""

    @property
    def ok(self):
        """True when Linux would accept the whole blob: no fatal defect at all."""
        return not any(d.fatal for d in self.defects)

    @property
    def errors(self):
        return [d for d in self.defects if d.fatal]

    @property
    def warnings(self):
        return [d for d in self.defects if not d.fatal]
