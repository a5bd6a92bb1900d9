"""QEMU's argument list for a machine: q35 with SMM, OVMF in pflash, the CPU topology,
TSEG and the ICH9 SMI features, the console, QMP and firmware debug channels, and the
guest kernel with its one command line.

Why a module: what QEMU is asked to emulate is the harness's main input to the real
backend, so it is a pure function of a :class:`MachineConfig`, the firmware images and
the run's paths, testable without QEMU (tests/qemu/test_cmdline.py). Starting and talking to
the process is :mod:`harness.qemu.vm`'s job.
"""
from __future__ import annotations

import logging

from .. import hw, settings
from ..machine import MachineConfig

_log = logging.getLogger(__name__)

# The guest kernel's one command line (every image records it, QemuVM passes it): serial
# console, silent boot (the agent owns ttyS0), no reboot on panic (QEMU runs with
# -no-reboot, so it exits), and a few options that shave time off a TCG boot (measured:
# kernel start -> agent banner went from ~1.0 s to ~0.6 s; rodata=off skips the W+X scan,
# cryptomgr.notests the crypto self-tests).
KERNEL_CMDLINE = (
    "console=ttyS0,115200 quiet loglevel=3 panic=-1 nokaslr mitigations=off no_timer_check "
    "rodata=off cryptomgr.notests audit=0 i8042.noaux i8042.nokbd i8042.nopnp random.trust_cpu=on"
)


# Single-threaded TCG runs every vCPU round-robin on one host thread. With more vCPUs
# than host cores (4 vCPUs, 2 cores, two VMs at once), multi-threaded TCG lets firmware
# spin-waits (SMM rendezvous, MP init) starve the vCPU they wait for: measured on this
# 2-core machine, a 4-vCPU boot took 50 s with thread=multi and 9.5 s with thread=single.
# The TCG behaviour under test (INIT and SMI handling in cpu_handle_interrupt) is the
# same in both modes. But QEMU 7.2 aborts ("qemu_thread_join: Resource deadlock avoided")
# when firmware ejects a CPU under thread=single: the one vCPU thread joins itself. So
# scenarios that unplug CPUs say `tcg_thread: multi`. SMM_HARNESS_TCG_THREAD sets the
# default for machines that do not say.
def accel_arg(accel, thread=None):
    return f"tcg,thread={thread or settings.tcg_thread_default()}" if accel == "tcg" else accel


def prop_value(v):
    """A property value as QEMU's command line spells it (booleans as on/off)."""
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def cpu_arg(model, props):
    return ",".join([model] + [f"{k}={prop_value(v)}" for k, v in props.items()])


# Guest RAM as a shared file, so that snapshots leave it out. A migration with the
# capability x-ignore-shared (QEMU 4.0+) does not send shared RAM blocks; since QEMU 8.1
# only those of a memory-backend-file count (commit "exec/memory: Introduce
# RAM_NAMED_FILE flag": memfd or shared anonymous RAM is sent in full, measured on
# 10.0.2 and 11.1.3), so the backend is a file on tmpfs. ``mem-path`` names a directory:
# QEMU then creates its file there (qemu_back_mem.pc.ram.XXXXXX) and unlinks it at once
# (file_ram_open, every version), so the RAM lives exactly as long as QEMU, a crash or
# a SIGKILL included, and no path in the arguments differs from one run to the next.
# The block keeps the name "pc.ram" (the backend's id), as QEMU's own RAM had.
# ``-machine memory-backend`` needs QEMU 5.0+.
SHARED_RAM_MIN_QEMU = (5, 0)


def shared_ram_args(memory_mib, ram_dir):
    return ["-object", f"memory-backend-file,id=pc.ram,size={memory_mib}M,"
                       f"mem-path={ram_dir},share=on",
            "-machine", "memory-backend=pc.ram"]


def qemu_args(binary, machine: MachineConfig, firmware, accel, paths, kernel=None,
              initrd=None, cmdline=KERNEL_CMDLINE):
    """The argument list, ``binary`` first. ``firmware``: a FirmwareImages (``code``,
    ``secure_pflash``); ``paths``: the run's ``vars``, ``console``, ``qmp`` and
    ``debugcon`` paths, and ``ram_dir`` (optional: guest RAM as a shared file in that
    tmpfs directory, see :func:`shared_ram_args`); ``kernel``/``initrd``: the guest
    image (none: firmware only)."""
    m, p = machine, paths
    args = [binary, "-machine", "q35,smm=on", "-accel", accel_arg(accel, m.tcg_thread)]
    if firmware.secure_pflash:
        args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    args += [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={firmware.code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={p['vars']}",
        "-cpu", cpu_arg(m.cpu_model, m.cpu_props),
        # explicit topology: one CPU per socket, so slot = socket-id = APIC id
        "-smp", f"{m.cpus},maxcpus={m.maxcpus},sockets={m.maxcpus},cores=1,threads=1",
        "-m", f"{m.memory_mib}M",
        "-global", f"mch.extended-tseg-mbytes={m.tseg_mbytes}",
    ]
    if p.get("ram_dir"):
        args += shared_ram_args(m.memory_mib, p["ram_dir"])
    for name, prop in hw.SMI_FEATURE_PROPERTIES.items():
        if name in m.smi_features:
            args += ["-global", f"ICH9-LPC.{prop}={prop_value(m.smi_features[name])}"]
    args += [
        "-nodefaults", "-no-user-config", "-vga", "none", "-display", "none",
        "-net", "none", "-S",
        "-chardev", f"socket,id=serial0,path={p['console']},server=on,wait=off",
        "-serial", "chardev:serial0",
        "-qmp", f"unix:{p['qmp']},server=on,wait=off",
        "-debugcon", f"file:{p['debugcon']}",
        "-global", f"isa-debugcon.iobase={hw.OVMF_DEBUG_IO_PORT:#x}",
    ]
    if kernel:
        args += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline]
    return args + list(m.extra_args)
