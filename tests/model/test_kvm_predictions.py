"""What the scenarios expect under KVM, checked on the model with kvm semantics.

This host's KVM cannot run SMM guests, so the QEMU side of every `kvm:` expectation is
skipped here; the model still says whether the expectation is consistent with
hardware-like SMM (INIT latched in SMM, no QEMU 7.2 TCG defects). `--backend both`
covers the tcg side."""
from pathlib import Path

import pytest

from harness import scenario
from harness.session import Options, run_one

ROOT = Path(__file__).resolve().parents[2]
KVM_SCENARIOS = [s for s in (scenario.load(f) for f in scenario.discover([ROOT / "scenarios"]))
                 if "kvm" in s.accels and "model" in s.backends]


def test_the_kvm_expectations_are_many():
    names = {s.name for s in KVM_SCENARIOS}
    assert {"hotadd-runtime", "hotadd-unplug", "hotadd-unplug-cycles", "coldplug-unplug-reset",
            "unplug-ascending-lost-sci"} <= names


@pytest.mark.parametrize("scn", KVM_SCENARIOS, ids=lambda s: s.name)
def test_model_meets_the_kvm_expectation(scn, tmp_path):
    r = run_one(scn, "model", Options(backend="model", accel="kvm", trace_dir=tmp_path),
                "kvm")
    assert r.met, r.reason
