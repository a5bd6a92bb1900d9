"""Helpers for the model tests (imported by name: pytest puts this directory on sys.path)."""
from pathlib import Path

from harness.firmware import known_identity
from harness.machine import CpuPlug, MachineConfig
from harness.model.backend import ModelBackend

# the image the model stands for in these tests: Debian 12's OVMF, measured
FIRMWARE = known_identity("2022.11-6+deb12u2")


def make(semantics="tcg", paused=True, boot=True, coldplug=(), overrides=None,
         defects="none", **cfg):
    """Start (and by default boot) a model machine. These tests are about the SMM
    hot-plug protocol, so QEMU's own defects are off unless a test asks for them
    (``defects=None``: those of the semantics; see test_qemu_defects.py)."""
    b = ModelBackend(semantics, FIRMWARE, profile_overrides=overrides, qemu_defects=defects)
    b.start(MachineConfig(**cfg), Path("/nonexistent-run-dir"), paused=paused)
    for slot in coldplug:
        b.coldplug(CpuPlug(slot))
    if boot:
        b.boot()
    return b
