"""smm-hotplug-harness: test SMM CPU hot-plug on QEMU q35 + OVMF, and a model of it."""

__version__ = "0.1.0"
