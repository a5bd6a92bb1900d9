"""Known bugs are scoped to the builds that have them; a scenario's expectation follows."""
from pathlib import Path

import pytest

from harness import known_bugs as kb
from harness import scenario
from harness.checks import CheckResult
from harness.model.qemu_defects import NONE, for_build
from harness.outcome import Outcome
from harness.runner import judge

SCN = Path(__file__).resolve().parents[1] / "scenarios"


@pytest.mark.parametrize("version,inside", [
    ("7.2.22", True), ("8.2.0", True), ("9.0.0", False), ("10.0.2", False), ("11.1.3", False)])
def test_version_range(version, inside):
    assert (version in kb.VersionRange(">=7.2, <9.0")) is inside


def test_bad_range_is_refused():
    with pytest.raises(ValueError, match="bad version range"):
        kb.VersionRange("before 9")


def test_lost_sci_expected_only_where_qemu_has_it():
    scn = scenario.load(SCN / "unplug-ascending-lost-sci.yaml")
    old = scn.expectation("tcg", "7.2.22")
    assert (old.outcome, old.bug) == ("fail", "apic-logical-delivery-hole")
    new = scn.expectation("tcg", "11.1.3")
    assert (new.outcome, new.absent_bug) == ("pass", "apic-logical-delivery-hole")
    assert scn.expectation("kvm", "7.2.22").outcome == "pass"
    assert scn.expectation("tcg", None).bug == "apic-logical-delivery-hole"


def test_verdicts_name_the_bug_and_the_build():
    scn = scenario.load(SCN / "unplug-ascending-lost-sci.yaml")
    lost = Outcome("fail", step=7, op="unplug",
                   checks=[CheckResult("cpu_removed", False, "slot 3 empty", "CPU in slot 3")],
                   message="SCI ... Remote IRR stays set, no further ACPI event")
    met, why = judge(scn.expectation("tcg", "7.2.22"), lost, "7.2.22")
    assert met and why.startswith("known bug apic-logical-delivery-hole reproduced on "
                                  "QEMU 7.2.22")
    met, why = judge(scn.expectation("tcg", "7.2.22"), Outcome("pass"), "7.2.22")
    assert not met and "expected on QEMU 7.2.22" in why and "not reproduced" in why
    met, why = judge(scn.expectation("tcg", "11.1.3"), Outcome("pass"), "11.1.3")
    assert met and why.startswith("known bug apic-logical-delivery-hole not present on "
                                  "QEMU 11.1.3")
    met, why = judge(scn.expectation("tcg", "11.1.3"), lost, "11.1.3")
    assert not met


def test_model_defects_follow_the_qemu_version():
    old = for_build("tcg", "7.2.22")
    assert old.logical_delivery_stops_at_apic_hole and old.heap_corrupted_by_unplug
    assert old.eject_aborts_single_threaded_tcg
    new = for_build("tcg", "11.1.3")
    assert new.eject_aborts_single_threaded_tcg
    assert not new.logical_delivery_stops_at_apic_hole and not new.heap_corrupted_by_unplug
    assert for_build("kvm", "11.1.3") == NONE


def test_every_scenario_bug_is_known():
    for f in scenario.discover([SCN]):
        for e in scenario.load(f).expect.values():
            if e.outcome != "pass" and e.bug:
                assert e.bug in kb.BY_NAME


def test_every_model_rule_says_what_it_rests_on_as_its_bug_does():
    from harness.model.qemu_defects import RESTS_ON
    for bug in kb.BUGS:
        assert bug.rests_on in ("mechanism", "observation")
        if bug.model_defect:
            basis, why = RESTS_ON[bug.model_defect]
            assert basis == bug.rests_on, bug.name
            assert why
    # a mechanism names the code it mirrors
    for bug in kb.BUGS:
        if bug.rests_on == "mechanism":
            assert ".c " in bug.evidence or ".c:" in bug.evidence, bug.name
