"""edk2's two SMBASE layouts against SMBASEs measured on real QEMU (real-qemu-findings.md,
builds.md), and the identification of an image by sha256, version or a learned boot."""
import json

import pytest

from harness import firmware as fw
from harness.errors import ConfigError

MiB = 1 << 20


def tseg(mem_mib, tseg_mib=16):
    top = mem_mib * MiB if mem_mib <= 2048 else 2048 * MiB
    return top - tseg_mib * MiB, top


@pytest.mark.parametrize("mem,maxcpus,expected", [
    (512, 4, [0x1ffbd000, 0x1ffbf000]),                         # measured, OVMF 2022.11
    (1024, 4, [0x3ffbd000, 0x3ffbf000, 0x3ffc1000, 0x3ffc3000]),
    (2048, 8, [0x7ffb5000, 0x7ffb7000, 0x7ffb9000]),
])
def test_dxe_relocation_of_ovmf_2022_11(mem, maxcpus, expected):
    layout = fw.known_identity("2022.11-6+deb12u2").layout
    base, top = tseg(mem)
    assert [layout.smbase(i, maxcpus, base, top) for i in range(len(expected))] == expected


def test_pei_relocation_of_ovmf_2026_08():
    # measured on QEMU 7.2, 512 MiB, 16 MiB TSEG: 0x1eff9000, 0x1effb000 (builds.md)
    base, top = tseg(512)
    got = [fw.PeiRelocation().smbase(i, 4, base, top) for i in range(2)]
    assert got == [0x1eff9000, 0x1effb000]
    # no constant of a build enters it: maxcpus and the top of TSEG do not move it
    assert fw.PeiRelocation().smbase(0, 64, base, top + 32 * MiB) == 0x1eff9000


@pytest.mark.parametrize("version,edk2", [
    ("2022.11-6+deb12u2", 202211), ("2025.02-8", 202502), ("2026.08-1", 202608),
    ("edk2-stable202405", 202405), ("unknown", None), (None, None)])
def test_edk2_release_of_a_version(version, edk2):
    assert fw.edk2_release(version) == edk2


def test_identity_by_version_picks_the_generation(tmp_path, monkeypatch):
    monkeypatch.setenv("SMM_HARNESS_CACHE", str(tmp_path / "cache"))
    img = tmp_path / "OVMF_CODE_4M.secboot.fd"
    img.write_bytes(b"not a measured image")
    new = fw.identify(img, "2025.02-8")
    assert isinstance(new.layout, fw.PeiRelocation) and new.known_by == "version"
    assert new.delay_smm_exit is True            # stable202411 added it
    old = fw.identify(img, "2024.02-1")
    assert old.layout is None and old.delay_smm_exit is False   # DXE: must be measured
    assert fw.identify(img).layout is None


def test_fit_layout_learns_each_generation():
    base, top = tseg(512)
    pei = fw.fit_layout({0: 0x1eff9000, 1: 0x1effb000}, 4, base, top)
    assert isinstance(pei, fw.PeiRelocation)
    dxe = fw.fit_layout({0: 0x1ffbd000, 1: 0x1ffbf000}, 4, base, top)
    assert dxe == fw.DxeRelocation(smram_above=0x2D000)
    assert fw.fit_layout({0: 0x1ffbd000, 1: 0x1ffbf000, 2: 0x1ffc4000}, 4, base, top) is None
    assert fw.fit_layout({}, 4, base, top) is None


def test_learned_identity_is_cached_by_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("SMM_HARNESS_CACHE", str(tmp_path / "cache"))
    img = tmp_path / "mine.fd"
    img.write_bytes(b"a user's build")
    ident = fw.identify(img)
    assert ident.layout is None and ident.known_by == "unknown"
    fw.remember_identity(fw.FirmwareIdentity(ident.sha256, layout=fw.DxeRelocation(0x1000)),
                         "learned from a boot on QEMU 7.2.22")
    again = fw.identify(img)
    assert again.layout == fw.DxeRelocation(0x1000)
    assert again.known_by == "learned from a boot on QEMU 7.2.22"
    saved = json.loads((tmp_path / "cache/firmware" / f"{ident.sha256}.json").read_text())
    assert saved["layout"] == {"smram_above": 0x1000, "tile": 0x2000, "kind": "dxe"}


def test_unknown_layout_is_a_clear_error():
    prof = fw.load_profile("ovmf-smm").with_identity(fw.FirmwareIdentity("ab" * 32))
    with pytest.raises(ConfigError, match="SMBASE layout is unknown.*learns it"):
        prof.smbase(0, 1, 0, 0)


def test_one_profile_loader_for_every_profile():
    assert fw.profile_names() == ["ovmf-nosmm", "ovmf-smm"]
    assert fw.load_profile("ovmf-smm").smm and not fw.load_profile("ovmf-nosmm").smm
    with pytest.raises(ConfigError, match="unknown firmware profile 'images'"):
        fw.load_profile("images")
