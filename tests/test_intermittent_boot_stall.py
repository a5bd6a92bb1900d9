"""The one intermittent bug (known_bugs.MTTCG_BOOT_STALL): recognised only by its own
signature, on the builds that showed it, and retried once with the first attempt kept."""
from dataclasses import replace

from harness.known_bugs import intermittent_boot_stall
from harness.machine import MachineConfig
from harness.outcome import Outcome

MULTI3 = MachineConfig(cpus=1, maxcpus=3, tcg_thread="multi")
# as CI saw it (QEMU 7.2.22 + OVMF 2022.11, unplug-coldplugged, 2026-12-02)
STALL = Outcome(kind="hang", step=3, op="boot", message="guest did not boot to its agent: "
                "no progress over 32 samples", signature={
                    "evidence": "stall", "in_smm": [0, 1, 2], "halted": [],
                    "spinning": [0, 1, 2], "smbase_default": []})


def test_the_stall_is_recognised_on_the_build_that_showed_it():
    why = intermittent_boot_stall(STALL, MULTI3, "tcg", "7.2.22")
    assert why.startswith("tcg-mttcg-smm-boot-stall: the boot stopped with CPUs [0, 1, 2] "
                          "spinning in SMM")


def test_anything_else_is_not_that_stall():
    assert intermittent_boot_stall(STALL, MULTI3, "tcg", "11.1.3") is None   # not seen there
    assert intermittent_boot_stall(STALL, replace(MULTI3, tcg_thread="single"), "tcg",
                                   "7.2.22") is None
    assert intermittent_boot_stall(replace(STALL, op="hotplug"), MULTI3, "tcg",
                                   "7.2.22") is None
    halted = replace(STALL, signature={**STALL.signature, "halted": [2], "spinning": [0, 1]})
    assert intermittent_boot_stall(halted, MULTI3, "tcg", "7.2.22") is None
    storm = replace(STALL, signature={**STALL.signature, "evidence": "smi-storm"})
    assert intermittent_boot_stall(storm, MULTI3, "tcg", "7.2.22") is None
    two = replace(STALL, signature={**STALL.signature, "in_smm": [0, 1], "spinning": [0, 1]})
    assert intermittent_boot_stall(two, MULTI3, "tcg", "7.2.22") is None


def test_a_run_with_that_stall_is_repeated_once_and_the_first_attempt_kept(tmp_path,
                                                                          monkeypatch):
    from harness import session
    from harness.runner import RunResult

    calls = []

    def fake_run(scn, backend, accel, run_dir, trace_path, **kw):
        calls.append(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "trace.jsonl").write_text(f"attempt {len(calls)}\n")
        stalled = len(calls) == 1
        return RunResult(scenario=scn, backend="qemu", accel=accel,
                         outcome=STALL if stalled else Outcome(), met=not stalled,
                         reason="x", trace_path=trace_path, run_dir=run_dir)

    class Target:
        qemu_version, firmware_edk2 = "7.2.22", None

    class Scn:
        name, machine = "unplug-coldplugged", MULTI3

    monkeypatch.setattr(session, "run_scenario", fake_run)
    monkeypatch.setattr(session, "resolve_target", lambda opts, need_qemu: Target())
    monkeypatch.setattr(session, "make_backend", lambda *a: None)
    r = session.run_one(Scn(), "qemu", session.Options(trace_dir=tmp_path), "tcg")
    assert r.met and len(calls) == 2
    first = tmp_path / "unplug-coldplugged-qemu-tcg-attempt1"
    assert (first / "trace.jsonl").read_text() == "attempt 1\n"
    assert r.retried.endswith(f"retried once, the first attempt in {first}")
    assert (tmp_path / "unplug-coldplugged-qemu-tcg" / "retried.txt").exists()
