"""The constants moved into hw.py keep the values the code used before (a change to one
of them must be deliberate), and the guest's SMI command still writes ports 0xB3/0xB2."""
from harness import hw
from harness.qemu.backend import QemuBackend


def test_moved_constants_keep_their_values():
    assert hw.APM_NO_SMI == (0x02, 0x03)
    assert hw.SMI_EN_PORT == 0x630
    assert hw.OVMF_DEBUG_IO_PORT == 0x402
    assert (hw.APM_CNT_PORT, hw.APM_STS_PORT) == (178, 179)
    assert hw.QEMU_CPU_MODELS["kvm64"] == ("Intel", 15, 6, 1)
    assert hw.QEMU_CPU_MODELS["Skylake-Client"] == ("Intel", 6, 94, 3)


def test_guest_smi_command_writes_apm_ports():
    backend = QemuBackend()
    seen = []
    backend._agent_run = lambda cmd, **kw: (seen.append(cmd), (0, ""))[1]
    assert backend.smi(0x04, 0x01, 2) == {"written": 2}
    cmd = seen[0]
    assert cmd.index("seek=179 count=1") < cmd.index("seek=178 count=1")
    assert "\\001" in cmd and "\\004" in cmd and "-lt 2" in cmd
