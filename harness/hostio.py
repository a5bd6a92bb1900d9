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


def run_logged(argv, cwd, env, log_file: Path, on_line, timeout: float, what: str) -> None:
    """Run a long build step (ninja, make) with all its output appended to ``log_file``,
    handing each output line (bytes) to ``on_line`` (progress lines); the process is
    killed if this is interrupted. A non-zero exit is one HarnessError line with the
    log's last error lines and the log's path."""
    from .errors import HarnessError
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                out.write(raw)
                on_line(raw)
            rc = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if rc != 0:
        tail = [line for line in log_file.read_text(errors="replace").splitlines()
                if "error" in line.lower()][-2:]
        raise HarnessError(f"{what} failed (exit {rc}): {' | '.join(tail)} "
                           f"(log: {log_file})")


def replace_dir(stage: Path, out: Path) -> None:
    """Put the finished ``stage`` directory at ``out``: an old ``out`` is renamed away
    first and removed, so a reader sees the old tree or the new one, never half of one."""
    import os
    import shutil
    import tempfile
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{out.name}-", dir=out.parent))
        os.rename(out, old / out.name)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(stage, out)
