"""The scenario loader: valid files load with the right values; each malformed file in
tests/bad_scenarios/ gives exactly the one error line its first comment states."""
import re
from pathlib import Path

import pytest

from harness import scenario
from harness.errors import ScenarioError

BAD = sorted((Path(__file__).parent / "bad_scenarios").glob("*.yaml"))
SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_scenario_gives_its_one_line_error(path):
    first = path.read_text().splitlines()[0]
    m = re.match(r"# error: (\d+): (.*)$", first)
    assert m, f"{path.name} must start with '# error: LINE: message'"
    with pytest.raises(ScenarioError) as e:
        scenario.load(path)
    assert str(e.value) == f"{path}:{m.group(1)}: {m.group(2)}"
    assert "\n" not in str(e.value)


def test_corpus_covers_many_mistakes():
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_shipped_scenario_loads(path):
    s = scenario.load(path)
    assert s.purpose and s.steps
    assert s.machine.cpus <= s.machine.maxcpus


def test_values_and_expectations(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("""\
purpose: p
machine: {cpus: 2, maxcpus: 4, memory: 1G, tseg_mbytes: 8, cpu_props: {ucode-rev: 0x10}}
steps:
  - coldplug: {slot: 3, props: {ucode-rev: 0x20}}
  - boot
  - smi: {value: 4, data: 0x5a, count: 3}
  - check: {cpus_present: 3, smbase_relocated: }
expect:
  tcg: {outcome: hang, step: 3, in_smm: [1, 0], halted: [2]}
  kvm: pass
""")
    s = scenario.load(f)
    assert (s.machine.memory_mib, s.machine.tseg_mbytes) == (1024, 8)
    assert s.machine.cpu_props == {"ucode-rev": 0x10}
    assert s.steps[0].args == {"slot": 3, "props": {"ucode-rev": 0x20}}
    assert s.steps[0].line == 4
    assert s.steps[2].args == {"value": 4, "data": 0x5A, "count": 3}
    assert [c["name"] for c in s.steps[3].args["checks"]] == ["cpus_present",
                                                              "smbase_relocated"]
    assert s.expectation("tcg").in_smm == [0, 1]
    assert s.expectation("kvm").outcome == "pass"
    assert s.needs_paused_start


def test_unplug_timeout_and_expected_unplug_verdict(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("""\
purpose: p
machine: {cpus: 1, maxcpus: 3}
steps:
  - coldplug: 2
  - boot
  - unplug: 2
  - unplug: {slot: 1, timeout: 7.5}
expect: {outcome: fail, step: 4, check: cpu_removed, message: Remote IRR}
""")
    s = scenario.load(f)
    assert s.steps[2].args == {"slot": 2}
    assert s.steps[3].args == {"slot": 1, "timeout": 7.5}
    e = s.expectation("tcg")
    assert (e.outcome, e.step, e.check, e.message) == ("fail", 4, "cpu_removed", "Remote IRR")


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ScenarioError) as e:
        scenario.load(tmp_path / "nope.yaml")
    assert str(e.value).startswith(f"{tmp_path / 'nope.yaml'}: cannot read")


def test_machine_rules_are_one_list():
    """The loader and MachineConfig.validate report the same rules (machine.py)."""
    from harness.errors import ConfigError
    from harness.machine import MachineConfig
    bad = MachineConfig(cpus=4, maxcpus=2)
    assert bad.problems() == [("maxcpus", "2 is less than cpus (4)")]
    with pytest.raises(ConfigError, match=r"^maxcpus: 2 is less than cpus \(4\)$"):
        bad.validate()
    off = MachineConfig(smi_features={"cpu_hotplug": False, "cpu_hotunplug": True})
    assert [k for k, _ in off.problems()] == ["smi_features"]
    assert MachineConfig(cpus=2, maxcpus=4).validate().cpus == 2


def test_every_problem_of_a_file_is_reported_with_its_line(tmp_path):
    f = tmp_path / "three.yaml"
    f.write_text("""\
purpose: three mistakes, each in its own part of the file
machine:
  cpus: two
steps:
  - boot
  - explode: now
expect:
  tcg: explodes
""")
    with pytest.raises(ScenarioError) as e:
        scenario.load(f)
    assert str(e.value).splitlines() == [
        f"{f}:3: machine.cpus: expected an integer, got 'two'",
        f"{f}:6: steps[2]: unknown step 'explode' (known: boot, coldplug, hotplug, "
        "unplug, online, offline, smi, guest, snapshot, wait, reset, check)",
        f"{f}:8: expect.tcg: unknown outcome 'explodes' (known: pass, refused, hang, "
        "fail, crash)",
    ]
    assert [p.line for p in e.value.problems] == [3, 6, 8]
    assert (e.value.line, e.value.key) == (3, "machine.cpus")
