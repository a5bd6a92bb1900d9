"""An image no table knows: its SMBASE layout is learned from one real boot, cached by
sha256, and the report says so (a real VM: Debian's OVMF, with the table hidden)."""
import json

import pytest

from harness import firmware as fw
from harness import session

pytestmark = pytest.mark.vm


def test_unknown_image_layout_learned_from_one_boot(tmp_path, monkeypatch):
    monkeypatch.setenv("SMM_HARNESS_CACHE", str(tmp_path / "cache"))
    empty = tmp_path / "images.json"
    empty.write_text('{"images": []}')
    monkeypatch.setattr(fw, "KNOWN_IMAGES", empty)
    session._targets.clear()
    session._learned.clear()
    target = session.resolve_target(session.Options())
    assert target.identity.layout is None          # neither sha256 nor version says
    ident = session.model_identity(target)
    # Debian 12's OVMF 2022.11 relocates in DXE; measured on QEMU 7.2 (and 10.0):
    # SMBASE 0x1ffbd000 for CPU 0 at 512 MiB and maxcpus 4 (real-qemu-findings.md)
    assert ident.layout == fw.DxeRelocation(smram_above=0x2D000)
    assert ident.known_by.startswith("learned from a boot on QEMU ")
    saved = json.loads((tmp_path / "cache" / "firmware" / f"{ident.sha256}.json").read_text())
    assert saved["known_by"] == ident.known_by
    assert fw.identify(target.ovmf_code_resolved).layout == ident.layout
    session._targets.clear()
    session._learned.clear()
