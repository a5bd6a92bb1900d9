"""The interface both backends (real QEMU, the model) implement, step by step.

The scenario runner calls these in the order of a scenario's steps. Each returns a dict
(the step's ``result`` in the trace; keep it small and JSON-able) or raises:
``Refused`` (QEMU/model said no, with QEMU's message), ``Hang`` (no progress within a
deadline, with a diagnosis), ``BackendError`` (anything else).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from .machine import CpuPlug, MachineConfig
from .snapshot import Snapshot


# How long an unplug may take (device_del -> slot empty) unless the step says otherwise
UNPLUG_TIMEOUT = 30.0


class Backend(ABC):
    name = "abstract"

    @abstractmethod
    def start(self, machine: MachineConfig, run_dir: Path, paused: bool,
              boot: str | None = None, coldplugs=()) -> dict:
        """Create the machine. ``paused``: not running yet (cold-plug allowed until boot).
        ``boot``: the scenario's boot policy (harness.bootpolicy: ``fresh`` or
        ``resume-ok``; None outside a scenario); a backend may start a ``resume-ok``
        machine from one booted earlier, and its ``info()["boot"]`` says so.
        ``coldplugs``: the CpuPlugs the scenario's cold-plug steps will add before its
        boot, in order (part of what a resumed machine must have been booted with)."""

    @abstractmethod
    def coldplug(self, cpu: CpuPlug) -> dict:
        """Add a CPU before boot (only while paused)."""

    @abstractmethod
    def boot(self, timeout: float | None = None) -> dict:
        """Run the machine until the guest OS answers its console agent (deadline in
        seconds, or the backend's default)."""

    @abstractmethod
    def hotplug(self, cpu: CpuPlug) -> dict:
        """device_add a CPU while the guest runs, then let the guest handle it."""

    @abstractmethod
    def unplug(self, slot: int, timeout: float | None = None) -> dict:
        """device_del the CPU in ``slot`` and wait (``timeout`` s at most, None for the
        backend's default) until it is gone; raise ``NotRemoved`` if it is still there
        while the guest answers, ``Hang`` if the guest stopped answering."""

    @abstractmethod
    def online(self, slot: int) -> dict:
        """Ask the guest OS to bring the CPU in ``slot`` online."""

    @abstractmethod
    def offline(self, slot: int) -> dict:
        """Ask the guest OS to take the CPU in ``slot`` offline."""

    @abstractmethod
    def smi(self, value: int, data: int | None, count: int) -> dict:
        """The guest writes ``data`` to APM_STS (0xB3, if given) and ``value`` to
        APM_CNT (0xB2), ``count`` times."""

    @abstractmethod
    def guest(self, command: str) -> dict:
        """Run a shell command in the guest: {"rc": int, "output": str}."""

    @abstractmethod
    def reset(self) -> dict:
        """system_reset, then wait for the guest again."""

    @abstractmethod
    def wait(self, seconds: float) -> dict:
        """Let the machine run for a while."""

    @abstractmethod
    def snapshot(self) -> Snapshot:
        """The state of every CPU and of the chipset, taken from outside the guest."""

    @abstractmethod
    def info(self) -> dict:
        """What the trace header records: versions, firmware, accel actually used."""

    @abstractmethod
    def close(self) -> None:
        """Tear everything down. Must be safe to call twice and after any failure."""
