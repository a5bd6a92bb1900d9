"""QEMU's argument list from a MachineConfig (harness/qemu/cmdline.py), without QEMU.
The exact list below is what harness/qemu/vm.py built before the function moved out."""
from pathlib import Path
from types import SimpleNamespace

from harness.machine import MachineConfig
from harness.qemu import cmdline
from harness.qemu.cmdline import KERNEL_CMDLINE, accel_arg, cpu_arg, qemu_args

PATHS = {"vars": Path("/run/OVMF_VARS.fd"), "console": Path("/sock/console.sock"),
         "qmp": Path("/sock/qmp.sock"), "debugcon": Path("/run/firmware-debug.log")}


def firmware(secure=True):
    return SimpleNamespace(code="/fw/OVMF_CODE.fd", secure_pflash=secure)


def test_the_whole_list():
    m = MachineConfig(cpus=2, maxcpus=4, tcg_thread="multi",
                      cpu_props={"ucode-rev": 5, "x": True},
                      smi_features={"broadcast": True, "cpu_hotplug": False}, extra_args=["-s"])
    assert qemu_args("qemu", m, firmware(), "tcg", PATHS, "/k", "/i", "CMD") == [
        "qemu", "-machine", "q35,smm=on", "-accel", "tcg,thread=multi",
        "-global", "driver=cfi.pflash01,property=secure,value=on",
        "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/fw/OVMF_CODE.fd",
        "-drive", "if=pflash,format=raw,unit=1,file=/run/OVMF_VARS.fd",
        "-cpu", "qemu64,ucode-rev=5,x=on",
        "-smp", "2,maxcpus=4,sockets=4,cores=1,threads=1", "-m", "512M",
        "-global", "mch.extended-tseg-mbytes=16",
        "-global", "ICH9-LPC.x-smi-broadcast=on", "-global", "ICH9-LPC.x-smi-cpu-hotplug=off",
        "-nodefaults", "-no-user-config", "-vga", "none", "-display", "none", "-net", "none",
        "-S", "-chardev", "socket,id=serial0,path=/sock/console.sock,server=on,wait=off",
        "-serial", "chardev:serial0", "-qmp", "unix:/sock/qmp.sock,server=on,wait=off",
        "-debugcon", "file:/run/firmware-debug.log", "-global", "isa-debugcon.iobase=0x402",
        "-kernel", "/k", "-initrd", "/i", "-append", "CMD", "-s"]


def test_firmware_only_machine_has_no_kernel_and_default_features():
    args = qemu_args("qemu", MachineConfig(), firmware(secure=False), "kvm", PATHS)
    assert "-kernel" not in args and "-append" not in args
    assert args[:5] == ["qemu", "-machine", "q35,smm=on", "-accel", "kvm"]
    assert "driver=cfi.pflash01,property=secure,value=on" not in args
    for prop in ("x-smi-broadcast", "x-smi-cpu-hotplug", "x-smi-cpu-hotunplug"):
        assert f"ICH9-LPC.{prop}=on" in args


def test_kernel_gets_the_one_command_line():
    args = qemu_args("qemu", MachineConfig(), firmware(), "kvm", PATHS, "/k", "/i")
    assert args[args.index("-append") + 1] == KERNEL_CMDLINE
    assert "panic=-1" in KERNEL_CMDLINE.split()


def test_tcg_thread_default_comes_from_settings(monkeypatch):
    monkeypatch.setattr(cmdline.settings, "tcg_thread_default", lambda: "single")
    assert accel_arg("tcg") == "tcg,thread=single"
    assert accel_arg("tcg", "multi") == "tcg,thread=multi"
    assert accel_arg("kvm", "multi") == "kvm"


def test_cpu_properties():
    assert cpu_arg("Skylake-Client", {"ucode-rev": 0x10, "vmx": False}) == \
        "Skylake-Client,ucode-rev=16,vmx=off"


def test_shared_ram_is_a_file_backend_in_the_ram_dir():
    paths = {**PATHS, "ram_dir": Path("/dev/shm")}
    args = qemu_args("qemu", MachineConfig(memory_mib=768), firmware(), "tcg", paths)
    i = args.index("-object")
    assert args[i:i + 4] == [
        "-object", "memory-backend-file,id=pc.ram,size=768M,mem-path=/dev/shm,share=on",
        "-machine", "memory-backend=pc.ram"]
    assert args[args.index("-m") + 1] == "768M"           # sizes agree, as QEMU requires
    assert "-object" not in qemu_args("qemu", MachineConfig(), firmware(), "tcg", PATHS)


def test_qemu_last_words_skip_its_warnings():
    from harness.qemu.vm import last_words
    # QEMU 7.2.22+smm-fix, hotadd-unplug-cycles: a warning, then death without a word
    assert last_words("qemu-system-x86_64: warning: Blocked re-entrant IO on MemoryRegion: "
                      "acpi-cpu-hotplug at addr: 0x0\n") == ""
    assert last_words("qemu-system-x86_64: warning: x\nfree(): invalid next size (fast)\n"
                      "\n") == "free(): invalid next size (fast)"
    assert last_words("qemu-system-x86_64: unable to find CPU model 'no-such-model'\n") == \
        "qemu-system-x86_64: unable to find CPU model 'no-such-model'"
