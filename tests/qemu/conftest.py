"""Fixtures shared by the QEMU backend's tests."""
import pytest


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    """A boot cache of the test's own (harness/qemu/bootcache.py), on whatever the
    environment says."""
    root = tmp_path / "boot-cache"
    monkeypatch.setenv("SMM_HARNESS_BOOT_CACHE_DIR", str(root))
    monkeypatch.delenv("SMM_HARNESS_BOOT_CACHE", raising=False)
    return root
