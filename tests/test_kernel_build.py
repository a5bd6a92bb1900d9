"""The harness's own guest kernel (harness/qemu/image/kernel.py): the fragment, how a
resolved .config is checked against it, the cache key, the guest-kernel choice. No
build here: the image tests and the scenario set boot it."""
import argparse

import pytest

from harness import settings
from harness.errors import HarnessError
from harness.qemu.image import build, cli
from harness.qemu.image import kernel as kmod


def test_fragment_parsing():
    text = ("# a comment\nCONFIG_SMP=y\n# CONFIG_KERNEL_XZ is not set\n"
            "CONFIG_NR_CPUS=64\nCONFIG_LOCALVERSION=\"-x\"\n  CONFIG_TTY=y  \n")
    assert kmod.fragment_settings(text) == {
        "CONFIG_SMP": "y", "CONFIG_KERNEL_XZ": "n", "CONFIG_NR_CPUS": "64",
        "CONFIG_LOCALVERSION": '"-x"', "CONFIG_TTY": "y"}


def test_config_problems_name_what_olddefconfig_dropped():
    wanted = {"CONFIG_SMP": "y", "CONFIG_KERNEL_XZ": "n", "CONFIG_DEVPORT": "y",
              "CONFIG_NR_CPUS": "64"}
    config = ("CONFIG_SMP=y\nCONFIG_KERNEL_XZ=y\nCONFIG_NR_CPUS=8\n"
              "# CONFIG_DEVPORT is not set\n")
    assert kmod.config_problems(wanted, config) == [
        "CONFIG_KERNEL_XZ=n (got y)", "CONFIG_DEVPORT=y (got n)", "CONFIG_NR_CPUS=64 (got 8)"]
    assert kmod.config_problems(wanted, "CONFIG_SMP=y\nCONFIG_DEVPORT=y\n"
                                "CONFIG_NR_CPUS=64\n") == []


def test_fragment_has_what_the_scenarios_use():
    """Every guest command of the harness needs one of these (backend.py's CPU list:
    /dev/cpu/N/msr, firmware_node, microcode/version; SMIs through /dev/port; the GPE
    and SCI counters; cpuN/online), and OVMF boots the kernel through its EFI stub."""
    have = kmod.fragment_settings(kmod.FRAGMENT.read_text())
    for sym in ("SMP", "ACPI", "ACPI_PROCESSOR", "ACPI_HOTPLUG_CPU", "HOTPLUG_CPU",
                "X86_X2APIC", "EFI", "EFI_STUB", "KERNEL_LZ4", "SERIAL_8250",
                "SERIAL_8250_CONSOLE", "X86_MSR", "X86_CPUID", "DEVPORT", "MICROCODE",
                "MICROCODE_INTEL", "MICROCODE_AMD", "BLK_DEV_INITRD", "RD_GZIP",
                "DEVTMPFS", "PROC_FS", "SYSFS", "BINFMT_ELF", "BINFMT_SCRIPT", "TMPFS"):
        assert have.get(f"CONFIG_{sym}") == "y", sym
    assert have["CONFIG_KERNEL_XZ"] == "n"
    assert have["CONFIG_MODULES"] == "n"     # msr is built in: the image loads nothing


def test_key_follows_source_fragment_and_recipe(monkeypatch):
    files = {"linux_6.1.1-1.dsc": "aa" * 32, "linux_6.1.1.orig.tar.xz": "bb" * 32}
    k = kmod.kernel_key(files, b"CONFIG_SMP=y\n")
    assert k == kmod.kernel_key(dict(reversed(list(files.items()))), b"CONFIG_SMP=y\n")
    assert k != kmod.kernel_key(files, b"CONFIG_SMP=n\n")
    assert k != kmod.kernel_key({**files, "linux_6.1.1-1.dsc": "cc" * 32}, b"CONFIG_SMP=y\n")
    monkeypatch.setitem(kmod.RECIPE, "steps", 99)
    assert k != kmod.kernel_key(files, b"CONFIG_SMP=y\n")


def test_cached_kernel_without_a_cache_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("SMM_HARNESS_CACHE", str(tmp_path))
    assert kmod.cached_kernel() is None
    (tmp_path / "kernel").mkdir()
    (tmp_path / "kernel" / "resolve.json").write_text('{"version": "6.1.1-1"}')
    assert kmod.cached_kernel() is None


def test_guest_kernel_setting(monkeypatch):
    monkeypatch.delenv("SMM_HARNESS_GUEST_KERNEL", raising=False)
    assert settings.guest_kernel() == settings.GUEST_KERNELS[0]
    monkeypatch.setenv("SMM_HARNESS_GUEST_KERNEL", "debian")
    assert settings.guest_kernel() == "debian"


def test_unknown_guest_kernel_is_one_line(monkeypatch):
    monkeypatch.setenv("SMM_HARNESS_GUEST_KERNEL", "gentoo")
    with pytest.raises(HarnessError, match=r"^unknown guest kernel 'gentoo' \(one of "):
        build.build_image(log=lambda m: None)


def test_images_build_takes_the_guest_kernel():
    parser = argparse.ArgumentParser(prog="smm-harness")
    cli.register(parser.add_subparsers(dest="command"))
    a = parser.parse_args(["images", "build", "--guest-kernel", "debian", "--quiet"])
    assert a.guest_kernel == "debian" and a.quiet
    with pytest.raises(SystemExit):
        parser.parse_args(["images", "build", "--guest-kernel", "gentoo"])
