"""What every cache of the harness (named builds, firmware identities, the guest image)
does with the host the same way: hash a file's content, hold an exclusive lock while a
cache entry is written, and say in one line why a host tool (apt, dpkg, a compiler)
failed or could not run.

Why a module: these were written twice (builds.py and firmware.py hashed files alike,
builds.py and the image build locked alike, both apt wrappers picked apt's error line);
one copy means one behaviour to test (tests/test_builds.py).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import subprocess
from pathlib import Path
from typing import Union

_log = logging.getLogger(__name__)


def sha256_file(path: Union[str, Path]) -> str:
    """The sha256 of a file's content, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: Path):
    """An exclusive fcntl lock on ``path`` (created), held for the ``with`` block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_tool(argv, timeout: float, missing: str, **kw) -> subprocess.CompletedProcess:
    """``subprocess.run(argv)``, a missing program or a timeout as one HarnessError line:
    ``missing`` says what to install, ``log`` (in ``kw``, not passed on) where the output
    went. Named builds and source builds run their tools through here."""
    from .errors import HarnessError
    log = kw.pop("log", None)
    where = f" (log: {log})" if log else ""
    try:
        return subprocess.run([str(a) for a in argv], timeout=timeout, **kw)
    except FileNotFoundError:
        raise HarnessError(f"{argv[0]} not found{missing}") from None
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{Path(str(argv[0])).name} did not finish within "
                           f"{timeout:.0f} s{where}") from None


def last_line(proc: subprocess.CompletedProcess) -> str:
    """The line of a tool's output that says what went wrong: apt's last ``E:`` line,
    else the last line that is not a warning or notice."""
    lines = [l.strip() for l in ((proc.stderr or "") + "\n" + (proc.stdout or "")).splitlines()
             if l.strip()]
    errors = [l for l in lines if l.startswith("E:")]
    if errors:
        return errors[-1]
    lines = [l for l in lines if not l.startswith(("W:", "N:", "I:"))] or lines
    return lines[-1] if lines else f"exit status {proc.returncode}"
