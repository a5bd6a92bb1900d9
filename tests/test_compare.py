"""Trace comparison: identical runs agree; a deliberately wrong model diverges, and the
report names the step, the CPU and the field. Runs on the model (pure, fast)."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from harness import scenario
from harness.firmware import known_identity
from harness.compare import compare_traces, format_divergence
from harness.model.backend import ModelBackend
from harness.model.cpu import TCG
from harness.runner import run_scenario

FIRMWARE = known_identity("2022.11-6+deb12u2")   # the image modelled: Debian 12 OVMF

ROOT = Path(__file__).resolve().parent.parent


def run(tmp_path, name, backend, tag):
    scn = scenario.load(ROOT / "scenarios" / f"{name}.yaml")
    d = tmp_path / tag
    return run_scenario(scn, backend, "tcg", d, d / "trace.jsonl")


def test_same_model_twice_agrees(tmp_path):
    a = run(tmp_path, "unplug-coldplugged", ModelBackend("tcg", FIRMWARE), "a")
    b = run(tmp_path, "unplug-coldplugged", ModelBackend("tcg", FIRMWARE), "b")
    assert a.met and b.met
    assert compare_traces(a.trace_path, b.trace_path) is None


def test_wrong_tile_stride_names_step_cpu_and_field(tmp_path):
    good = run(tmp_path, "boot-2-of-4", ModelBackend("tcg", FIRMWARE), "good")
    bad = run(tmp_path, "boot-2-of-4",
              ModelBackend("tcg", FIRMWARE, profile_overrides={"smbase_stride": 0x1000}), "bad")
    d = compare_traces(good.trace_path, bad.trace_path)
    assert d is not None
    assert (d.step, d.op, d.cpu, d.field) == (2, "check", 0, "smbase")
    assert d.left == 0x1FFBD000 and d.right != d.left
    text = format_divergence(d)
    assert text.splitlines()[0].startswith(
        "first divergence at step 2 (check, line 9): CPU 0 smbase: model (A) 0x1ffbd000 != ")
    assert "> " in text            # the CPU is marked in the side-by-side tables


def test_init_latched_under_tcg_changes_the_hang(tmp_path):
    good = run(tmp_path, "hotadd-runtime", ModelBackend("tcg", FIRMWARE), "good")
    latched = dataclasses.replace(TCG, name="tcg-init-latched", init_latched_in_smm=True)
    bad = run(tmp_path, "hotadd-runtime", ModelBackend(latched, FIRMWARE), "bad")
    assert good.met
    d = compare_traces(good.trace_path, bad.trace_path)
    # same signature (boot CPUs in SMM, new CPU halted), but with INIT latched the new
    # CPU was relocated before it stopped: the report must point at its SMBASE
    assert (d.step, d.op, d.cpu, d.field) == (2, "hotplug", 2, "smbase")
    assert d.left == 0x30000 and d.right == 0x1FFC1000


def test_diff_cli_exit_status(tmp_path):
    good = run(tmp_path, "boot-2-of-4", ModelBackend("tcg", FIRMWARE), "good")
    bad = run(tmp_path, "boot-2-of-4",
              ModelBackend("tcg", FIRMWARE, profile_overrides={"smbase_stride": 0x1000}), "bad")
    same = subprocess.run([sys.executable, "-m", "harness", "diff", str(good.trace_path),
                           str(good.trace_path)], capture_output=True, text=True, cwd=ROOT)
    assert same.returncode == 0 and same.stdout.strip() == "traces agree"
    diff = subprocess.run([sys.executable, "-m", "harness", "diff", str(good.trace_path),
                           str(bad.trace_path)], capture_output=True, text=True, cwd=ROOT)
    assert diff.returncode == 1
    assert "CPU 0 smbase" in diff.stdout


def test_refusal_message_divergence(tmp_path):
    a = run(tmp_path, "hotplug-refused-smi-off", ModelBackend("tcg", FIRMWARE), "a")
    assert a.met
    lines = a.trace_path.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    for r in recs:
        if r.get("error", None) and r["error"]["kind"] == "refused":
            r["error"]["message"] = "something else"
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    d = compare_traces(a.trace_path, other)
    assert d.field == "refusal message" and d.step == 3
    assert d.left == "cpu hotplug with SMI wasn't enabled by firmware"


def test_cut_trace_diverges_on_step_count(tmp_path):
    a = run(tmp_path, "coldplug-one", ModelBackend("tcg", FIRMWARE), "a")
    lines = a.trace_path.read_text().splitlines()
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:2]) + "\n")       # header + first step only
    d = compare_traces(a.trace_path, cut)
    assert d.field == "steps run" and (d.left, d.right) == (4, 1)
