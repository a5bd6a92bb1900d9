"""The one orchestration (harness.session): run parameters travel beside the scenario,
never in it, and the model's accelerator is not chosen by probing QEMU."""
import copy
from pathlib import Path

from harness import scenario
from harness.qemu import process
from harness.session import Options, resolve_accel, run_backends, PairResult

SCN = Path(__file__).resolve().parents[1] / "scenarios"


def test_the_model_alone_stands_for_tcg_without_asking_qemu(monkeypatch):
    def probe(*a, **k):
        raise AssertionError("QEMU probed for a model run")
    monkeypatch.setattr(process, "kvm_can_do_smm", probe)
    assert resolve_accel(Options(backend="model")) == "tcg"
    assert resolve_accel(Options(backend="model", accel="kvm")) == "kvm"


def test_a_run_leaves_the_scenario_as_loaded(tmp_path):
    scn = scenario.load(SCN / "smi-once.yaml")
    before = copy.deepcopy(scn.machine)
    items = list(run_backends(scn, Options(backend="model", accel="kvm", trace_dir=tmp_path)))
    (backend, accel, result), pair = items
    assert (backend, accel, result.met) == ("model", "kvm", True), result.reason
    assert isinstance(pair, PairResult) and pair.comparison is None
    assert scn.machine == before
