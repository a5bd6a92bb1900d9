"""What a machine is, independent of who runs it (real QEMU or the model).

The rules a machine must keep are written here once (:meth:`MachineConfig.problems`,
the ranges below): the scenario loader reports them against the YAML line, the backends
refuse a machine that breaks them before they start anything."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import hw, settings
from .errors import ConfigError

ACCELS = ("tcg", "kvm", "auto")
TCG_THREADS = ("single", "multi")
# the harness numbers CPUs by xAPIC id (8 bits, 0xFF is the broadcast id)
CPUS_RANGE = (1, 255)
TSEG_MBYTES_RANGE = (0, hw.MCH_EXT_TSEG_MBYTES_MAX)
# the SMI features a machine can offer, by name (the keys of machine.smi_features)
SMI_FEATURES = tuple(hw.SMI_FEATURE_NAMES)
MEMORY_MIB_MIN = 128
MEMORY_MIB_MAX = 1 << 20
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
    if not MEMORY_MIB_MIN <= mib <= MEMORY_MIB_MAX:
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
    smi_features: dict = field(default_factory=lambda: dict.fromkeys(SMI_FEATURES, True))
    cpu_props: dict = field(default_factory=dict)   # -cpu MODEL,prop=value for every CPU
    accel: str = "tcg"
    # TCG vCPU threading: "single" (one host thread, round-robin) or "multi" (one per
    # vCPU). Default from $SMM_HARNESS_TCG_THREAD, else single: see harness/qemu/vm.py.
    tcg_thread: str | None = None
    extra_args: list = field(default_factory=list)
    # the guest kernel this machine boots (settings.GUEST_KERNELS): None is the run's
    # choice (--guest-kernel, SMM_HARNESS_GUEST_KERNEL); a scenario whose outcome depends
    # on how that kernel routes interrupts names it (real backend only)
    guest_kernel: str | None = None

    def problems(self):
        """Every rule this machine breaks, as ``(key, problem)`` pairs, in the order of
        the keys: the one list the loader (with line numbers) and :meth:`validate` use."""
        out = []
        for key, (lo, hi) in (("cpus", CPUS_RANGE), ("maxcpus", CPUS_RANGE),
                              ("tseg_mbytes", TSEG_MBYTES_RANGE)):
            value = getattr(self, key)
            if not lo <= value <= hi:
                out.append((key, f"{value} out of range ({lo}..{hi})"))
        if self.maxcpus < self.cpus:
            out.append(("maxcpus", f"{self.maxcpus} is less than cpus ({self.cpus})"))
        if self.memory_mib < MEMORY_MIB_MIN:
            out.append(("memory", f"{self.memory_mib} MiB is too small (>= {MEMORY_MIB_MIN} MiB)"))
        if self.accel not in ACCELS:
            out.append(("accel", f"expected one of {', '.join(ACCELS)}, got {self.accel!r}"))
        if self.tcg_thread not in (None, *TCG_THREADS):
            out.append(("tcg_thread", f"expected single or multi, got {self.tcg_thread!r}"))
        if self.guest_kernel not in (None, *settings.GUEST_KERNELS):
            out.append(("guest_kernel", f"expected one of {', '.join(settings.GUEST_KERNELS)}"
                        f", got {self.guest_kernel!r}"))
        unknown = sorted(set(self.smi_features) - set(SMI_FEATURES))
        if unknown:
            out.append(("smi_features", f"unknown SMI feature {unknown[0]!r}"))
        if self.smi_features.get("cpu_hotunplug") and not self.smi_features.get("cpu_hotplug"):
            out.append(("smi_features", "cpu_hotunplug: true requires cpu_hotplug: true "
                        "(QEMU exits: 'cpu hot-unplug requires cpu hot-plug')"))
        return out

    def validate(self):
        """Raise :class:`ConfigError` for the first rule the machine breaks."""
        for key, problem in self.problems():
            raise ConfigError(f"{key}: {problem}")
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
