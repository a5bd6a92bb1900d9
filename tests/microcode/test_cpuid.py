"""CPUID(1).EAX is encoded in one place (harness.microcode.cpuid.cpuid_signature, used
by the model and the QEMU backend) and decodes back through decode_signature."""
import pytest

from harness.microcode.cpuid import cpuid_signature, decode_signature
from harness.model import cpu as model_cpu
from harness.qemu import backend as qemu_backend


@pytest.mark.parametrize("family, model, stepping, eax", [
    (5, 2, 1, 0x00000521),          # Pentium: no extended fields
    (6, 94, 3, 0x000506E3),         # Skylake-Client: extended model 5
    (6, 0x8F, 8, 0x000806F8),       # Sapphire Rapids
    (15, 6, 1, 0x00000F61),         # kvm64: family 15, no extended family
    (15, 107, 1, 0x00060FB1),       # qemu64: family 15 carries the extended model
    (0x17, 0x31, 0, 0x00830F10),    # AMD Zen 2: extended family 8
    (0x19, 0x01, 1, 0x00A00F11),    # AMD Zen 3
])
def test_encode_and_decode(family, model, stepping, eax):
    assert cpuid_signature(family, model, stepping) == eax
    assert decode_signature(eax) == (family, model, stepping)


def test_family_below_6_has_no_extended_model():
    # Intel SDM: the extended model field counts for families 6 and 15 only
    assert cpuid_signature(5, 0x12, 1) == 0x521
    assert cpuid_signature(4, 0x1F, 0xF) == 0x4FF


def test_one_encoder():
    assert model_cpu.cpuid_signature is cpuid_signature
    assert qemu_backend.cpuid_signature is cpuid_signature
