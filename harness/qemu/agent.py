"""Client of the guest console agent (``images/agent.sh``) over the serial console.

Wire protocol (see images/agent.sh):

* the agent prints ``@@SMM-AGENT READY <kernel release> cpus=<n>@@`` once when it starts
  (``/init`` prints ``@@SMM-AGENT INIT@@`` before that);
* request, client -> agent: ``<token> <base64(command)>\\n`` with a fresh random token;
* answer: ``@@<token> BEGIN@@\\n<output>\\n@@<token> RC=<n>@@\\n`` (stdout and stderr
  merged; the newline before the end marker is the agent's, not the command's).

Because the token is random and is only ever sent base64-free in the request line
(which the raw, ``-echo`` tty does not echo), nothing a command prints can be taken
for a marker, and answers to earlier, abandoned requests are skipped.

``child`` is any pexpect spawn-like object in bytes mode (no ``encoding``), e.g.
``pexpect.fdpexpect.fdspawn`` on QEMU's serial chardev socket. Every wait is bounded.

Note: with ``server=on,wait=off`` QEMU drops serial output while no client is
connected. Connect before the guest reaches /init; if that cannot be guaranteed, use
``wait_ready(probe_after=...)`` (an already running agent answers a probe).
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from typing import Callable, Optional, Tuple

import pexpect

from harness.errors import BackendError, Hang

READY_RE = re.compile(rb"@@SMM-AGENT READY([^@\r\n]*)@@")
INIT_MARK = b"@@SMM-AGENT INIT@@"
TAIL_BYTES = 4000


class GuestAgent:
    def __init__(self, child, log: Optional[Callable[[str], None]] = None):
        self.child = child
        self.log = log
        self.banner: Optional[str] = None
        self._tail = b""

    # ------------------------------------------------------------ helpers

    def _note(self, data) -> None:
        if not data:
            return
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        self._tail = (self._tail + data)[-TAIL_BYTES:]

    def console_tail(self, limit: int = 2000) -> str:
        """The last bytes seen on the console (for diagnoses)."""
        self._note(self._drain_buffer())
        return self._tail[-limit:].decode("utf-8", "replace")

    def _drain_buffer(self) -> bytes:
        buf = getattr(self.child, "buffer", b"")
        return buf if isinstance(buf, bytes) else (buf or "").encode("utf-8", "replace")

    def _say(self, msg: str) -> None:
        if self.log:
            self.log(msg)

    def _expect(self, patterns, deadline: float):
        """child.expect with the time left until deadline; records what was consumed."""
        left = max(0.0, deadline - time.monotonic())
        try:
            idx = self.child.expect(patterns, timeout=left)
        except OSError as exc:       # QEMU closed the console under us (it died)
            raise BackendError(f"guest console: connection lost: {exc}") from exc
        finally:
            self._note(self.child.before if isinstance(self.child.before, (bytes, str)) else b"")
            if isinstance(getattr(self.child, "after", None), (bytes, str)):
                self._note(self.child.after)
        return idx

    def _expect_ticking(self, patterns, deadline, tick, every):
        """:meth:`_expect` (``patterns[1]`` is pexpect.TIMEOUT), calling ``tick`` every
        ``every`` seconds until a pattern matches or ``deadline`` passes."""
        while True:
            step = deadline if tick is None else min(deadline, time.monotonic() + every)
            idx = self._expect(patterns, step)
            if idx != 1 or time.monotonic() >= deadline:
                return idx
            tick()

    def _send(self, token: str, command: str) -> None:
        payload = base64.b64encode(command.encode("utf-8")).decode("ascii")
        data = f"{token} {payload}\n".encode("ascii")
        try:
            while data:
                n = self.child.send(data)
                if not isinstance(n, int) or n <= 0:
                    break
                data = data[n:]
        except OSError as exc:
            raise BackendError(f"guest console: cannot send to the agent: {exc}") from exc

    # ------------------------------------------------------------ API

    def wait_ready(self, timeout: float = 60.0, probe_after: Optional[float] = None,
                   tick: Optional[Callable[[], None]] = None,
                   tick_every: float = 0.5) -> float:
        """Wait for the agent's banner; return the seconds it took.

        ``tick`` is called every ``tick_every`` seconds while waiting (the backend looks
        at the machine's progress there, and may raise to end the wait).

        If the kernel is known to run (``/init`` printed its mark) and the banner has
        not come 2 s later, or once ``probe_after`` seconds have passed, the client
        also sends probes: an agent that started before we connected answers those.
        Raises ``Hang`` on timeout, ``BackendError`` if the console closes.
        """
        start = time.monotonic()
        deadline = start + timeout
        init_seen_at: Optional[float] = None
        probe_tok: Optional[str] = None
        probe_re = None
        next_probe = float("inf") if probe_after is None else start + probe_after
        next_tick = start + tick_every if tick else float("inf")
        while True:
            now = time.monotonic()
            if now >= deadline:
                self._hang_ready(timeout)
            patterns = [READY_RE, INIT_MARK, pexpect.TIMEOUT, pexpect.EOF]
            if probe_re is not None:
                patterns.append(probe_re)
            step_deadline = min(deadline, max(now + 0.05, next_probe),
                                max(now + 0.05, next_tick))
            try:
                idx = self._expect(patterns, step_deadline)
            except pexpect.TIMEOUT:  # pragma: no cover - patterns include TIMEOUT
                idx = 2
            if idx == 0:
                self.banner = self.child.match.group(0).decode("utf-8", "replace")
                elapsed = time.monotonic() - start
                self._say(f"agent: ready after {elapsed:.2f}s: {self.banner}")
                return elapsed
            if idx == 1:
                init_seen_at = time.monotonic()
                next_probe = min(next_probe, init_seen_at + 2.0)
                continue
            if idx == 3:
                raise BackendError(f"guest console closed before the agent started; "
                                   f"console tail: {self.console_tail(300)!r}")
            if idx == 4:
                elapsed = time.monotonic() - start
                self.banner = self.banner or "(probe answered)"
                self._say(f"agent: answered a probe after {elapsed:.2f}s")
                return elapsed
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + tick_every
                tick()
            if time.monotonic() >= next_probe:
                probe_tok = secrets.token_hex(8)
                probe_re = re.compile(b"@@" + probe_tok.encode() + rb" RC=\d+@@")
                self._send(probe_tok, "true")
                next_probe = time.monotonic() + 2.0

    def _hang_ready(self, timeout: float):
        tail = self.console_tail()
        raise Hang(f"guest agent did not start within {timeout:g}s",
                   {"reason": "agent-not-ready", "console_tail": tail})

    def run(self, command: str, timeout: float = 30.0,
            tick: Optional[Callable[[], None]] = None,
            tick_every: float = 0.5) -> Tuple[int, str]:
        """Run a shell command in the guest; return (exit status, output). ``tick`` is
        called every ``tick_every`` seconds while the answer is awaited (the backend
        samples the machine there, and may raise to end the wait)."""
        token = secrets.token_hex(8)
        tok = token.encode()
        begin = b"@@" + tok + b" BEGIN@@"
        end_re = re.compile(b"@@" + tok + rb" RC=(\d+)@@")
        deadline = time.monotonic() + timeout
        self._send(token, command)
        idx = self._expect_ticking([begin, pexpect.TIMEOUT, pexpect.EOF], deadline, tick,
                                   tick_every)
        if idx == 0:
            idx = self._expect_ticking([end_re, pexpect.TIMEOUT, pexpect.EOF], deadline,
                                       tick, tick_every)
            if idx == 0:
                rc = int(self.child.match.group(1))
                body = self.child.before
                if isinstance(body, str):  # a spawn opened with an encoding
                    body = body.encode("utf-8", "surrogateescape")
                if body.startswith(b"\r\n"):  # the tty was not raw: undo onlcr
                    body = body.replace(b"\r\n", b"\n")
                if body.startswith(b"\n"):
                    body = body[1:]
                if body.endswith(b"\n"):
                    body = body[:-1]
                return rc, body.decode("utf-8", "replace")
        if idx == 2:
            raise BackendError(f"guest console closed while running {command!r}; "
                               f"console tail: {self.console_tail(300)!r}")
        raise Hang(f"guest command {_short(command)!r} did not finish within {timeout:g}s",
                   {"reason": "agent-command-timeout", "command": command,
                    "console_tail": self.console_tail()})

    def alive(self, timeout: float = 5.0) -> bool:
        """True if the agent answers a no-op within timeout."""
        try:
            rc, _ = self.run("true", timeout=timeout)
        except (Hang, BackendError):
            return False
        return rc == 0

    def check(self, command: str, timeout: float = 30.0) -> str:
        """run() that raises BackendError unless the command exits 0; returns its output."""
        rc, out = self.run(command, timeout=timeout)
        if rc != 0:
            raise BackendError(f"guest command {_short(command)!r} failed with status {rc}: {_short(out, 200)}")
        return out


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
