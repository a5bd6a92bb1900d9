"""The scenario loader's values, defaults and range edges, one by one (each a mistake
mutation testing showed the other loader tests would not notice)."""
import pytest

from harness import scenario
from harness.errors import ConfigError, ScenarioError
from harness.machine import CpuPlug
from harness.scenario import Expectation
from harness.steps import plug_of


def load(tmp_path, text, name="s.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return scenario.load(f)


def error(tmp_path, text):
    with pytest.raises(ScenarioError) as e:
        load(tmp_path, text)
    return str(e.value).split(": ", 1)[1]


def steps(*lines):
    return "purpose: p\nmachine: {cpus: 1, maxcpus: 4}\nsteps:\n  - boot\n" + \
        "".join(f"  - {x}\n" for x in lines)


def test_step_descriptions_and_defaults(tmp_path):
    s = load(tmp_path, steps("unplug: 1", "wait: 2", "guest: uname",
                             "guest: {command: x, expect_rc: 255}", "smi: 255",
                             "smi: {}", "smi: {count: 100000, data: 255}"))
    assert s.steps[0].describe() == "boot"
    assert s.steps[1].describe() == "unplug {'slot': 1}"
    assert s.steps[2].args == {"seconds": 2.0}
    assert s.steps[3].args == {"command": "uname", "expect_rc": 0, "expect_output": None}
    assert s.steps[4].args == {"command": "x", "expect_rc": 255, "expect_output": None}
    assert s.steps[5].args == {"value": 255, "data": None, "count": 1}
    assert s.steps[6].args == {"value": 0, "data": None, "count": 1}
    assert s.steps[7].args == {"value": 0, "data": 255, "count": 100000}
    assert not s.needs_paused_start
    assert s.accels == ("tcg", "kvm") and s.backends == ("qemu", "model")
    assert s.expectation_line() == 0 and s.expectation("tcg") == Expectation()
    assert Expectation().line == 0


@pytest.mark.parametrize("step,message", [
    ("smi: 256", "steps[2].smi: 256 out of range (0..255)"),
    ("smi: {value: 256}", "steps[2].smi.value: 256 out of range (0..255)"),
    ("smi: {data: 256}", "steps[2].smi.data: 256 out of range (0..255)"),
    ("smi: {count: 100001}", "steps[2].smi.count: 100001 out of range (1..100000)"),
    ("smi: {count: 0}", "steps[2].smi.count: 0 out of range (1..100000)"),
    ("guest: {command: x, expect_rc: 256}",
     "steps[2].guest.expect_rc: 256 out of range (0..255)"),
    ("unplug: {slot: 1, timeout: 3601}",
     "steps[2].unplug.timeout: 3601 out of range (1..3600)"),
    ("unplug: {slot: 1, timeout: 0.5}",
     "steps[2].unplug.timeout: 0.5 out of range (1..3600)"),
    ("wait: -1", "steps[2].wait: -1 out of range (0.0..3600.0)"),
    ("wait: true", "steps[2].wait: expected a number of seconds, got True"),
    ("check: {smbase_relocated: 5}", "steps[2].check.smbase_relocated: takes no argument"),
    ("check: {smi_features: [broadcast, nope]}",
     "steps[2].check.smi_features: unknown SMI feature 'nope'"),
    ("check: {cpus_present: -1}", "steps[2].check.cpus_present: -1 out of range (>= 0)"),
])
def test_range_edges_and_wrong_values(tmp_path, step, message):
    assert error(tmp_path, steps(step)).endswith(message)


def test_values_at_their_edges_load(tmp_path):
    s = load(tmp_path, steps("unplug: {slot: 1, timeout: 3600}", "wait: 0",
                             "check: {cpus_present: 0, smbase_relocated: true}",
                             "wait: 3600"))
    assert s.steps[1].args["timeout"] == 3600.0
    assert s.steps[3].args["checks"] == [{"name": "cpus_present", "arg": 0},
                                         {"name": "smbase_relocated", "arg": None}]
    s = load(tmp_path, "purpose: p\nsteps:\n  - boot: {timeout: 3600}\n")
    assert s.steps[0].args == {"timeout": 3600.0}
    s = load(tmp_path, "purpose: p\nsteps:\n  - boot: {timeout: 1}\n")
    assert s.steps[0].args == {"timeout": 1.0}
    assert error(tmp_path, "purpose: p\nsteps:\n  - boot: {timeout: 3601}\n").endswith(
        "steps[1].boot.timeout: 3601 out of range (1..3600)")


@pytest.mark.parametrize("machine,message", [
    ("{cpus: 256}", "machine.cpus: 256 out of range (1..255)"),
    ("{maxcpus: 256}", "machine.maxcpus: 256 out of range (1..255)"),
    ("{tseg_mbytes: 4096}", "machine.tseg_mbytes: 4096 out of range (0..4095)"),
    ("{cpus: \"two\"}", "machine.cpus: expected an integer, got 'two'"),
    ("[1]", "machine: expected a mapping, got a list"),
    ("{cpus: [1]}", "machine.cpus: expected a single value, got a list"),
    ("{memory: 12K}", "machine.memory: "),
    ("{cpu_props: {a: [1]}}", "machine.cpu_props.a: expected a single value, got a list"),
    ("{cpu_props: {a: }}", "machine.cpu_props.a: expected a single value"),
    ("{extra_args: -S}", "machine.extra_args: expected a list of strings"),
    ("{smi_features: {broadcast: 1}}",
     "machine.smi_features.broadcast: expected true or false, got 1"),
])
def test_machine_values(tmp_path, machine, message):
    text = f"purpose: p\nmachine: {machine}\nsteps: [boot]\n"
    assert message in error(tmp_path, text)


def test_memory_error_keeps_only_the_problem(tmp_path):
    msg = error(tmp_path, "purpose: p\nmachine: {memory: 12K}\nsteps: [boot]\n")
    with pytest.raises(ConfigError) as e:
        from harness.machine import parse_memory
        parse_memory("12K", "machine.memory")
    assert msg == f"machine.memory: {str(e.value).split(': ', 1)[1]}"


def test_machine_values_at_their_edges(tmp_path):
    s = load(tmp_path, "purpose: p\nmachine: {cpus: \"0x2\", maxcpus: 255, tseg_mbytes: 0, "
                       "smi_features: {broadcast: false}}\nsteps: [boot]\n")
    assert (s.machine.cpus, s.machine.maxcpus, s.machine.tseg_mbytes) == (2, 255, 0)
    assert s.machine.smi_features["broadcast"] is False


def test_an_unknown_firmware_is_blamed_on_its_own_line(tmp_path):
    text = "purpose: p\nmachine: {cpus: 1,\n  firmware: seabios}\nsteps: [boot]\n"
    with pytest.raises(ScenarioError) as e:
        load(tmp_path, text)
    assert str(e.value).startswith(f"{tmp_path / 's.yaml'}:3: machine.firmware: unknown")


@pytest.mark.parametrize("text,message", [
    ("purpose: 5\nsteps: [boot]\n", "purpose: expected a non-empty string, got 5"),
    ("purpose: '  '\nsteps: [boot]\n", "purpose: expected a non-empty string, got '  '"),
    ("purpose: p\nsteps: [boot]\nexpect: refused\n",
     "expect: outcome refused needs details (message)"),
    ("purpose: p\nsteps: [boot]\nexpect: fail\n",
     "expect: outcome fail needs details (check)"),
    ("purpose: p\nsteps: [boot]\nexpect: {outcome: hang, in_smm: [256]}\n",
     "expect.in_smm: 256 out of range (0..255)"),
])
def test_top_level_values(tmp_path, text, message):
    assert error(tmp_path, text) == message


def test_expectation_lines_summary_and_accels(tmp_path):
    s = load(tmp_path, "purpose: p\naccel: tcg\nbackends: [model]\nsteps: [boot]\n"
                       "expect:\n  tcg: crash\n" .replace("crash", "hang"))
    e = s.expectation("tcg")
    assert (e.outcome, e.line) == ("hang", 6)
    assert s.accels == ("tcg",) and s.backends == ("model",)
    assert s.expectation_line() == 5
    s = load(tmp_path, "purpose: p\nsteps: [boot]\nexpect:\n  outcome: hang\n"
                       "  step: 1\n  in_smm: [255]\n")
    assert s.expectation("kvm").line == 4 and s.expectation("kvm").in_smm == [255]
    full = Expectation("hang", step=2, in_smm=[0], line=5, otherwise=Expectation())
    assert full.summary() == {"outcome": "hang", "step": 2, "in_smm": [0]}


def test_not_utf8_and_plug_of_and_load_all(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_bytes(b"purpose: \xff\xfe\n")
    with pytest.raises(ScenarioError) as e:
        scenario.load(f)
    assert str(e.value) == f"{f}: not UTF-8 text"
    good = tmp_path / "good.yaml"
    good.write_text(steps("hotplug: {slot: 2, props: {ucode-rev: 7}}"))
    [s] = scenario.load_all([good])
    assert plug_of(s.steps[1].args) == CpuPlug(slot=2, props={"ucode-rev": 7})
    assert scenario.discover([tmp_path]) == [f, good]
    with pytest.raises(ConfigError) as e:
        scenario.load_all([good, f])
    assert str(e.value) == f"{f}: not UTF-8 text"


def test_guest_mapping_defaults_and_a_yaml_reader_error(tmp_path):
    s = load(tmp_path, steps("guest: {command: x}"))
    assert s.steps[1].args == {"command": "x", "expect_rc": 0, "expect_output": None}
    f = tmp_path / "ctl.yaml"
    f.write_text("purpose: p\x07\nsteps: [boot]\n")      # a control character: ReaderError
    with pytest.raises(ScenarioError) as e:
        scenario.load(f)
    assert str(e.value).startswith(f"{f}: YAML: unacceptable character")
