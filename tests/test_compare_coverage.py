"""compare.py on hand-written traces: every kind of step difference, and the coverage
report's items (what was compared, what one side or both could not observe, notes)."""
import pytest

from harness.compare import compare, format_comparison
from harness.trace import TraceWriter


def cpu(i, smbase=0x1FFBD000, **kw):
    return {"index": i, "apic_id": i, "smbase": smbase, "in_smm": False, "halted": True,
            "online": True, "ucode_rev": 0x65, "vendor": "AuthenticAMD",
            "guest_msr_ucode": 0x65, "guest_ucode_rev": 0x65, "guest_ucode_sysfs": 0x65, **kw}


def snap(*cpus, tseg=True, source="migration", features=("broadcast",)):
    return {"cpus": list(cpus), "source": source,
            "tseg": {"base": 0x1F000000, "size": 1 << 24, "locked": True} if tseg else None,
            "smi_features": {"names": list(features)} if features is not None else {}}


def trace(tmp_path, name, steps, backend="model", qemu_version=None):
    info = {"qemu_version": qemu_version} if qemu_version else {}
    w = TraceWriter(tmp_path / f"{name}.jsonl", {"backend": backend, "info": info})
    for i, s in enumerate(steps, 1):
        w.step(i, s.get("op", "check"), s.get("args", {}), result=s.get("result"),
               error=s.get("error"), snapshot=s.get("snapshot"))
    w.close()
    return tmp_path / f"{name}.jsonl"


def pair(tmp_path, a, b, **kw):
    return compare(trace(tmp_path, "a", a, backend="qemu", qemu_version="7.2.22"),
                   trace(tmp_path, "b", b, **kw))


def test_agreeing_traces_list_every_field_compared(tmp_path):
    s = [{"snapshot": snap(cpu(0), cpu(1, 0x1FFBF000))}]
    c = pair(tmp_path, s, s)
    assert c.divergence is None
    assert set(c.coverage.compared) == {"outcome", "cpus", "apic_id", "smbase", "in_smm",
                                        "online", "ucode_rev", "vendor", "guest_msr_ucode",
                                        "guest_ucode_rev", "guest_ucode_sysfs",
                                        "tseg.base", "tseg.size",
                                        "tseg.locked", "smi_features"}
    assert c.coverage.unobserved == {} and c.coverage.notes == []
    text = format_comparison(c)
    assert text.splitlines()[:2] == ["traces agree", "compared:"]
    assert "not compared:" not in text


def test_nothing_compared_is_said(tmp_path):
    c = pair(tmp_path, [], [])
    assert c.coverage.lines() == ["compared:", "  nothing (no step both traces ran)"]


@pytest.mark.parametrize("a,b,field,left,right", [
    ({"op": "boot"}, {"op": "reset"}, "step", "boot {}", "reset {}"),
    ({"error": {"kind": "hang"}}, {}, "outcome", "hang", "ok"),
    ({"error": {"kind": "refused", "message": "no"}},
     {"error": {"kind": "refused", "message": "nope"}}, "refusal message", "no", "nope"),
    ({"error": {"kind": "check", "checks": [{"name": "x", "passed": False}]}},
     {"error": {"kind": "check", "checks": [{"name": "x", "passed": True}]}},
     "checks", {"x": False}, {"x": True}),
    ({"snapshot": snap(cpu(0))}, {"snapshot": snap(cpu(0), cpu(1))}, "cpus", [0], [0, 1]),
    ({"snapshot": snap(cpu(0))}, {"snapshot": snap(cpu(0, 0x1FFBF000))}, "smbase",
     0x1FFBD000, 0x1FFBF000),
    ({"snapshot": snap(cpu(0))}, {"snapshot": snap(cpu(0), features=["cpu_hotplug"])},
     "smi_features", ["broadcast"], ["cpu_hotplug"]),
])
def test_each_kind_of_difference(tmp_path, a, b, field, left, right):
    d = pair(tmp_path, [a], [b]).divergence
    assert (d.step, d.field, d.left, d.right) == (1, field, left, right)


def test_a_trace_that_runs_more_steps_diverges(tmp_path):
    d = pair(tmp_path, [{}], [{}, {}]).divergence
    assert (d.step, d.field, d.left, d.right) == (2, "steps run", 1, 2)


def test_a_field_neither_side_knows_and_a_missing_snapshot_are_listed(tmp_path):
    a = [{"snapshot": snap(cpu(0, online=None))}, {"snapshot": snap(cpu(0))}]
    b = [{"snapshot": snap(cpu(0, online=None))}, {}]
    c = pair(tmp_path, a, b)
    assert c.divergence is None
    assert c.coverage.unobserved[("online", "known to neither side")] == ["step 1 (check)"]
    assert c.coverage.unobserved[("snapshot", "not observable on model (no snapshot)")] \
        == ["step 2 (check)"]


def test_qmp_snapshots_say_why_and_a_value_may_not_change_unseen(tmp_path):
    qmp = snap(cpu(0, smbase=None), tseg=False, source="qmp", features=None)
    a = [{"snapshot": snap(cpu(0))}, {"op": "unplug", "args": {"slot": 1}},
         {"snapshot": qmp}]
    b = [{"snapshot": snap(cpu(0))}, {"op": "unplug", "args": {"slot": 1}},
         {"snapshot": snap(cpu(0))}]
    c = pair(tmp_path, a, b)
    assert c.divergence is None
    why = ("not observable on QEMU 7.2.22 (snapshot from QMP/HMP only: a migration after "
           "an unplug would crash or stall this QEMU)")
    assert c.coverage.unobserved[("smbase", why)] == [
        "step 3 (check) after the unplug at step 2"]
    b[2] = {"snapshot": snap(cpu(0, 0xDEAD0000))}
    d = pair(tmp_path, a, b).divergence
    assert (d.step, d.field, d.cpu, d.left, d.right) == (3, "smbase", 0, None, 0xDEAD0000)
    assert d.note == ("changed where QEMU 7.2.22 could not observe it (both saw "
                      "0x1ffbd000 at step 1 (check))")
    # a CPU neither side saw before: listed, nothing to hold it to
    a[2] = {"snapshot": snap(cpu(0, smbase=None), cpu(2, smbase=None), source="qmp")}
    b[2] = {"snapshot": snap(cpu(0), cpu(2, 0x1FFC1000))}
    assert pair(tmp_path, a, b).divergence is None


def test_a_before_snapshot_on_one_side_only_is_listed(tmp_path):
    a = [{"op": "unplug", "result": {"before": snap(cpu(0))}}]
    b = [{"op": "unplug", "result": {"removed": True}}]
    c = pair(tmp_path, a, b)
    assert c.divergence is None
    assert c.coverage.unobserved[("snapshot", "not observable on model (no snapshot)")] \
        == ["step 1 (before the unplug)"]
    b = [{"op": "unplug", "result": {"before": snap(cpu(0, 0x1000))}}]
    d = pair(tmp_path, a, b).divergence
    assert (d.field, d.left, d.right) == ("smbase", 0x1FFBD000, 0x1000)


def crash(signal, message, source="qemu", status=-6):
    return {"error": {"kind": "crash", "signal": signal, "message": message,
                      "message_source": source, "status": status}}


def test_crashes_compare_qemus_words_only(tmp_path):
    qemu = crash("SIGABRT", "qemu: qemu_thread_join: Resource deadlock avoided")
    model = crash("SIGABRT", "qemu_thread_join: Resource deadlock avoided")
    c = pair(tmp_path, [qemu], [model])
    assert c.divergence is None and "crash message" in c.coverage.compared
    d = pair(tmp_path, [qemu], [crash("SIGABRT", "something else")]).divergence
    assert d.field == "crash message"
    d = pair(tmp_path, [qemu], [crash("SIGSEGV", "qemu_thread_join")]).divergence
    assert (d.field, d.left, d.right) == ("crash signal", "SIGABRT", "SIGSEGV")
    d = pair(tmp_path, [crash(None, "", status=1)], [crash(None, "", status=2)]).divergence
    assert (d.field, d.left, d.right) == ("crash signal", 1, 2)
    c = pair(tmp_path, [crash("SIGSEGV", "")], [crash("SIGABRT", "dies", "model rule (x)")])
    assert c.divergence is None
    assert c.coverage.notes == ["crash message and signal at step 1 (check): model's is "
                                "a model rule (x), not QEMU's words"]


def hang(evidence="stall", **sig):
    signature = {"evidence": evidence, "in_smm": [], "halted": [1], "spinning": [0],
                 "smbase_default": [], **sig}
    return {"error": {"kind": "hang", "signature": signature,
                      "diagnosis": {"cpus": [cpu(0, in_smm=False, halted=False),
                                             cpu(1, 0x1FFBF000)]}}}


def test_hang_signatures_and_states(tmp_path):
    assert pair(tmp_path, [hang()], [hang()]).divergence is None
    for f, v in (("evidence", "reset-loop"), ("spinning", []), ("smbase_default", [0])):
        d = pair(tmp_path, [hang()], [hang(**{f: v})]).divergence
        assert d.field == f"hang.{f}"
    other = hang()
    other["error"]["diagnosis"]["cpus"][0]["halted"] = True
    d = pair(tmp_path, [hang()], [other]).divergence
    assert (d.field, d.cpu) == ("halted", 0)


def test_one_instant_of_a_reset_loop_is_not_compared(tmp_path):
    a, b = hang("reset-loop"), hang("reset-loop")
    b["error"]["diagnosis"]["cpus"][0]["in_smm"] = True
    c = pair(tmp_path, [a], [b])
    assert c.divergence is None
    assert c.coverage.notes == ["in_smm, halted at step 1 (check): one instant of a "
                                "reset loop, not compared"]
    b["error"]["diagnosis"]["cpus"][0]["smbase"] = 0x30000
    assert pair(tmp_path, [a], [b]).divergence.field == "smbase"


def test_an_older_signature_without_the_new_fields_is_listed(tmp_path):
    old = {"error": {"kind": "hang", "signature": {"in_smm": [], "halted": [1]}}}
    c = pair(tmp_path, [hang()], [old])
    assert c.divergence is None
    assert ("hang.spinning", "not in both signatures (an older trace)") in \
        c.coverage.unobserved


def test_notes_alone_open_the_not_compared_list():
    from harness.compare import Coverage
    c = Coverage()
    c.saw("smbase", "step 1 (check)")
    c.note("something")
    assert c.lines() == ["compared:", "  smbase: step 1 (check)", "not compared:",
                         "  something"]


def test_a_hang_snapshot_is_compared_in_full(tmp_path):
    a, b = hang(), hang()
    a["error"]["diagnosis"]["snapshot"] = snap(cpu(0), cpu(1, 0x1FFBF000))
    b["error"]["diagnosis"]["snapshot"] = snap(cpu(0), cpu(1, 0x1FFBF000), tseg=False)
    c = pair(tmp_path, [a], [b])
    assert c.divergence is None
    assert ("tseg.base", "not reported by model") in c.coverage.unobserved


def test_who_is_qemu_only_for_a_qemu_trace(tmp_path):
    qmp = snap(cpu(0, smbase=None), source="qmp")
    c = compare(trace(tmp_path, "a", [{"snapshot": qmp}], backend="model",
                      qemu_version="7.2.22"),
                trace(tmp_path, "b", [{"snapshot": snap(cpu(0))}], backend="qemu"))
    assert set(why for _, why in c.coverage.unobserved) == {
        "not observable on model (snapshot from QMP/HMP only: a migration after an "
        "unplug would crash or stall this QEMU)"}


def test_the_side_without_a_snapshot_is_named(tmp_path):
    c = pair(tmp_path, [{}], [{"snapshot": snap(cpu(0))}])
    assert c.coverage.unobserved == {
        ("snapshot", "not observable on QEMU 7.2.22 (no snapshot)"): ["step 1 (check)"]}
    c = pair(tmp_path, [{"op": "unplug", "result": {}}],
             [{"op": "unplug", "result": {"before": snap(cpu(0))}}])
    assert ("snapshot", "not observable on QEMU 7.2.22 (no snapshot)") in \
        c.coverage.unobserved


def test_same_signal_is_enough_when_a_status_is_missing(tmp_path):
    c = pair(tmp_path, [crash("SIGABRT", "x", status=-6)],
             [crash("SIGABRT", "x", status=None)])
    assert c.divergence is None


def test_the_divergence_report_formats_values_and_aligns_its_tables(tmp_path):
    from harness.compare import format_divergence
    d = pair(tmp_path, [{"snapshot": snap(cpu(0, apic_id=256))}],
             [{"snapshot": snap(cpu(0, apic_id=255))}]).divergence
    first = format_divergence(d).splitlines()[0]
    assert first.endswith("CPU 0 apic_id: qemu 0x100 != model 255")
    d = pair(tmp_path, [{"snapshot": snap(cpu(0), cpu(1))}],
             [{"snapshot": snap(cpu(0))}]).divergence
    lines = format_divergence(d).splitlines()
    assert d.field == "cpus" and len(lines) == 6   # head, names, header, 2 CPUs, TSEG
    bars = {line.index("|") for line in lines[1:]}
    assert len(bars) == 1, lines
    # one side without any snapshot still shows both tables
    d = pair(tmp_path, [hang()], [{}]).divergence
    assert "(no snapshot)" in format_divergence(d)
