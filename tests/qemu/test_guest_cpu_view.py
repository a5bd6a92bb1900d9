"""The guest CPU view the QEMU backend parses (CPU_LIST_CMD's output), incl. microcode."""
from harness import hw
from harness.qemu.backend import CPU_LIST_CMD, parse_cpu_list

# What the agent printed on a kvm64 guest with a cold-plugged CPU at ucode-rev 0x2a<<32
# (od's leading space and dd's empty output for an offline CPU included).
OUTPUT = """cpu 0 \\_SB_.CPUS.C000 1
ucode 0  0000000100000000 
cpu 1 \\_SB_.CPUS.C002 1
ucode 1  0000002a00000000 0x2a
cpu 2 \\_SB_.CPUS.C003 0
ucode 2  
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 15
model\t\t: 6
stepping\t: 1
microcode\t: 0x1
apicid\t\t: 0
processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 15
model\t\t: 6
stepping\t: 1
microcode\t: 0x2a
apicid\t\t: 2
"""


def test_msr_sysfs_cpuinfo_and_vendor_per_slot():
    cpus = parse_cpu_list(OUTPUT)
    assert cpus[0] == {"linux": 0, "online": True, "msr_ucode": 0x1_0000_0000, "sysfs_ucode": None,
                       "apic_id": 0, "microcode": 1, "vendor": "GenuineIntel",
                       "signature": 0xF61}
    assert (cpus[2]["msr_ucode"], cpus[2]["sysfs_ucode"], cpus[2]["microcode"]) == \
        (0x2A_0000_0000, 0x2A, 0x2A)
    assert cpus[3] == {"linux": 2, "online": False, "msr_ucode": None, "sysfs_ucode": None}


def test_command_reads_msr_0x8b_at_its_offset():
    assert f"skip={0x8B} iflag=skip_bytes" in CPU_LIST_CMD and hw.MSR_IA32_BIOS_SIGN_ID == 0x8B
    assert "/dev/cpu/$n/msr bs=8 count=1" in CPU_LIST_CMD
