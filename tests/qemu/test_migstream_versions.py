"""The migration-stream reader on real streams of QEMU 7.2, 10.0 and 11.1 (device state
kept, RAM page records cut: scripts/make-stream-fixtures). Each booted 2 of 4 CPUs with
512 MiB and a 16 MiB TSEG at [0x1f000000, 0x20000000)."""
from pathlib import Path

import pytest

from harness.qemu.migstream import parse_stream, strip_ram
from harness.qemu.snapshot_decode import decode_snapshot

STREAMS = Path(__file__).resolve().parents[1] / "data" / "streams"
# SMBASE of CPUs 0 and 1, as the harness measured them on each build (README, builds.md):
# OVMF 2022.11 relocates in DXE near the top of TSEG, 2025.02 and 2026.08 in PEI at
# TSEG base - 0x7000 + i * 0x2000
CELLS = {
    "qemu-7.2+ovmf-2022.11": ("pc-q35-7.2", [0x1ffbd000, 0x1ffbf000]),
    "qemu-10.0+ovmf-2025.02": ("pc-q35-10.0", [0x1eff9000, 0x1effb000]),
    "qemu-11.1+ovmf-2026.08": ("pc-q35-11.1", [0x1eff9000, 0x1effb000]),
}


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_every_version_reads(cell):
    machine, smbases = CELLS[cell]
    stream = parse_stream(STREAMS / f"{cell}.mig")
    assert stream.machine == machine
    snap = decode_snapshot(stream)
    assert [c.smbase for c in snap.cpus] == smbases
    assert not any(c.in_smm for c in snap.cpus)
    assert (snap.tseg.base, snap.tseg.size, snap.tseg.locked) == (0x1f000000, 16 << 20, True)
    assert stream.ram_blocks["pc.ram"].length == 512 << 20


def test_what_newer_versions_write():
    old = parse_stream(STREAMS / "qemu-7.2+ovmf-2022.11.mig")
    new = parse_stream(STREAMS / "qemu-11.1+ovmf-2026.08.mig")
    # QEMU 8.2+: the description starts with "configuration", before page_size
    assert list(old.vmdesc)[0] == "page_size"
    assert list(new.vmdesc)[:2] == ["configuration", "page_size"]
    # QEMU 10.0+ machine types: MIG_CMD_SWITCHOVER_START (08 000b 0000) before RAM END
    raw = (STREAMS / "qemu-11.1+ovmf-2026.08.mig").read_bytes()
    assert b"\x08\x00\x0b\x00\x00\x03" in raw
    assert b"\x08\x00\x0b\x00\x00" not in (STREAMS / "qemu-7.2+ovmf-2022.11.mig").read_bytes()


def test_strip_ram_keeps_a_readable_stream(tmp_path):
    src = STREAMS / "qemu-10.0+ovmf-2025.02.mig"
    out = tmp_path / "again.mig"
    assert strip_ram(src, out) == src.stat().st_size      # nothing left to cut
    assert [c.smbase for c in decode_snapshot(parse_stream(out)).cpus] == \
        CELLS["qemu-10.0+ovmf-2025.02"][1]
