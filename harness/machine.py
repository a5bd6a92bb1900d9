"""What a machine is, independent of who runs it (real QEMU or the model)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import hw, settings
from .errors import ConfigError

ACCELS = ("tcg", "kvm", "auto")
MEMORY_RE = re.compile(r"^(\d+)\s*([MG])i?B?$", re.I)


def parse_memory(value, what="memory"):
    """MiB of a size like 512M, 2G or a plain number of MiB (one parser for the
    scenario loader and the CLI)."""
    if isinstance(value, int) and not isinstance(value, bool):
        mib = value
    else:
        m = MEMORY_RE.match(str(value).strip())
        if not m:
            raise ConfigError(f"{what}: expected a size like 512M or 2G, got {value!r}")
        mib = int(m.group(1)) * (1024 if m.group(2).upper() == "G" else 1)
    if not 128 <= mib <= 1 << 20:
        raise ConfigError(f"{what}: {mib} MiB out of range (128 MiB .. 1 TiB)")
    return mib


@dataclass
class MachineConfig:
    cpu_model: str = "qemu64"
    cpus: int = 1                     # present at start (-smp N)
    maxcpus: int = 1                  # possible (maxcpus=M)
    memory_mib: int = 512
    tseg_mbytes: int = 16             # mch.extended-tseg-mbytes
    firmware: str = "ovmf-smm"        # firmware profile name (firmware/*.json)
    # ICH9 host SMI features offered to firmware: broadcast, cpu_hotplug, cpu_hotunplug
    smi_features: dict = field(default_factory=lambda: {
        "broadcast": True, "cpu_hotplug": True, "cpu_hotunplug": True})
    cpu_props: dict = field(default_factory=dict)   # -cpu MODEL,prop=value for every CPU
    accel: str = "tcg"
    # TCG vCPU threading: "single" (one host thread, round-robin) or "multi" (one per
    # vCPU). Default from $SMM_HARNESS_TCG_THREAD, else single: see harness/qemu/vm.py.
    tcg_thread: str | None = None
    extra_args: list = field(default_factory=list)

    def validate(self):
        if self.cpus < 1:
            raise ConfigError(f"cpus must be at least 1, got {self.cpus}")
        if self.maxcpus < self.cpus:
            raise ConfigError(f"maxcpus ({self.maxcpus}) is less than cpus ({self.cpus})")
        if self.maxcpus > 255:
            raise ConfigError(f"maxcpus {self.maxcpus} is above 255 (xAPIC ids only)")
        if self.memory_mib < 128:
            raise ConfigError(f"memory {self.memory_mib} MiB is too small (>= 128 MiB)")
        if not 0 <= self.tseg_mbytes <= hw.MCH_EXT_TSEG_MBYTES_MAX:
            raise ConfigError(f"tseg_mbytes {self.tseg_mbytes} out of range 0..4095")
        if self.accel not in ACCELS:
            raise ConfigError(f"accel must be one of {', '.join(ACCELS)}, got {self.accel!r}")
        if self.tcg_thread not in (None, "single", "multi"):
            raise ConfigError(f"tcg_thread must be single or multi, got {self.tcg_thread!r}")
        if self.smi_features.get("cpu_hotunplug") and not self.smi_features.get("cpu_hotplug"):
            raise ConfigError("smi_features: cpu_hotunplug requires cpu_hotplug "
                              "(QEMU: 'cpu hot-unplug requires cpu hot-plug')")
        return self

    @property
    def effective_tcg_thread(self):
        return self.tcg_thread or settings.tcg_thread_default()

    @property
    def low_ram_bytes(self):
        """RAM below 4 GiB as QEMU q35 splits it (pc_q35_init: lowmem 2 GiB if > 2.75 GiB)."""
        ram = self.memory_mib << 20
        if ram >= hw.Q35_LOWMEM_SPLIT:
            return hw.Q35_LOWMEM_WHEN_SPLIT
        return ram


@dataclass
class CpuPlug:
    """A CPU to plug, named by its slot: the position among possible CPUs (QEMU's
    query-hotpluggable-cpus ordered by APIC id, = the cpu hot-plug selector)."""
    slot: int
    props: dict = field(default_factory=dict)      # e.g. {"ucode-rev": 0x...}

    @property
    def device_id(self):
        return f"cpu-slot{self.slot}"
