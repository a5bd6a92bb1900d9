"""End-to-end model runs against what real QEMU 7.2 + OVMF 2022.11 showed."""
import pytest

from harness import hw
from harness.errors import BackendError, ConfigError, Hang, Refused
from harness.machine import CpuPlug

from model_helpers import make

NO_UNPLUG = {"broadcast": True, "cpu_hotplug": True, "cpu_hotunplug": False}
NO_HOTPLUG = {"broadcast": True, "cpu_hotplug": False, "cpu_hotunplug": False}


def smbases(b):
    return [c.smbase for c in b.snapshot().cpus]


@pytest.mark.parametrize("sem", ["tcg", "kvm"])
@pytest.mark.parametrize("cfg,coldplug,expected", [
    (dict(memory_mib=512, cpus=2, maxcpus=4), (), [0x1ffbd000, 0x1ffbf000]),
    (dict(memory_mib=1024, cpus=2, maxcpus=4), (), [0x3ffbd000, 0x3ffbf000]),
    (dict(memory_mib=1024, cpus=2, maxcpus=4), (2, 3),
     [0x3ffbd000, 0x3ffbf000, 0x3ffc1000, 0x3ffc3000]),
    (dict(memory_mib=2048, cpus=3, maxcpus=8), (), [0x7ffb5000, 0x7ffb7000, 0x7ffb9000]),
])
def test_boot_smbase_matches_real_qemu(sem, cfg, coldplug, expected):
    b = make(sem, coldplug=coldplug, **cfg)
    s = b.snapshot()
    assert smbases(b) == expected
    assert [c.index for c in s.cpus] == list(range(len(expected)))
    assert all(c.halted and not c.in_smm and c.online for c in s.cpus)
    assert s.tseg.locked and s.tseg.base + s.tseg.size == min(cfg["memory_mib"] << 20,
                                                              0x80000000)
    assert s.registers["f_smbase"] == hw.MCH_F_SMBASE_LCK
    assert s.smi_features == {"requested": 7, "negotiated": 7, "ok": True,
                              "names": ["broadcast", "cpu_hotplug", "cpu_hotunplug"]}


def test_high_memory_puts_low_ram_at_2g():
    b = make("kvm", memory_mib=3072, cpus=1, maxcpus=8)
    assert smbases(b) == [0x7ffb5000]


def test_tcg_runtime_hot_add_hangs_like_real_qemu():
    b = make("tcg", memory_mib=512, cpus=2, maxcpus=4)
    with pytest.raises(Hang) as ei:
        b.hotplug(CpuPlug(2))
    h = ei.value
    # real-qemu-findings.md (QEMU 7.2.22 + OVMF 2022.11): cpu0 and cpu1 wait in SMM,
    # the new CPU halts in OVMF's pen at SMBASE 0x30000
    assert h.signature() == {"in_smm": [0, 1], "halted": [2], "spinning": [0, 1],
                             "smbase_default": [2], "evidence": "stall"}
    cpus = {c["index"]: c for c in h.diagnosis.cpus}
    assert cpus[0]["in_smm"] and not cpus[0]["halted"]          # BSP spins in SMM
    new = cpus[2]
    assert not new["in_smm"] and new["halted"] and new["smbase"] == hw.DEFAULT_SMBASE
    assert (new["cs"], new["eip"]) == (0x9F00, 0xC)              # OVMF's pen
    # the machine is stuck: every further step hangs again, snapshots still work
    for step in (lambda: b.smi(0, None, 1), lambda: b.wait(1), lambda: b.online(1),
                 lambda: b.hotplug(CpuPlug(3)), lambda: b.unplug(1)):
        with pytest.raises(Hang):
            step()
    s = b.snapshot()
    assert [c.smbase for c in s.cpus] == [0x1ffbd000, 0x1ffbf000, hw.DEFAULT_SMBASE]
    assert [c.in_smm for c in s.cpus] == [True, True, False]
    assert s.cpus[2].smi_count == 1                               # took the broadcast SMI
    # system_reset recovers; the added CPU is a boot CPU now
    b.reset()
    assert smbases(b) == [0x1ffbd000, 0x1ffbf000, 0x1ffc1000]


def test_tcg_single_cpu_hang():
    b = make("tcg", cpus=1, maxcpus=4)
    with pytest.raises(Hang) as ei:
        b.hotplug(CpuPlug(1))
    assert ei.value.signature() == {"in_smm": [0], "halted": [1], "spinning": [0],
                                    "smbase_default": [1], "evidence": "stall"}


def test_kvm_hot_add_relocates_into_next_slot():
    b = make("kvm", memory_mib=512, cpus=2, maxcpus=4)
    r = b.hotplug(CpuPlug(2))
    assert r == {"index": 2, "apic_id": 2, "smbase": 0x1ffc1000, "in_smm": False}
    s = b.snapshot()
    assert s.cpus[2].online is False and s.cpus[2].halted
    b.online(2)
    s = b.snapshot()
    assert s.cpus[2].online and s.cpus[2].smbase == 0x1ffc1000
    b.hotplug(CpuPlug(3))
    assert smbases(b)[3] == 0x1ffc3000


def test_kvm_fw_slot_is_lowest_empty_not_apic_id():
    b = make("kvm", memory_mib=512, cpus=1, maxcpus=4)
    b.hotplug(CpuPlug(3))
    assert smbases(b) == [0x1ffbd000, 0x1ffbf000]


@pytest.mark.parametrize("sem", ["tcg", "kvm"])
def test_unplug_removes_cpu_and_frees_slot(sem):
    b = make(sem, memory_mib=1024, cpus=2, maxcpus=4, coldplug=(2,))
    r = b.unplug(2)
    assert r["removed"]
    s = b.snapshot()
    assert [c.index for c in s.cpus] == [0, 1]
    assert b.m.cpuhp.status(2) == 0
    if sem == "kvm":
        b.hotplug(CpuPlug(3))                 # reuses firmware slot 2 -> same tile
        # QEMU numbers a CPU by its possible-CPU index (slot), not by plug order
        assert b.snapshot().cpus[2].index == 3 and smbases(b)[2] == 0x3ffc1000
    b.unplug(1)                               # a boot CPU (not CPU 0) can go too
    assert 1 not in [c.index for c in b.snapshot().cpus]


def test_unplug_offline_and_never_onlined_cpu_kvm():
    b = make("kvm", cpus=2, maxcpus=4)
    b.hotplug(CpuPlug(2))
    b.unplug(2)                                # sits in the pen: still ejected
    b.offline(1)
    assert b.snapshot().cpus[1].online is False
    b.unplug(1)
    assert [c.index for c in b.snapshot().cpus] == [0]


def test_refusals_exact_messages():
    b = make("kvm", cpus=2, maxcpus=4, smi_features=NO_HOTPLUG)
    with pytest.raises(Refused) as ei:
        b.hotplug(CpuPlug(2))
    assert ei.value.message == "cpu hotplug with SMI wasn't enabled by firmware"
    assert len(b.snapshot().cpus) == 2
    with pytest.raises(Refused) as ei:
        b.unplug(1)
    assert ei.value.message == "cpu hot-unplug with SMI wasn't enabled by firmware"
    b = make("kvm", cpus=2, maxcpus=4, smi_features=NO_UNPLUG)
    b.hotplug(CpuPlug(2))
    with pytest.raises(Refused) as ei:
        b.unplug(2)
    assert ei.value.message == "cpu hot-unplug with SMI wasn't enabled by firmware"
    with pytest.raises(Refused, match="Boot CPU is unpluggable"):
        b.unplug(0)
    with pytest.raises(Refused, match="CPU\\[1\\] with APIC ID 1 exists"):
        b.hotplug(CpuPlug(1))
    with pytest.raises(Refused, match="Invalid CPU socket-id: 4 must be in range 0:3"):
        b.hotplug(CpuPlug(4))
    with pytest.raises(Refused, match="Device 'cpu-slot3' not found"):
        b.unplug(3)


def test_negotiation_failure_hangs_boot():
    with pytest.raises(Hang) as ei:
        make("kvm", cpus=1, maxcpus=2,
             smi_features={"broadcast": False, "cpu_hotplug": True, "cpu_hotunplug": False})
    assert "negotiat" in ei.value.diagnosis.details["firmware_fatal"]


def test_no_host_features_unicast_and_hotplug_without_relocation():
    b = make("kvm", cpus=2, maxcpus=4,
             smi_features={"broadcast": False, "cpu_hotplug": False, "cpu_hotunplug": False})
    s = b.snapshot()
    assert s.smi_features["negotiated"] == 0 and not s.smi_features["ok"]
    r = b.smi(0, 0x12, 1)
    assert r["smis"] == {0: 1, 1: 0}          # unicast to the CPU doing the OUT
    assert b.snapshot().registers["apm_sts"] == 0x12
    b.hotplug(CpuPlug(2))
    b.online(2)
    assert smbases(b)[2] == hw.DEFAULT_SMBASE  # nobody relocated it


@pytest.mark.parametrize("sem", ["tcg", "kvm"])
def test_nosmm_firmware_never_relocates(sem):
    b = make(sem, cpus=2, maxcpus=4, firmware="ovmf-nosmm")
    b.hotplug(CpuPlug(2))
    b.online(2)
    s = b.snapshot()
    assert smbases(b) == [hw.DEFAULT_SMBASE] * 3 and all(c.online for c in s.cpus)
    assert s.tseg.size == 0 and not s.tseg.locked
    assert s.smi_features["negotiated"] == 0
    assert b.smi(4, None, 1)["smis"] == {0: 0, 1: 0, 2: 0}    # APMC_EN never set
    b.unplug(2)
    assert len(b.snapshot().cpus) == 2


@pytest.mark.parametrize("sem", ["tcg", "kvm"])
def test_smi_broadcast_returns_all_cpus(sem):
    b = make(sem, cpus=3, maxcpus=4)
    before = smbases(b)
    r = b.smi(0, None, 3)
    assert r["smis"] == {0: 3, 1: 3, 2: 3}
    s = b.snapshot()
    assert smbases(b) == before and not any(c.in_smm for c in s.cpus)
    assert s.registers["apm_cnt"] == 0


def test_smi_4_with_nothing_pending_is_harmless_tcg():
    b = make("tcg", cpus=2, maxcpus=4, coldplug=())
    b.smi(4, None, 2)
    assert not any(c.in_smm for c in b.snapshot().cpus)


def test_coldplug_rules_and_ucode_props():
    b = make("tcg", boot=False, cpus=1, maxcpus=2, cpu_props={"ucode-rev": "0x1234"})
    b.coldplug(CpuPlug(1, props={"ucode-rev": 0x99}))
    with pytest.raises(Refused):
        b.coldplug(CpuPlug(1))
    b.boot()
    s = b.snapshot()
    assert [c.ucode_rev for c in s.cpus] == [0x1234, 0x99]
    assert s.cpus[0].signature == 0x60FB1
    with pytest.raises(ConfigError):
        b.coldplug(CpuPlug(1))
    b2 = make("tcg", paused=False, boot=False, cpus=1, maxcpus=2)
    with pytest.raises(ConfigError):
        b2.coldplug(CpuPlug(1))


def test_bad_topology_and_firmware():
    with pytest.raises(ConfigError):
        make(cpus=3, maxcpus=2)
    with pytest.raises(ConfigError):
        make(firmware="no-such-firmware")


def test_hotplug_before_boot_is_config_error():
    b = make(boot=False, cpus=1, maxcpus=2)
    with pytest.raises(ConfigError):
        b.hotplug(CpuPlug(1))


def test_offline_online_and_guest():
    b = make("kvm", cpus=3, maxcpus=4)
    b.offline(2)
    assert b.guest("cat /sys/devices/system/cpu/online")["output"] == "0-1\n"
    b.online(2)
    assert b.guest("nproc") == {"rc": 0, "output": "3\n"}
    assert b.guest("uname -a")["rc"] == 0
    with pytest.raises(BackendError):
        b.offline(0)
    with pytest.raises(BackendError):
        b.online(3)
    assert b.snapshot().cpus[2].smbase == 0x1ffc1000   # INIT keeps SMBASE


def test_info_and_close():
    b = make("kvm", cpus=1, maxcpus=1, defects=None)
    info = b.info()
    assert info.pop("firmware_identity").startswith("2022.11-6+deb12u2 (edk2-stable202211; "
                                                    "DXE relocation")
    assert info == {"backend": "model", "semantics": "kvm", "qemu_defects": "none",
                    "firmware": "ovmf-smm"}
    assert make("tcg", cpus=1, maxcpus=1, defects=None).info()["qemu_defects"] == \
        "qemu-7.2-tcg"
    b.close()
    b.close()


def test_kvm_reset_after_hot_add_relocates_at_boot():
    b = make("kvm", cpus=1, maxcpus=4)
    b.hotplug(CpuPlug(2))
    b.hotplug(CpuPlug(1))
    # hot-added: APIC 2 -> fw slot 1, APIC 1 -> fw slot 2
    assert {c.apic_id: c.smbase for c in b.snapshot().cpus} == \
        {0: 0x1ffbd000, 2: 0x1ffbf000, 1: 0x1ffc1000}
    b.reset()
    # at boot processor numbers follow APIC ids: APIC 1 -> slot 1, APIC 2 -> slot 2
    s = b.snapshot()
    by_apic = {c.apic_id: c.smbase for c in s.cpus}
    assert by_apic == {0: 0x1ffbd000, 1: 0x1ffbf000, 2: 0x1ffc1000}
    assert all(c.online and c.smi_count == 1 for c in s.cpus)
