"""Fixtures for the microcode tests (helpers live in mc_helpers.py)."""

import subprocess

import pytest

from mc_helpers import IUCODE


@pytest.fixture
def iucode():
    """Run iucode_tool; skip when it is not installed."""
    if IUCODE is None:
        pytest.skip("iucode_tool is not installed (Debian package iucode-tool)")

    def run(*args, check=True):
        p = subprocess.run([IUCODE, *map(str, args)], capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"iucode_tool {args} rc={p.returncode}: {p.stderr}")
        return p
    return run
