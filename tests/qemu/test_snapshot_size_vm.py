"""Small snapshots on a real VM (harness/qemu/cmdline.py shared_ram_args, backend.py
_migrate_snapshot): guest RAM is a shared file that QEMU has already unlinked, a
snapshot leaves it out and still decodes every CPU, and a full stream can still be had.
The build is the one the run names (``--qemu``, ``--firmware``); run it on at least
qemu-7.2 (before QEMU 8.1's RAM_NAMED_FILE rule) and qemu-11.1."""
import os
import signal
from pathlib import Path

import pytest

from harness import hw
from harness.machine import MachineConfig
from harness.pytest_plugin import _options
from harness.qemu.migstream import parse_stream
from harness.qemu.snapshot_decode import decode_snapshot
from harness.qemu.vm import SHARED_RAM_DIR
from harness.session import make_backend, resolve_target

pytestmark = pytest.mark.vm

MACHINE = MachineConfig(cpus=2, maxcpus=4, memory_mib=512, tseg_mbytes=16, accel="tcg")
SMALL = 5 << 20        # issue 13: a snapshot of at most 5 MB


def ram_files(pid):
    """QEMU's guest-RAM file mappings (/proc/PID/maps), as the kernel names them."""
    return sorted({line.split(None, 5)[5].strip() for line in open(f"/proc/{pid}/maps")
                   if "qemu_back_mem.pc.ram." in line})


@pytest.fixture(scope="module")
def booted(request, tmp_path_factory):
    target = resolve_target(_options(request.config))
    b = make_backend("qemu", target, "tcg")
    b.start(MACHINE, tmp_path_factory.mktemp("small-snapshots"), paused=True)
    try:
        b.boot()
        yield target, b
    finally:
        b.close()


def test_guest_ram_is_a_shared_file_nobody_can_leave_behind(booted):
    _, b = booted
    assert b.ram_left_out
    files = ram_files(b.vm.proc.pid)
    assert len(files) == 1
    path = Path(files[0].removesuffix(" (deleted)"))
    assert files[0].endswith(" (deleted)") and path.parent == Path(b.vm.ram_dir)
    assert not path.exists()                  # unlinked by QEMU itself at start


def test_a_snapshot_is_small_and_decodes_every_cpu(booted):
    target, b = booted
    snap, path = b._migrate_snapshot(keep=True)
    assert path.stat().st_size <= SMALL
    stream = parse_stream(path)
    assert "x-ignore-shared" in stream.capabilities
    ram = stream.ram_blocks["pc.ram"]
    assert (ram.length, ram.pages, ram.zero_pages) == (512 << 20, 0, 0)
    assert snap.tseg.locked and (snap.tseg.base, snap.tseg.size) == (0x1F000000, 16 << 20)
    layout = target.identity.layout
    want = [layout.smbase(i, MACHINE.maxcpus, snap.tseg.base, snap.tseg.base + snap.tseg.size)
            for i in range(MACHINE.cpus)] if layout else None
    got = [c.smbase for c in snap.cpus]
    assert len(got) == MACHINE.cpus and hw.DEFAULT_SMBASE not in got
    if want is not None:
        assert got == want
    path.unlink()


def test_a_full_stream_still_carries_the_ram_and_the_next_is_small_again(booted):
    _, b = booted
    small, _ = b._migrate_snapshot()
    full, path = b._migrate_snapshot(keep=True, full=True)
    stream = parse_stream(path)
    assert stream.ram_blocks["pc.ram"].pages > 1000     # the booted guest's pages
    assert [c.smbase for c in decode_snapshot(stream).cpus] == \
        [c.smbase for c in small.cpus]
    path.unlink()
    _, path = b._migrate_snapshot(keep=True)
    assert path.stat().st_size <= SMALL


def test_a_killed_qemu_leaves_no_ram_file(request, tmp_path):
    target = resolve_target(_options(request.config))
    b = make_backend("qemu", target, "tcg")
    before = set(os.listdir(SHARED_RAM_DIR))
    b.start(MACHINE, tmp_path, paused=True)
    try:
        ram_dir = Path(b.vm.ram_dir)
        assert ram_dir == Path(SHARED_RAM_DIR) and ram_files(b.vm.proc.pid)
        os.kill(b.vm.proc.pid, signal.SIGKILL)
        b.vm.proc.wait(10)
        assert not {n for n in set(os.listdir(ram_dir)) - before
                    if n.startswith("qemu_back_mem.")}
    finally:
        b.close()
