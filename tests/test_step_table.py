"""One table of steps (harness/steps.py STEP_TABLE): the loader's step names, argument
kinds, order rules, backends and step verdicts, and the runner's functions, come from it."""
import dataclasses

import pytest

from harness import scenario, steps
from harness.errors import ScenarioError

# what scenario.STEP_OPS and STEP_VERDICTS listed before the table existed
BEFORE_OPS = ("boot", "coldplug", "hotplug", "unplug", "online", "offline", "smi", "guest",
              "snapshot", "wait", "reset", "check")
BEFORE_VERDICTS = {"guest": "a guest step's exit status or output",
                   "cpu_removed": "an unplug step's CPU still in its slot"}


def test_the_loader_reads_the_table():
    assert steps.STEP_OPS == BEFORE_OPS
    assert scenario.STEP_VERDICTS == steps.STEP_VERDICTS == BEFORE_VERDICTS
    for name, row in steps.STEP_TABLE.items():
        assert row.name == name == row.function.__name__
        assert row.arg in scenario.ARG_PARSERS
        assert row.when in (steps.BEFORE_BOOT, steps.AFTER_BOOT, steps.ANY_TIME)


SCENARIO = """\
purpose: p
{backends}steps:
  - boot
  - smi: 0xB2
"""


def test_loader_refuses_a_step_on_a_backend_that_cannot_run_it(tmp_path, monkeypatch):
    table = dict(steps.STEP_TABLE)
    table["smi"] = dataclasses.replace(table["smi"], backends=("qemu",))
    monkeypatch.setattr(scenario, "STEP_TABLE", table)
    f = tmp_path / "s.yaml"
    f.write_text(SCENARIO.format(backends=""))
    with pytest.raises(ScenarioError) as e:
        scenario.load(f)
    assert str(e.value) == f"{f}:4: steps[2].smi: not on model"
    f.write_text(SCENARIO.format(backends="backends: qemu\n"))
    assert scenario.load(f).backends == ("qemu",)


def test_when_a_step_may_come_is_the_tables(tmp_path, monkeypatch):
    table = dict(steps.STEP_TABLE)
    table["smi"] = dataclasses.replace(table["smi"], when=steps.ANY_TIME)
    f = tmp_path / "s.yaml"
    f.write_text("purpose: p\nsteps:\n  - smi: 0xB2\n  - boot\n")
    with pytest.raises(ScenarioError, match="needs a booted machine"):
        scenario.load(f)
    monkeypatch.setattr(scenario, "STEP_TABLE", table)
    assert [s.op for s in scenario.load(f).steps] == ["smi", "boot"]
