"""judge(): an outcome against a scenario's expectation. A known bug is met only with
its signature; the bug going away (pass) is not met."""
from harness.runner import judge
from harness.scenario import Expectation

LOST = {"outcome": "fail", "step": 7, "op": "unplug", "failed_checks": ["cpu_removed"],
        "message": "cpu_removed: SCI (GSI 9, vector 34) ... Remote IRR stays set ..."}


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
    met, why = judge(Expectation("fail", step=7, check="cpu_removed"), {"outcome": "pass"})
    assert not met
    assert "expected fail, got pass" in why and "update the scenario's expectation" in why


def test_hang_signature_is_compared():
    out = {"outcome": "hang", "step": 2, "op": "hotplug",
           "signature": {"in_smm": [0, 1], "halted": [2]}}
    assert judge(Expectation("hang", step=2, in_smm=[1, 0], halted=[2]), out)[0]
    met, why = judge(Expectation("hang", step=2, in_smm=[0], halted=[2]), out)
    assert not met and "in_smm expected [0], observed [0, 1]" in why
