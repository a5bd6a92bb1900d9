"""Trace files: one JSON-lines file per scenario run and backend.

Line 1 is the header, then one record per step, then an ``end`` record. The format is
versioned (``TRACE_VERSION``) and documented in docs/trace-format.md. Records are
flushed as they are written, so a killed run keeps every step it finished.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError

TRACE_VERSION = 1


def _jsonable(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


class TraceWriter:
    def __init__(self, path, header: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w", encoding="utf-8")
        self._write({"type": "header", "version": TRACE_VERSION, **header})

    def _write(self, record):
        self._f.write(json.dumps(record, default=_jsonable, sort_keys=True) + "\n")
        self._f.flush()

    def step(self, index, op, args, *, result=None, error=None, duration=0.0,
             snapshot=None, line=None):
        """One step. ``error``: {"kind": "refused"|"hang"|"check"|"error", "message": str,
        ...}; ``snapshot``: a Snapshot or its dict."""
        self._write({"type": "step", "index": index, "op": op, "args": args,
                     "line": line, "result": result, "error": error,
                     "duration": round(duration, 4), "snapshot": snapshot})

    def end(self, outcome: dict):
        self._write({"type": "end", **outcome})

    def close(self):
        if not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_trace(path):
    """Return (header, steps, end) of a trace file; ``end`` is None if the run was cut."""
    path = Path(path)
    header, steps, end = None, [], None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read trace: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{n}: not a JSON line: {e.msg}") from None
        kind = rec.get("type")
        if kind == "header":
            if rec.get("version") != TRACE_VERSION:
                raise ConfigError(f"{path}:{n}: trace version {rec.get('version')!r}, "
                                  f"this harness reads version {TRACE_VERSION}")
            header = rec
        elif kind == "step":
            steps.append(rec)
        elif kind == "end":
            end = rec
        else:
            raise ConfigError(f"{path}:{n}: unknown record type {kind!r}")
    if header is None:
        raise ConfigError(f"{path}: no header record: not a trace file")
    return header, steps, end
