"""Helpers for the model tests (imported by name: pytest puts this directory on sys.path)."""
from pathlib import Path

from harness.machine import CpuPlug, MachineConfig
from harness.model.backend import ModelBackend

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"


def make(semantics="tcg", paused=True, boot=True, coldplug=(), overrides=None, **cfg):
    """Start (and by default boot) a model machine."""
    b = ModelBackend(semantics, FIRMWARE, profile_overrides=overrides)
    b.start(MachineConfig(**cfg), Path("/nonexistent-run-dir"), paused=paused)
    for slot in coldplug:
        b.coldplug(CpuPlug(slot))
    if boot:
        b.boot()
    return b
