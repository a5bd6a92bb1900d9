"""The CPU table every report and `probe` print: each CPU's SMRAM against TSEG."""
import re

from harness.report import cpu_table
from harness.snapshot import Snapshot

TSEG = {"base": 0x1F000000, "size": 16 << 20, "locked": True}


def test_the_table_says_whose_smram_is_inside_tseg():
    snap = {"tseg": TSEG, "cpus": [
        # edk2's PEI relocation: SMBASE below TSEG, its SMRAM (SMBASE + 0x8000 on) inside
        {"index": 0, "apic_id": 0, "smbase": 0x1EFF9000, "in_smm": False, "halted": True},
        # never relocated: the default SMBASE 0x30000, far below TSEG
        {"index": 1, "apic_id": 1, "smbase": 0x30000, "in_smm": True, "halted": False},
        # the top tile may not run past TSEG's end
        {"index": 2, "apic_id": 2, "smbase": 0x1FFF9000, "in_smm": False, "halted": True},
    ]}
    rows = cpu_table(Snapshot.from_dict(snap)).splitlines()
    assert rows[0].split() == ["cpu", "apic", "smbase", "smram", "in_smm", "halted",
                               "online", "smis", "ucode"]
    assert re.search(r"0x1eff9000 +in TSEG ", rows[1])
    assert re.search(r"0x00030000 +OUTSIDE TSEG ", rows[2])
    assert re.search(r"0x1fff9000 +OUTSIDE TSEG ", rows[3])
    assert rows[4] == "  TSEG [0x1f000000, 0x20000000) 16 MiB, locked"


def test_without_tseg_there_is_no_smram_column():
    snap = {"cpus": [{"index": 0, "apic_id": 0, "smbase": 0x30000}]}
    assert "smram" not in cpu_table(Snapshot.from_dict(snap))
