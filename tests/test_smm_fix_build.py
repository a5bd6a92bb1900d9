"""The source-built QEMU with our SMM fix series: how the harness knows such a build
(its --version), which known bugs it is free of, which CPU rules the model then uses,
and the pure parts of building it (the .dsc, the cache key, a stale cache)."""
from pathlib import Path

import pytest

from harness import known_bugs as kb
from harness import scenario, source_build
from harness.builds import catalog_entry, pick_version
from harness.model import cpu as mcpu
from harness.qemu.process import version_markers

ROOT = Path(__file__).resolve().parents[1]
SCN = ROOT / "scenarios"

# the first line of --version of the build, as `builds fetch qemu-7.2-smm-fix` made it
FIXED = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+smm-fix)"
DEBIAN = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"


def test_the_fix_marker_is_read_from_the_package_version():
    assert version_markers(FIXED + "\nCopyright (c) 2003-2022 Fabrice Bellard") == "+smm-fix"
    assert version_markers(DEBIAN) == ""
    assert version_markers("QEMU emulator version 11.1.3") == ""
    # only markers of our series count, not any "+word" of a Debian version
    assert version_markers("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)") == ""


def test_a_fixed_build_is_free_of_exactly_the_bug_its_series_fixes():
    init = kb.get("tcg-init-in-smm")
    assert init.affects("tcg", "7.2.22")
    assert not init.affects("tcg", "7.2.22+smm-fix")
    assert init.affects("tcg", None)        # unknown build: expect the bug, see it go
    # the other bugs of QEMU 7.2 stay
    assert kb.get("unplug-heap-corruption").affects("tcg", "7.2.22+smm-fix")
    assert kb.get("apic-logical-delivery-hole").affects("tcg", "7.2.22+smm-fix")
    assert kb.fix_markers("7.2.22+smm-fix") == {"smm-fix"}


def test_hotadd_expectation_follows_the_build():
    scn = scenario.load(SCN / "hotadd-runtime.yaml")
    assert scn.expectation("tcg", "7.2.22").outcome == "hang"
    e = scn.expectation("tcg", "7.2.22+smm-fix")
    assert (e.outcome, e.absent_bug) == ("pass", "tcg-init-in-smm")
    cycles = scenario.load(SCN / "hotadd-unplug-cycles.yaml")
    e = cycles.expectation("tcg", "7.2.22+smm-fix")
    assert (e.outcome, e.bug, e.step) == ("crash", "unplug-heap-corruption", 7)


def test_the_model_takes_the_rules_of_the_build():
    assert mcpu.semantics_for_build("tcg", "7.2.22") is mcpu.TCG
    assert mcpu.semantics_for_build("tcg", None) is mcpu.TCG
    fixed = mcpu.semantics_for_build("tcg", "7.2.22+smm-fix")
    # one rule per patch of the series, each as KVM has it
    assert fixed.init_latched_in_smm and not fixed.smi_wakes_wait_for_sipi \
        and not fixed.init_discards_pending_smi
    assert mcpu.semantics_for_build("kvm", "7.2.22") is mcpu.KVM


DSC = """Format: 3.0 (quilt)
Source: qemu
Version: 1:7.2+dfsg-7+deb12u18
Checksums-Sha256:
 91aca71520040edc40b8d437aa3004dae614f58e286cf653ee8996c07af2962f 23523172 qemu_7.2+dfsg.orig.tar.xz
 28a1c86310ee53b6bf1854cffe6f6be6ed29a08db7d05759f8ac57b8d6a6cb2f 405636 qemu_7.2+dfsg-7+deb12u18.debian.tar.xz
Files:
 0123 23523172 qemu_7.2+dfsg.orig.tar.xz
"""


def test_dsc_checksums_are_read():
    assert source_build.dsc_files(DSC) == {
        "qemu_7.2+dfsg.orig.tar.xz":
            "91aca71520040edc40b8d437aa3004dae614f58e286cf653ee8996c07af2962f",
        "qemu_7.2+dfsg-7+deb12u18.debian.tar.xz":
            "28a1c86310ee53b6bf1854cffe6f6be6ed29a08db7d05759f8ac57b8d6a6cb2f"}


def test_source_versions_are_picked_from_sources_lines_only():
    madison = ("      qemu | 1:7.2+dfsg-7+deb12u18 | http://m bookworm/main Sources\n"
               "      qemu | 1:8.0+dfsg-1 | http://m bookworm/main Sources\n"
               "      qemu | 1:7.2+dfsg-7+deb12u20 | http://m bookworm/main amd64 Packages\n")
    assert pick_version(madison, "qemu", "7.2", source=True) == "1:7.2+dfsg-7+deb12u18"
    assert pick_version(madison, "qemu", "7.2") == "1:7.2+dfsg-7+deb12u20"


SUBJECTS = ("hold SMI while an AP waits for SIPI", "keep a pending SMI across INIT",
            "latch INIT while an x86 CPU is in SMM")


@pytest.mark.parametrize("name", ["qemu-7.2-smm-fix", "qemu-10.2-smm-fix"])
def test_each_series_has_the_three_patches_in_order(name):
    entry = catalog_entry(name)
    assert (entry.method, entry.marker) == ("source", "smm-fix")
    files = source_build.patches(entry.patches)
    assert len(files) == 3
    for p, subject in zip(files, SUBJECTS):
        text = p.read_text()
        header = text.split("\n\n", 1)[0].replace("\n ", " ")    # unfolded
        assert subject in header, p.name                             # the Subject:
        assert "Signed-off-by: " in text and "\n---\n" in text, p.name


def test_the_cache_key_is_content(tmp_path, monkeypatch):
    monkeypatch.setattr(source_build, "CONTRIB", tmp_path)
    (tmp_path / "x").mkdir()
    patch = tmp_path / "x" / "0001-a.patch"
    patch.write_text("one\n")
    files = {"a.dsc": "11", "a.orig.tar.xz": "22"}
    record = {"patches_sha256": source_build.series_digest("x")}
    key = source_build.content_key(files, "x")
    assert source_build.stale(record, "x") is None
    assert source_build.content_key({**files, "a.dsc": "12"}, "x") != key
    patch.write_text("two\n")
    assert source_build.content_key(files, "x") != key
    assert source_build.stale(record, "x") == "its patches changed"
    patch.unlink()
    assert "no patch series" in source_build.stale(record, "x")


def test_pkgversion_carries_the_marker():
    assert source_build.pkgversion("1:7.2+dfsg-7+deb12u18", "smm-fix") == \
        "Debian 1:7.2+dfsg-7+deb12u18+smm-fix"
    assert version_markers(f"QEMU emulator version 7.2.22 "
                           f"({source_build.pkgversion('1:7.2+dfsg-7', 'smm-fix')})") \
        == "+smm-fix"


@pytest.mark.parametrize("text,problem", [
    ("hotplug: [2]", "two or more CPUs"),
    ("hotplug: [2, 2]", "slot listed twice"),
    ("hotplug: [2, 9]", "out of range"),
])
def test_back_to_back_hotplug_is_validated(tmp_path, text, problem):
    f = tmp_path / "s.yaml"
    f.write_text(f"purpose: x\nmachine: {{cpus: 2, maxcpus: 4}}\nsteps:\n  - boot\n  - {text}\n")
    with pytest.raises(Exception, match=problem) as e:
        scenario.load(f)
    assert "s.yaml:5" in str(e.value)


def test_the_meson_a_source_asks_for_is_read(tmp_path):
    # QEMU 10.2.2's meson.build begins so; 7.2's asks for 0.61.3
    (tmp_path / "meson.build").write_text(
        "project('qemu', ['c'], meson_version: '>=1.5.0',\n"
        "        default_options: ['warning_level=1'])\n")
    assert source_build.meson_requirement(tmp_path) == (1, 5, 0)
    (tmp_path / "meson.build").write_text("project('qemu', ['c'])\n")
    assert source_build.meson_requirement(tmp_path) is None
    assert source_build.meson_requirement(tmp_path / "missing") is None


def test_a_patch_that_does_not_apply_stops_the_build_named(tmp_path, monkeypatch):
    monkeypatch.setattr(source_build, "CONTRIB", tmp_path / "contrib")
    series = tmp_path / "contrib" / "s"
    series.mkdir(parents=True)
    tree = tmp_path / "src"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "f.c").write_text("int x = 1;\n")
    (series / "0001-good.patch").write_text(
        "--- a/a/f.c\n+++ b/a/f.c\n@@ -1 +1 @@\n-int x = 1;\n+int x = 2;\n")
    (series / "0002-stale.patch").write_text(
        "--- a/a/f.c\n+++ b/a/f.c\n@@ -1 +1 @@\n-int y = 1;\n+int y = 2;\n")
    said = []
    with pytest.raises(source_build.HarnessError) as e:
        source_build.apply_series("qemu-x", tree, "s", tmp_path / "patch.log", said.append)
    assert str(e.value).startswith("qemu-x: 0002-stale.patch does not apply to the source")
    assert "\n" not in str(e.value)
    assert (tree / "a" / "f.c").read_text() == "int x = 2;\n"       # the first one applied
    assert said == ["builds: qemu-x: applying 0001-good.patch",
                    "builds: qemu-x: applying 0002-stale.patch"]
