"""q35 MCH and ICH9 LPC (facts §2, §3)."""
import pytest

from harness import hw
from harness.model.chipset import MSG_HOTPLUG_REFUSED, MSG_UNPLUG_REFUSED, Lpc, Mch

B, H, U = hw.SMI_F_BROADCAST, hw.SMI_F_CPU_HOTPLUG, hw.SMI_F_CPU_HOT_UNPLUG


def lpc(host=B | H | U):
    sink = []
    feats = {n: bool(host & bit) for n, bit in hw.SMI_FEATURE_NAMES.items()}
    return Lpc(feats, lambda bc, cpu: sink.append((bc, cpu))), sink


@pytest.mark.parametrize("host,req,ok", [
    (B | H | U, B | H | U, 1),
    (B | H | U, B, 1),
    (B | H | U, B | H, 1),
    (B | H | U, 0, 1),
    (B | H | U, H, 0),            # hotplug without broadcast
    (B | H | U, B | U, 0),        # unplug without hotplug
    (B, B | H, 0),                # outside host mask
    (B | H | U, 1 << 5, 0),
])
def test_negotiation_rules(host, req, ok):
    l, _ = lpc(host)
    l.write_requested(req)
    assert l.read_features_ok() == ok
    assert l.negotiated == (req if ok else 0)
    assert l.features()["ok"] is bool(ok)


def test_negotiation_locked_until_reset():
    l, _ = lpc()
    l.write_requested(B)
    assert l.read_features_ok() == 1
    l.write_requested(B | H)
    assert l.read_features_ok() == 1 and l.negotiated == B
    l.reset()
    assert l.negotiated == 0 and not l.features_ok


def test_no_files_without_host_features():
    l, _ = lpc(0)
    assert l.fw_cfg_files() == {}
    assert lpc()[0].fw_cfg_files()


@pytest.mark.parametrize("neg,add,dele", [
    (0, None, None),
    (B, MSG_HOTPLUG_REFUSED, MSG_UNPLUG_REFUSED),
    (B | H, None, MSG_UNPLUG_REFUSED),
    (B | H | U, None, None),
])
def test_refusal_matrix(neg, add, dele):
    l, _ = lpc()
    l.negotiated = neg
    assert l.device_add_refusal() == add
    assert l.device_del_refusal() == dele


def test_refusal_texts_are_qemus():
    assert MSG_HOTPLUG_REFUSED == "cpu hotplug with SMI wasn't enabled by firmware"
    assert MSG_UNPLUG_REFUSED == "cpu hot-unplug with SMI wasn't enabled by firmware"


def test_apm_smi_broadcast_unicast_and_acpi_values():
    l, sink = lpc()
    l.write_apm_cnt(4, "cpu1")
    assert sink == []                              # APMC_EN not set yet
    l.write_smi_en(hw.SMI_EN_APMC | hw.SMI_EN_GBL_SMI)
    l.write_apm_cnt(4, "cpu1")
    assert sink == [(False, "cpu1")]               # not negotiated: unicast
    l.write_requested(B)
    l.read_features_ok()
    l.write_apm_cnt(0, "cpu1")
    assert sink[-1] == (True, "cpu1")
    for v in (hw.APM_CNT_ACPI_ENABLE, hw.APM_CNT_ACPI_DISABLE):
        l.write_apm_cnt(v, "cpu1")
    assert len(sink) == 2 and l.apm_cnt == 3


def test_smi_lock_makes_gbl_read_only():
    l, _ = lpc()
    l.write_smi_en(hw.SMI_EN_APMC | hw.SMI_EN_GBL_SMI)
    l.write_gen_pmcon_1(hw.GEN_PMCON_1_SMI_LOCK)
    l.write_smi_en(hw.SMI_EN_APMC)
    assert l.smi_en & hw.SMI_EN_GBL_SMI
    l.write_gen_pmcon_1(0)
    assert l.gen_pmcon_1 & hw.GEN_PMCON_1_SMI_LOCK


def test_f_smbase_state_machine():
    m = Mch(512 << 20, 16)
    m.write(hw.MCH_F_SMBASE, 0x55)
    assert m.read(hw.MCH_F_SMBASE) == 0
    m.write(hw.MCH_F_SMBASE, hw.MCH_F_SMBASE_QUERY)
    assert m.read(hw.MCH_F_SMBASE) == hw.MCH_F_SMBASE_IN_RAM
    m.write(hw.MCH_F_SMBASE, 0x00)
    assert m.read(hw.MCH_F_SMBASE) == hw.MCH_F_SMBASE_IN_RAM
    m.write(hw.MCH_F_SMBASE, hw.MCH_F_SMBASE_LCK)
    assert m.read(hw.MCH_F_SMBASE) == hw.MCH_F_SMBASE_LCK and m.f_smbase_locked
    m.write(hw.MCH_F_SMBASE, hw.MCH_F_SMBASE_QUERY)
    assert m.read(hw.MCH_F_SMBASE) == hw.MCH_F_SMBASE_LCK
    m.reset()
    assert m.read(hw.MCH_F_SMBASE) == 0


def test_ext_tseg_query():
    m = Mch(512 << 20, 16)
    assert m.read(hw.MCH_EXT_TSEG_MBYTES) == hw.MCH_EXT_TSEG_QUERY
    m.write(hw.MCH_EXT_TSEG_MBYTES, hw.MCH_EXT_TSEG_QUERY)
    assert m.read(hw.MCH_EXT_TSEG_MBYTES) == 16
    m0 = Mch(512 << 20, 0)
    m0.write(hw.MCH_EXT_TSEG_MBYTES, hw.MCH_EXT_TSEG_QUERY)
    assert m0.read(hw.MCH_EXT_TSEG_MBYTES) == hw.MCH_EXT_TSEG_QUERY


@pytest.mark.parametrize("sz,size", [(hw.ESMRAMC_TSEG_1M, 1), (hw.ESMRAMC_TSEG_2M, 2),
                                     (hw.ESMRAMC_TSEG_8M, 8), (hw.ESMRAMC_TSEG_EXT, 16)])
def test_tseg_size_and_lock(sz, size):
    m = Mch(512 << 20, 16)
    assert m.tseg_size == 0
    m.write(hw.MCH_ESMRAMC, sz | hw.ESMRAMC_T_EN)
    assert m.tseg_size == 0                        # needs G_SMRAME too
    m.write(hw.MCH_SMRAM, hw.SMRAM_G_SMRAME | hw.SMRAM_D_OPEN)
    assert m.tseg_size == size << 20 and m.tseg_base == (512 - size) << 20
    assert m.read(hw.MCH_ESMRAMC) & 0x38 == 0x38   # SM_CACHE|SM_L1|SM_L2 stay
    m.write(hw.MCH_SMRAM, m.read(hw.MCH_SMRAM) | hw.SMRAM_D_LCK)
    assert m.locked and not m.read(hw.MCH_SMRAM) & hw.SMRAM_D_OPEN
    m.write(hw.MCH_ESMRAMC, 0)
    m.write(hw.MCH_SMRAM, hw.SMRAM_D_OPEN)
    assert m.tseg_size == size << 20
    assert m.read(hw.MCH_SMRAM) & 0x7 == hw.SMRAM_C_BASE_SEG


def test_host_features():
    assert hw.smi_feature_mask({"broadcast": True, "cpu_hotplug": True}) == B | H
    assert hw.smi_feature_names(B | U) == ["broadcast", "cpu_hotunplug"]
