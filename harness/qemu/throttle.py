"""A slow host, made on purpose: a QEMU stopped (SIGSTOP) most of the time and
continued (SIGCONT) in short slices, so its guest runs several times slower than on a
quiet machine. What the hang verdicts (harness.qemu.progress) must survive, used by the
slow-host tests and by ``scripts/record-progress --throttle``."""
from __future__ import annotations

import os
import signal
import threading
import time

RUN, STOP = 0.2, 0.4          # seconds QEMU runs, then is stopped, in each cycle


class Throttle(threading.Thread):
    """Stops and continues the QEMU process of ``backend`` (our own child) in cycles,
    once it exists, until ``done()``; measures the share of time QEMU was stopped."""

    def __init__(self, backend, run=RUN, stop=STOP):
        super().__init__(daemon=True)
        self.backend, self.stop_flag = backend, threading.Event()
        self.run_for, self.stop_for = run, stop
        self.stopped = self.total = 0.0

    def run(self):
        while not self.stop_flag.is_set():
            vm = self.backend.vm
            if vm is not None and vm.proc is not None and vm.proc.poll() is None:
                break
            time.sleep(0.01)
        proc = self.backend.vm.proc if self.backend.vm else None
        t0 = time.monotonic()
        try:
            # poll() is None: not reaped, so the pid is still our QEMU's
            while proc and not self.stop_flag.is_set() and proc.poll() is None:
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    time.sleep(self.stop_for)
                    self.stopped += self.stop_for
                finally:
                    if proc.poll() is None:
                        os.kill(proc.pid, signal.SIGCONT)
                time.sleep(self.run_for)
        except ProcessLookupError:
            pass
        finally:
            self.total = time.monotonic() - t0

    def done(self):
        self.stop_flag.set()
        self.join(10)
