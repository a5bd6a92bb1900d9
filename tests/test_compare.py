"""Trace comparison: identical runs agree; a deliberately wrong model diverges, and the
report names the step, the CPU and the field. Runs on the model (pure, fast)."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from harness import scenario
from harness.firmware import known_identity
from harness.compare import compare, compare_traces, format_comparison, format_divergence
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
    # same pinned signature (boot CPUs in SMM, new CPU halted), but with INIT latched the
    # new CPU was relocated before it stopped: the report must point at its SMBASE
    # (hotadd-runtime pins in_smm and halted, so smbase_default is not compared itself)
    assert (d.step, d.op, d.cpu, d.field) == (2, "hotplug", 2, "smbase")
    assert d.left == 0x30000 and d.right != 0x30000


def test_diff_cli_exit_status(tmp_path):
    good = run(tmp_path, "boot-2-of-4", ModelBackend("tcg", FIRMWARE), "good")
    bad = run(tmp_path, "boot-2-of-4",
              ModelBackend("tcg", FIRMWARE, profile_overrides={"smbase_stride": 0x1000}), "bad")
    same = subprocess.run([sys.executable, "-m", "harness", "diff", str(good.trace_path),
                           str(good.trace_path)], capture_output=True, text=True, cwd=ROOT)
    assert same.returncode == 0 and same.stdout.splitlines()[0] == "traces agree"
    assert "compared:" in same.stdout and "  smbase: step 2 (check)" in same.stdout
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


# unplug-coldplugged as run on QEMU 7.2.22 + OVMF 2022.11 (TCG, 2026-12-02): after an
# unplug its snapshots come from QMP/HMP only (no SMBASE, no TSEG)
RECORDED_QEMU = ROOT / "tests" / "data" / "traces" / \
    "unplug-coldplugged-qemu-7.2.22-ovmf-2022.11.jsonl"


class DeadSmbaseAfterUnplug(ModelBackend):
    """A wrong model: once a CPU was unplugged, every SMBASE reads 0xDEAD0000 and TSEG is
    unlocked (``smbase``, ``tseg``: which of the two it gets wrong)."""

    def __init__(self, *a, smbase=True, tseg=True, **kw):
        super().__init__(*a, **kw)
        self.wrong_smbase, self.wrong_tseg, self.unplugged = smbase, tseg, False

    def unplug(self, slot, timeout=None):
        r = super().unplug(slot, timeout)
        self.unplugged = True
        return r

    def snapshot(self):
        s = super().snapshot()
        if self.unplugged:
            for c in s.cpus:
                if self.wrong_smbase:
                    c.smbase = 0xDEAD0000
            if self.wrong_tseg:
                s.tseg.locked = False
        return s


def model_run(tmp_path, backend, tag):
    scn = scenario.load(ROOT / "scenarios" / "unplug-coldplugged.yaml")
    d = tmp_path / tag
    return run_scenario(scn, backend, "tcg", d, d / "trace.jsonl", qemu_version="7.2.22",
                        firmware_edk2=202211)


def test_the_model_agrees_with_recorded_qemu_and_says_what_was_not_observable(tmp_path):
    r = model_run(tmp_path, ModelBackend("tcg", FIRMWARE), "good")
    c = compare(RECORDED_QEMU, r.trace_path)
    assert c.divergence is None
    text = format_comparison(c)
    assert text.splitlines()[0] == "traces agree"
    assert "  smbase: step 4 (check), step 5 (before the unplug)\n" in text
    assert ("  smbase step 6 (check) after the unplug at step 5, step 7 (before the "
            "unplug), step 8 (check) after the unplug at step 7: not observable on QEMU "
            "7.2.22 (snapshot from QMP/HMP only") in text
    assert "  tseg.locked step 6 (check) after the unplug at step 5" in text


def test_a_model_moving_smbase_to_0xdead0000_after_an_unplug_is_caught(tmp_path):
    r = model_run(tmp_path, DeadSmbaseAfterUnplug("tcg", FIRMWARE), "dead")
    assert r.met       # its own checks cannot see it: smbase is not checked after
    d = compare_traces(RECORDED_QEMU, r.trace_path)
    assert d is not None
    assert (d.step, d.op, d.cpu, d.field) == (6, "check", 0, "smbase")
    assert d.left is None and d.right == 0xDEAD0000
    # 0x1ffbf000: CPU 0 as QEMU 7.2.22 + OVMF 2022.11 showed it before the unplug (512
    # MiB, maxcpus 3: the findings table's first tile, 0x3b000 + 3 * 0x2000 below 512 MiB)
    assert d.note == ("changed where QEMU 7.2.22 could not observe it (both saw "
                      "0x1ffbf000 at step 5 (before the unplug))")
    assert "qemu None != model 0xdead0000: changed where" in format_divergence(d)


def test_a_model_unlocking_tseg_after_an_unplug_is_caught(tmp_path):
    r = model_run(tmp_path, DeadSmbaseAfterUnplug("tcg", FIRMWARE, smbase=False), "tseg")
    d = compare_traces(RECORDED_QEMU, r.trace_path)
    assert (d.step, d.field, d.left, d.right) == (6, "tseg.locked", None, False)
    assert "both saw True at step 5 (before the unplug)" in d.note


def test_a_field_one_side_lacks_is_listed_not_skipped(tmp_path):
    a = run(tmp_path, "boot-2-of-4", ModelBackend("tcg", FIRMWARE), "a")
    recs = [json.loads(x) for x in a.trace_path.read_text().splitlines()]
    for r in recs:
        if r.get("snapshot"):
            r["snapshot"]["cpus"][1]["ucode_rev"] = None
    b = tmp_path / "b.jsonl"
    b.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    c = compare(a.trace_path, b)
    assert c.divergence is None
    assert ("ucode_rev", "not reported by model (B)") in c.coverage.unobserved


def test_resumed_boot_is_said_not_hidden(tmp_path):
    """A QEMU trace whose boot was resumed from the boot cache agrees with the model on
    everything after it, and the comparison says the firmware boot was not run."""
    a = run(tmp_path, "smi-once", ModelBackend("tcg", FIRMWARE), "a")
    b = run(tmp_path, "smi-once", ModelBackend("tcg", FIRMWARE), "b")
    lines = b.trace_path.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    for r in recs:
        if r.get("op") == "boot":
            r["result"] = {"boot_seconds": 0.5, "banner": None, "boot": "resumed",
                           "boot_cache": "0123abcd"}
    b.trace_path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    c = compare(a.trace_path, b.trace_path)
    assert c.divergence is None
    text = format_comparison(c)
    assert "resumed a machine booted earlier (boot cache 0123abcd)" in text
    plain = format_comparison(compare(a.trace_path, a.trace_path))
    assert "boot cache" not in plain
