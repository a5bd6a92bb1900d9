"""Pure-Python SMM state model of q35 + ICH9 + OVMF + a Linux guest.

Modules: ``cpu`` (CPU, INIT/SIPI/SMI semantics ``TCG``/``KVM``), ``chipset`` (MCH SMRAM/
TSEG, ICH9 APM/SMI_EN, SMI feature negotiation, QEMU refusals), ``cpuhp`` (QEMU CPU
hot-plug register block), ``firmware`` (OVMF with/without SMM), ``guest`` (Linux),
``engine`` (machine + deterministic scheduler), ``backend`` (``ModelBackend``).
"""
from .backend import ModelBackend
from .cpu import KVM, TCG, CpuSemantics
from ..firmware import FirmwareProfile

__all__ = ["ModelBackend", "CpuSemantics", "KVM", "TCG", "FirmwareProfile"]
