"""The matrix's table (harness.matrix): per scenario and cell what pytest's JUnit XML
said, the known-bug words told apart, and the wall time per cell and in all."""
from harness.matrix import format_table, parse_junit

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite>
<testcase name="smi-once[qemu]"/>
<testcase name="hotadd-runtime[qemu]"><skipped type="pytest.xfail" message="tcg-init-in-smm"/></testcase>
<testcase name="unplug-ascending-lost-sci[qemu]"><failure message="known bug apic-logical-delivery-hole expected on QEMU 11.1.3 but not reproduced"/></testcase>
<testcase name="tseg-1m-ovmf-hang[qemu]"><failure message="hang expected, pass got"/></testcase>
<testcase name="kvm-only[qemu]"><skipped type="pytest.skip" message="tcg"/></testcase>
</testsuite></testsuites>"""


def test_junit_statuses_and_table(tmp_path):
    p = tmp_path / "junit.xml"
    p.write_text(JUNIT)
    r = parse_junit(p)
    assert r == {"smi-once[qemu]": "pass", "hotadd-runtime[qemu]": "xfail",
                 "unplug-ascending-lost-sci[qemu]": "absent",
                 "tseg-1m-ovmf-hang[qemu]": "fail", "kvm-only[qemu]": "skip"}
    table = format_table(["a+x", "b+y"], {"a+x": r, "b+y": {"smi-once[qemu]": "pass"}},
                         {"a+x": 120.4, "b+y": 59.6}).splitlines()
    row = {line.split()[0]: line.split()[1:] for line in table[1:-2]}
    assert row["hotadd-runtime[qemu]"] == ["bug", "-"]
    assert row["unplug-ascending-lost-sci[qemu]"] == ["absent", "-"]
    assert row["tseg-1m-ovmf-hang[qemu]"] == ["FAIL", "-"]
    assert row["smi-once[qemu]"] == ["pass", "pass"]
    assert table[-2].split() == ["wall", "120", "s", "60", "s"]
    assert table[-1] == "2 cells in 180 s (3.0 min)"


def test_unreadable_junit_is_no_result(tmp_path):
    (tmp_path / "junit.xml").write_text("<not xml")
    assert parse_junit(tmp_path / "junit.xml") == {}
    assert parse_junit(tmp_path / "missing.xml") == {}
