"""One table of checks (harness/checks.py CHECK_TABLE): the loader's names and argument
kinds, the runner's functions and the backends that may run each come from it."""
import dataclasses

import pytest

from harness import checks, scenario
from harness.errors import ScenarioError

# the names and argument kinds scenario.CHECKS listed before the table existed
BEFORE = {
    "smbase_relocated": None, "smbase_in_tseg": None, "smbase_tiles_disjoint": None,
    "no_cpu_in_smm": None, "smi_delivered": None, "smbase_unchanged": None,
    "smi_features": "names", "cpus_present": "int", "cpus_online": "int", "tseg_locked": None,
    "guest_alive": None, "microcode_uniform": None, "microcode_revision": "int",
    "microcode_guest": None,
}


def test_loader_and_runner_read_the_table():
    assert scenario.CHECKS == BEFORE
    assert set(checks.CHECK_FUNCTIONS) == set(BEFORE)
    for name, row in checks.CHECK_TABLE.items():
        assert row.name == name == row.function.__name__
        assert checks.CHECK_FUNCTIONS[name] is row.function
        assert row.arg in checks.ARG_KINDS
        assert set(row.backends) <= set(checks.BACKENDS)


SCENARIO = """\
purpose: p
{backends}steps:
  - boot
  - check: [smbase_relocated, {{cpus_present: 1}}]
"""


def test_loader_refuses_a_check_on_a_backend_that_cannot_run_it(tmp_path, monkeypatch):
    table = dict(checks.CHECK_TABLE)
    table["cpus_present"] = dataclasses.replace(table["cpus_present"], backends=("qemu",))
    monkeypatch.setattr(checks, "CHECK_TABLE", table)
    f = tmp_path / "s.yaml"
    f.write_text(SCENARIO.format(backends=""))
    with pytest.raises(ScenarioError) as e:
        scenario.load(f)
    assert str(e.value) == f"{f}:4: steps[2].check: check cpus_present: not on model"
    f.write_text(SCENARIO.format(backends="backends: qemu\n"))
    assert scenario.load(f).backends == ("qemu",)


def test_every_check_runs_on_both_backends_today():
    assert all(row.backends == ("qemu", "model") for row in checks.CHECK_TABLE.values())
