"""A logged, deadline-bounded QMP session on top of ``qemu.qmp``.

Every command and reply is appended to ``qmp.log`` in the run directory (one JSON line
each), so a failed run keeps the full conversation. QMP errors become typed harness
errors carrying QEMU's own ``desc`` text, which scenarios match against.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from pathlib import Path

from qemu.qmp import ExecuteError, QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from ..errors import QemuError

log = logging.getLogger(__name__)


class QmpCommandError(QemuError):
    """QEMU answered a command with an error; ``desc`` is QEMU's message."""

    def __init__(self, command, error_class, desc):
        self.command, self.error_class, self.desc = command, error_class, desc
        super().__init__(f"QMP {command}: {desc}")


class QmpSession:
    def __init__(self, sock_path, log_path, timeout=30.0):
        self.sock_path = str(sock_path)
        self.log = open(log_path, "a", encoding="utf-8")
        self.timeout = timeout
        self._qmp = None
        # called when a command fails for want of an answer: may raise a better error
        # (QemuCrashed when the process died under us)
        self.on_failure = None
        # resets the guest asked for (RESET events with guest: true): a firmware that
        # resets over and over is a hang whatever the clock says (harness.qemu.progress)
        self.guest_resets = 0

    def _log(self, kind, obj):
        self.log.write(json.dumps({"t": round(time.time(), 3), kind: obj}, default=str) + "\n")
        self.log.flush()

    def connect(self, deadline, alive):
        """Connect once QEMU has created the socket; ``alive()`` says QEMU still runs."""
        last = None
        while time.monotonic() < deadline:
            if not alive():
                raise QemuError("QEMU exited before its QMP socket accepted a connection")
            if Path(self.sock_path).exists():
                qmp = QEMUMonitorProtocol(self.sock_path)
                try:
                    greeting = qmp.connect(negotiate=True)
                    qmp.settimeout(self.timeout)
                    self._qmp = qmp
                    self._log("greeting", greeting)
                    return greeting
                except (OSError, QMPError) as e:
                    last = e
                    try:
                        qmp.close()
                    except Exception:
                        pass
            time.sleep(0.05)
        raise QemuError(f"QMP socket {self.sock_path} did not accept a connection in time"
                        + (f" ({last})" if last else ""))

    def cmd(self, command, timeout=None, **args):
        if self._qmp is None:
            raise QemuError(f"QMP {command}: not connected")
        self._log("cmd", {"execute": command, "arguments": args})
        log.debug("QMP %s %s", command, args or "")
        self._qmp.settimeout(timeout or self.timeout)
        try:
            ret = self._qmp.cmd(command, **args)
        except ExecuteError as e:
            self._log("error", {"class": e.error_class, "desc": str(e)})
            raise QmpCommandError(command, e.error_class, str(e)) from None
        except (QMPError, OSError, TimeoutError, asyncio.TimeoutError, socket.timeout) as e:
            self._log("failure", repr(e))
            if self.on_failure is not None:
                self.on_failure()
            raise QemuError(f"QMP {command} failed: {e!r}") from None
        finally:
            self._drain_events()
        self._log("return", ret)
        return ret

    def hmp(self, text, timeout=None):
        return self.cmd("human-monitor-command", timeout=timeout, **{"command-line": text})

    def _drain_events(self):
        if self._qmp is None:
            return
        try:
            for ev in self._qmp.get_events(wait=False):
                self._log("event", ev)
                if ev.get("event") == "RESET" and (ev.get("data") or {}).get("guest"):
                    self.guest_resets += 1
        except Exception:
            pass

    def close(self):
        if self._qmp is not None:
            try:
                self._drain_events()
                self._qmp.close()
            except Exception:
                pass
            self._qmp = None
        if not self.log.closed:
            self.log.close()
