"""Guest image recipe: cpio writer, module resolution, caching, early cpio, CLI."""

import argparse
import gzip
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness.newc import TreeWriter
from harness.qemu import image as images
from harness.qemu.image import apt, build, cli, modules
from harness.errors import HarnessError

CPIO = shutil.which("cpio")


def _cpio_list(archive: bytes) -> str:
    return subprocess.run([CPIO, "-itv", "--quiet"], input=archive, capture_output=True, check=True).stdout.decode()


@pytest.mark.skipif(not CPIO, reason="cpio tool not installed")
def test_cpio_writer_roundtrip(tmp_path):
    w = TreeWriter()
    w.file("a/b/c.txt", b"hello", 0o600)
    w.symlink("bin/sh", "busybox")
    w.chardev("dev/console", 5, 1)
    data = w.finish()
    assert len(data) % 4 == 0 and data.startswith(b"070701")
    listing = _cpio_list(data)
    assert "a/b/c.txt" in listing and "bin/sh -> busybox" in listing
    assert "5,   1" in listing and listing.splitlines()[0].startswith("d")
    subprocess.run([CPIO, "-idm", "--quiet", "--no-absolute-filenames", "a/b/c.txt"], input=data, cwd=tmp_path, check=True)
    assert (tmp_path / "a/b/c.txt").read_bytes() == b"hello"


def _fake_ko(depends: str) -> bytes:
    """A minimal 64-bit little-endian ELF with a .modinfo section."""
    modinfo = f"license=GPL\0depends={depends}\0name=x\0".encode()
    shstr = b"\0.modinfo\0.shstrtab\0"
    body_off = 64
    shoff = body_off + len(modinfo) + len(shstr)
    hdr = bytearray(64)
    hdr[:6] = b"\x7fELF\x02\x01"
    hdr[0x28:0x30] = shoff.to_bytes(8, "little")
    hdr[0x3A:0x3C] = (64).to_bytes(2, "little")
    hdr[0x3C:0x3E] = (3).to_bytes(2, "little")
    hdr[0x3E:0x40] = (2).to_bytes(2, "little")

    def sh(name, off, size):
        e = bytearray(64)
        e[0:4] = name.to_bytes(4, "little")
        e[0x18:0x20] = off.to_bytes(8, "little")
        e[0x20:0x28] = size.to_bytes(8, "little")
        return bytes(e)

    return (bytes(hdr) + modinfo + shstr + sh(0, 0, 0) + sh(1, body_off, len(modinfo))
            + sh(10, body_off + len(modinfo), len(shstr)))


def test_module_resolution_orders_dependencies(tmp_path):
    import lzma
    mod = tmp_path / "6.1.0-test"
    (mod / "kernel/a").mkdir(parents=True)
    (mod / "kernel/a/msr.ko").write_bytes(_fake_ko("x-dep,builtin_one"))
    (mod / "kernel/a/x_dep.ko.xz").write_bytes(lzma.compress(_fake_ko("")))
    (mod / "modules.builtin").write_text("kernel/b/builtin_one.ko\n")
    order = modules.resolve_modules(mod, ["msr"])
    assert [rel for rel, _ in order] == ["kernel/a/x_dep.ko", "kernel/a/msr.ko"]
    assert order[0][1].startswith(b"\x7fELF")  # decompressed
    with pytest.raises(HarnessError, match="neither built in"):
        modules.resolve_modules(mod, ["nope"])


@pytest.fixture(scope="module")
def image():
    """Debian's kernel: what these tests check is the package side (modules, .debs)."""
    return images.build_image(log=lambda m: None, guest_kernel="debian")


def test_image_contents(image):
    assert image.kernel.stat().st_size > 1_000_000
    assert image.kernel_version.startswith("6.1.0-") and image.kernel_version.endswith("-amd64")
    main = gzip.decompress(image.initrd.read_bytes())
    if CPIO:
        listing = _cpio_list(main)
        for needed in ("init", "agent.sh", "bin/busybox", "bin/sh -> ", "dev/console",
                       f"lib/modules/{image.kernel_version}/kernel/arch/x86/kernel/msr.ko"):
            assert needed in listing, needed
    assert image.initrd.parent.name == image.key


def test_cached_rebuild_is_a_noop(image):
    mtime = image.initrd.stat().st_mtime_ns
    t0 = time.monotonic()
    again = images.build_image(log=lambda m: pytest.fail(f"rebuilt: {m}"), guest_kernel="debian")
    elapsed = time.monotonic() - t0
    print(f"\ncached build_image(): {elapsed * 1000:.0f} ms")
    assert again == image
    assert again.initrd.stat().st_mtime_ns == mtime
    assert elapsed < 1.0


def test_no_partial_images_left(image):
    build = image.initrd.parent.parent
    assert not [p for p in build.iterdir() if p.name.startswith((".tmp-", ".old-"))
                and time.time() - p.stat().st_mtime > 600]


def _early_cpio(tmp_path, payload=b"dummy microcode\n") -> bytes:
    if not CPIO:
        pytest.skip("cpio tool not installed")
    root = tmp_path / "early"
    (root / "kernel/x86/microcode").mkdir(parents=True)
    (root / "kernel/x86/microcode/GenuineIntel.bin").write_bytes(payload)
    names = "kernel\nkernel/x86\nkernel/x86/microcode\nkernel/x86/microcode/GenuineIntel.bin\n"
    for name in names.split():  # same bytes every run, so the image stays cached
        os.utime(root / name, (0, 0))
        os.chmod(root / name, 0o755 if (root / name).is_dir() else 0o644)
    return subprocess.run([CPIO, "-o", "-H", "newc", "--quiet", "--reproducible", "-R", "0:0"],
                          input=names.encode(), cwd=root,
                          capture_output=True, check=True).stdout


def test_early_cpio_changes_key(tmp_path, image):
    early = _early_cpio(tmp_path)
    inputs = build._inputs(lambda m: None, images.BUILD_DIR, "debian")
    assert images.image_key(inputs, None) == image.key
    assert images.image_key(inputs, early) != image.key
    assert images.image_key(inputs, early) != images.image_key(inputs, early + b"\0" * 4)


def test_early_cpio_must_be_newc():
    with pytest.raises(HarnessError, match="newc"):
        images.build_image(early_cpio=b"\x1f\x8b not a cpio", log=lambda m: None)


def test_apt_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(apt.Apt, "updated", True)  # no apt-get update (network) in a test
    monkeypatch.setattr(apt, "resolve_packages", lambda log, build_dir: {
        "kernel_package": "linux-image-0.0.0-0-bogus-amd64", "kernel_version": "0.0-0",
        "busybox_version": "1:0"})
    with pytest.raises(HarnessError) as info:
        images.build_image(build_dir=tmp_path, log=lambda m: None, guest_kernel="debian")
    msg = str(info.value)
    assert msg.startswith("cannot download linux-image-0.0.0-0-bogus-amd64=0.0-0: ")
    assert "\n" not in msg
    assert not [p for p in tmp_path.iterdir() if p.name not in (".lock", "debs")]


def test_cli_register(capsys, image):
    parser = argparse.ArgumentParser(prog="smm-harness")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["images", "build", "--guest-kernel", "debian"])
    assert args.force is False
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"kernel: {image.kernel}" in out and f"initrd: {image.initrd}" in out
    assert parser.parse_args(["images", "build", "--force"]).force is True


def _test_agent_module():
    """tests/qemu/test_agent.py (its VM helper), whatever pytest's import mode."""
    import importlib.util
    import sys
    for mod in list(sys.modules.values()):
        if getattr(mod, "__file__", None) and Path(mod.__file__).resolve() == Path(__file__).with_name("test_agent.py").resolve():
            return mod
    spec = importlib.util.spec_from_file_location("_smm_test_agent_helper", Path(__file__).with_name("test_agent.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.vm
@pytest.mark.parametrize("guest_kernel", ["harness", "debian"])
def test_early_cpio_image_boots(tmp_path, guest_kernel):
    booted_vm = _test_agent_module().booted_vm
    early = _early_cpio(tmp_path)
    t0 = time.monotonic()
    plain = images.build_image(log=lambda m: None, guest_kernel=guest_kernel)
    combo = images.build_image(early_cpio=early, log=lambda m: None, guest_kernel=guest_kernel)
    print(f"\nbuild with early cpio: {time.monotonic() - t0:.1f}s")
    assert combo.key != plain.key and combo.guest_kernel == guest_kernel
    data = combo.initrd.read_bytes()
    assert data.startswith(early) and data[len(early):len(early) + 2] == b"\x1f\x8b"
    with booted_vm(combo.kernel, combo.initrd, combo.cmdline) as vm:
        print(f"boot to banner (early cpio): {vm.boot_seconds:.2f}s")
        # both archives were unpacked into the rootfs
        assert vm.agent.run("cat /kernel/x86/microcode/GenuineIntel.bin") == (0, "dummy microcode\n")
        assert vm.agent.run("test -c /dev/cpu/0/msr")[0] == 0
