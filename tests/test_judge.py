"""judge(): an outcome against a scenario's expectation. A known bug is met only with
its signature; the bug going away (pass) is not met."""
from harness.checks import CheckResult
from harness.outcome import Outcome
from harness.runner import judge
from harness.scenario import Expectation

LOST = Outcome("fail", step=7, op="unplug",
               checks=[CheckResult("cpu_removed", False, "slot 3 empty", "CPU still in slot 3")],
               message="cpu_removed: SCI (GSI 9, vector 34) ... Remote IRR stays set ...")


def test_expected_fail_with_its_message_is_met():
    met, why = judge(Expectation("fail", step=7, check="cpu_removed",
                                 message="Remote IRR stays set"), LOST)
    assert met, why
    assert why == "fail at step 7 (unplug) as expected"


def test_expected_fail_with_another_message_is_not_met():
    met, why = judge(Expectation("fail", step=7, check="cpu_removed",
                                 message="the guest did not eject"), LOST)
    assert not met
    assert "fail with a different message" in why and "the guest did not eject" in why


def test_expected_fail_of_another_check_or_step_is_not_met():
    assert not judge(Expectation("fail", step=7, check="cpus_present"), LOST)[0]
    assert not judge(Expectation("fail", step=5, check="cpu_removed"), LOST)[0]


def test_bug_gone_turns_red_and_says_so():
    met, why = judge(Expectation("fail", step=7, check="cpu_removed"), Outcome("pass"))
    assert not met
    assert "expected fail, got pass" in why and "update the scenario's expectation" in why


def test_hang_signature_is_compared():
    out = Outcome("hang", step=2, op="hotplug",
                  signature={"in_smm": [0, 1], "halted": [2], "evidence": "stall"})
    assert judge(Expectation("hang", step=2, in_smm=[1, 0], halted=[2]), out)[0]
    met, why = judge(Expectation("hang", step=2, in_smm=[0], halted=[2]), out)
    assert not met and "in_smm expected [0], observed [0, 1]" in why


HEAP = Expectation("crash", step=6, message=r"^$|corrupt|free\(\)|double free|malloc",
                   signal=["SIGSEGV", "SIGABRT"])


def crash(signal, message, source="qemu", status=None):
    return Outcome("crash", step=6, op="reset", signal=signal, message=message,
                   status=status, message_source=source)


def test_a_qemu_killed_from_outside_is_never_the_expected_crash():
    for sig in ("SIGKILL", "SIGTERM"):
        met, why = judge(HEAP, crash(sig, ""))
        assert not met and f"killed from outside ({sig}" in why
    # even an expectation naming no signal
    met, why = judge(Expectation("crash", message="^$"), crash("SIGKILL", ""))
    assert not met


def test_heap_corruption_crashes_as_seen_on_qemu_7_2_are_met():
    # recorded on QEMU 7.2.22: SIGSEGV with nothing on stderr; glibc's aborts
    assert judge(HEAP, crash("SIGSEGV", ""))[0]
    assert judge(HEAP, crash("SIGABRT", "free(): invalid next size"))[0]
    assert judge(HEAP, crash("SIGABRT", "corrupted double-linked list"))[0]


def test_a_crash_with_other_words_or_signal_is_not_met():
    met, why = judge(HEAP, crash("SIGABRT", "qemu: qemu_thread_join: Resource deadlock"))
    assert not met and "crash with a different message" in why
    met, why = judge(HEAP, crash(None, "", status=1))
    assert not met and "expected SIGSEGV or SIGABRT" in why and "exited with status 1" in why
    met, why = judge(HEAP, crash("SIGBUS", ""))
    assert not met and "was killed by SIGBUS" in why


def test_a_message_that_is_a_model_rule_is_not_taken_for_qemus_words():
    met, why = judge(HEAP, crash("SIGABRT", "QEMU dies at system_reset", "model rule (x)"))
    assert met and "QEMU's message not checked: this one is a model rule (x)" in why


def test_a_hang_needs_evidence_and_the_expected_kind_of_it():
    sig = {"in_smm": [], "halted": [1], "spinning": [0], "smbase_default": [0, 1]}
    out = Outcome("hang", step=1, op="boot", signature=sig)
    met, why = judge(Expectation("hang", step=1), out)
    assert not met and "without evidence" in why
    out.signature = {**sig, "evidence": "stall"}
    assert judge(Expectation("hang", step=1, spinning=[0], smbase_default=[0, 1]), out)[0]
    met, why = judge(Expectation("hang", step=1, evidence="reset-loop"), out)
    assert not met and "expected reset-loop, observed stall" in why
    met, why = judge(Expectation("hang", step=1, spinning=[0, 1]), out)
    assert not met and "spinning expected [0, 1], observed [0]" in why
    met, why = judge(Expectation("hang", step=1, smbase_default=[]), out)
    assert not met and "smbase_default" in why


def test_a_reset_loop_has_no_cpu_state_to_match():
    out = Outcome("hang", step=1, op="boot",
                  signature={"evidence": "reset-loop", "in_smm": None, "halted": None,
                             "spinning": None, "smbase_default": [0, 1]})
    assert judge(Expectation("hang", step=1, evidence="reset-loop",
                             smbase_default=[0, 1]), out)[0]
    met, why = judge(Expectation("hang", step=1, halted=[1]), out)
    assert not met and "halted expected [1], observed None" in why


def test_an_unexpected_outcome_shows_its_own_message():
    hang = Outcome("hang", step=1, op="boot", message="no progress over 6")
    met, why = judge(Expectation("pass"), hang)
    assert not met and why == "expected pass, got hang at step 1 (boot): no progress over 6"
    met, why = judge(Expectation("fail", check="cpus_present"), hang)
    assert why == "expected fail, got hang at step 1 (boot): no progress over 6"
    met, why = judge(Expectation("pass"), Outcome("error", step=2, op="x"))
    assert why == "expected pass, got error at step 2 (x)"
