"""The booted-machine cache without QEMU: what the key depends on (content, never paths),
entries written atomically when workers race, which scenarios may resume
(harness/bootpolicy.py), the backend's choice of boot, and the setting."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from harness import bootpolicy, scenario, settings
from harness.errors import ConfigError
from harness.firmware import FirmwareImages
from harness.machine import CpuPlug, MachineConfig
from harness.qemu import bootcache
from harness.qemu.backend import QemuBackend

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def files(tmp_path):
    """Stand-ins for the QEMU binary, firmware images and guest image (content only)."""
    d = tmp_path / "in"
    d.mkdir()
    out = {}
    for name in ("qemu", "code.fd", "vars.fd", "vmlinuz", "initrd"):
        (d / name).write_bytes(name.encode() * 100)
        out[name] = d / name
    return out


def inputs(files, machine=None, **over):
    fw = FirmwareImages(code=files["code.fd"], vars_template=files["vars.fd"])
    args = dict(binary=files["qemu"], qemu_version="7.2.22",
                machine=machine or MachineConfig(cpus=2, maxcpus=4), firmware=fw,
                accel="tcg", kernel=files["vmlinuz"], initrd=files["initrd"],
                cmdline="console=ttyS0")
    args.update(over)
    return bootcache.key_inputs(**args)


def key(files, machine=None, **over):
    return bootcache.key_of(inputs(files, machine, **over))


def test_key_is_stable_and_has_no_run_paths(files):
    a, b = inputs(files), inputs(files)
    assert a == b and bootcache.key_of(a) == bootcache.key_of(b)
    text = json.dumps(a)
    for placeholder in ("@VARS", "@CONSOLE", "@QMP", "@DEBUGCON", "@QEMU", "@CODE:",
                        "@KERNEL:", "@INITRD:"):
        assert placeholder in text
    assert str(files["qemu"].parent) not in text     # no path of any input file


@pytest.mark.parametrize("change", [
    {"cpus": 1}, {"maxcpus": 8}, {"memory_mib": 1024}, {"tseg_mbytes": 8},
    {"cpu_model": "kvm64"}, {"cpu_props": {"ucode-rev": 0x01000070}},
    {"tcg_thread": "multi"}, {"extra_args": ["-rtc", "base=utc"]},
    {"smi_features": {"broadcast": True, "cpu_hotplug": False, "cpu_hotunplug": False}},
], ids=lambda c: next(iter(c)))
def test_every_machine_argument_is_in_the_key(files, change):
    base = MachineConfig(cpus=2, maxcpus=4)
    assert key(files, replace(base, **change)) != key(files, base)


@pytest.mark.parametrize("name", ["qemu", "code.fd", "vars.fd", "vmlinuz", "initrd"])
def test_key_follows_each_input_files_content(files, name):
    before = key(files)
    files[name].write_bytes(b"rebuilt" * 10)
    assert key(files) != before


def test_coldplugs_are_in_the_key_in_order_with_their_props(files):
    k = key(files)
    one_two = key(files, coldplugs=[CpuPlug(1), CpuPlug(2)])
    assert inputs(files, coldplugs=[]) == inputs(files)      # no cold-plug: keys as before
    assert len({k, one_two, key(files, coldplugs=[CpuPlug(2), CpuPlug(1)]),
                key(files, coldplugs=[CpuPlug(1)]),
                key(files, coldplugs=[CpuPlug(1, {"ucode-rev": 7}), CpuPlug(2)])}) == 5
    assert key(files, coldplugs=[CpuPlug(1), CpuPlug(2)]) == one_two


def test_key_follows_version_accel_and_kernel_cmdline(files):
    k = key(files)
    assert key(files, qemu_version="7.2.22+smm-fix") != k
    assert key(files, accel="kvm") != k
    assert key(files, cmdline="console=ttyS0 quiet") != k


def test_same_content_elsewhere_is_the_same_key(files, tmp_path):
    """Keyed by content: a copy of the same build in another directory hits the entry."""
    other = tmp_path / "copy"
    other.mkdir()
    moved = {}
    for n, p in files.items():
        moved[n] = other / n
        moved[n].write_bytes(p.read_bytes())
    assert key(moved) == key(files)


def test_wrapper_script_covers_the_binary_it_execs(tmp_path, files):
    """A fetched build's qemu-system-x86_64 is a #!/bin/sh wrapper: the real binary
    behind it is part of the key, so a rebuilt binary is another key."""
    real = tmp_path / "root" / "usr" / "bin" / "qemu-system-x86_64"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"\x7fELF one")
    wrapper = tmp_path / "bin" / "qemu-system-x86_64"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\n# a build\nQEMU_MODULE_DIR=/nonexistent\n"
                       f"exec {real} -L /nonexistent \"$@\"\n")
    before = key(files, binary=wrapper)
    real.write_bytes(b"\x7fELF two")
    assert key(files, binary=wrapper) != before


def test_file_digest_is_remembered_but_sees_a_rewrite(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"a")
    d1 = bootcache.file_digest(f)
    assert bootcache.file_digest(f) == d1
    f.write_bytes(b"bb")                                   # size (and mtime) change
    assert bootcache.file_digest(f) != d1


# --- entries ----------------------------------------------------------------------------

def _stage(cache, key, tag):
    d = cache.staging(key)
    for n in (bootcache.STREAM, bootcache.VARS):
        (d / n).write_text(tag)
    (d / bootcache.META).write_text(json.dumps({"tag": tag}))
    return d


def test_racing_writers_first_publish_wins(tmp_path):
    """Two xdist workers saving one key: the first rename wins, the second's copy is
    discarded and it gets the winner's entry; no reader ever sees a partial entry."""
    cache = bootcache.BootCache(tmp_path / "boot")
    a, b = _stage(cache, "k1", "A"), _stage(cache, "k1", "B")
    assert cache.lookup("k1") is None                      # staging is invisible
    ea = cache.publish(a, "k1")
    eb = cache.publish(b, "k1")
    assert ea.dir == eb.dir and eb.meta() == {"tag": "A"}
    assert not b.exists()
    assert [e.key for e in cache.entries()] == ["k1"]


def test_incomplete_entry_is_no_entry(tmp_path):
    cache = bootcache.BootCache(tmp_path / "boot")
    d = cache.root / "k2"
    d.mkdir(parents=True)
    (d / bootcache.STREAM).write_text("x")                 # no VARS, no meta
    assert cache.lookup("k2") is None


def test_invalidate_and_clear(tmp_path):
    cache = bootcache.BootCache(tmp_path / "boot")
    cache.publish(_stage(cache, "k3", "A"), "k3")
    cache.publish(_stage(cache, "k4", "A"), "k4")
    _stage(cache, "k5", "left over")                       # a killed writer's staging
    cache.invalidate("k3", "did not load")
    assert cache.lookup("k3") is None and cache.lookup("k4") is not None
    n, size = cache.clear()
    assert n == 1 and size > 0
    assert list(cache.root.iterdir()) == []


# --- which scenarios may resume ----------------------------------------------------------

def _load(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return scenario.load(p)


def test_default_is_a_fresh_boot(tmp_path):
    s = _load(tmp_path, "purpose: x\nsteps: [boot]\n")
    assert s.boot == bootpolicy.FRESH and not bootpolicy.may_resume(s)


def test_resume_ok_where_the_boot_is_a_precondition(tmp_path):
    s = _load(tmp_path, "purpose: x\nmachine: {cpus: 2, maxcpus: 4}\nboot: resume-ok\n"
              "steps: [boot, {hotplug: 2}]\n"
              "expect: {tcg: {bug: tcg-init-in-smm, outcome: hang, step: 2}, kvm: pass}\n")
    assert bootpolicy.may_resume(s)


def test_resume_problems_pure():
    S = scenario.Step
    E = scenario.Expectation
    boot_first = [S("boot", {}, 3), S("hotplug", {"slot": 2}, 4)]
    assert bootpolicy.resume_problems(boot_first, {}) == []
    assert bootpolicy.resume_problems(boot_first, {"tcg": E("hang", step=2, line=9)}) == []
    assert bootpolicy.resume_problems(boot_first, {"tcg": E("fail", check="x", line=9)}) == []
    # cold-plugs make the machine (they are in its key): the boot is step 3 then
    plugged = [S("coldplug", {"slot": 1}, 3), S("coldplug", {"slot": 2}, 4),
               S("boot", {}, 5), S("unplug", {"slot": 2}, 6)]
    assert bootpolicy.resume_problems(plugged, {"tcg": E("fail", step=4, line=9)}) == []
    (line, k, why), = bootpolicy.resume_problems(plugged, {"tcg": E("hang", step=3,
                                                                    line=9)})
    assert (line, k) == (9, "expect.tcg") and "at the boot step (step 3)" in why
    (line, k, why), = bootpolicy.resume_problems(
        [S("coldplug", {"slot": 1}, 3), S("wait", {"seconds": 1}, 4), S("boot", {}, 5)], {})
    assert (line, k) == (4, "steps[2]") and "wait before the boot" in why
    (line, k, why), = bootpolicy.resume_problems(
        boot_first, {"any": E("hang", step=2, bug="tcg-init-in-smm",
                              otherwise=E("hang", step=1, line=12), line=9)})
    assert (line, k) == (12, "expect.otherwise") and "boot step" in why
    (line, k, why), = bootpolicy.resume_problems(boot_first, {"kvm": E("crash", line=7)})
    assert (line, k) == (7, "expect.kvm") and "no particular step" in why
    assert bootpolicy.resume_problems([S("snapshot", {}, 3), S("boot", {}, 4)], {})


def test_scenario_set_resumes_only_where_boot_is_no_verdict():
    """Over the real scenario set: no scenario that resumes has anything before its
    boot or any expectation at it, and the boot, tseg and cold-plug scenarios (whose
    boot is what they look at) all boot fresh."""
    scns = scenario.load_all(scenario.discover([ROOT / "scenarios"]))
    for s in scns:
        if s.boot == bootpolicy.RESUME_OK:
            assert bootpolicy.resume_problems(s.steps, s.expect) == [], s.name
        if s.name.startswith(("boot-", "tseg-", "memory-", "coldplug-", "nosmm",
                              "microcode-")):
            assert s.boot == bootpolicy.FRESH, s.name
    assert any(s.boot == bootpolicy.RESUME_OK for s in scns)


# --- the backend's choice ------------------------------------------------------------------

class _Image:
    def __init__(self, files):
        self.kernel, self.initrd, self.cmdline = files["vmlinuz"], files["initrd"], "c"


def _lookup(backend, policy, files):
    fw = FirmwareImages(code=files["code.fd"], vars_template=files["vars.fd"])
    return backend._cache_lookup(policy, files["qemu"], "7.2.22",
                                 MachineConfig(cpus=2, maxcpus=4), fw, "tcg", _Image(files))


def test_backend_never_resumes_a_boot_under_test(files, cache_root):
    """With an entry for exactly this machine in the cache, a fresh scenario (and a
    caller that is no scenario) still boots fresh; only resume-ok gets the entry."""
    b = QemuBackend()
    assert _lookup(b, "resume-ok", files) is None           # cold: boots, then saves
    assert b._boot_note.startswith("fresh (not in the boot cache yet")
    cache = bootcache.BootCache()
    cache.publish(_stage(cache, b._cache_key, "A"), b._cache_key)
    assert _lookup(QemuBackend(), "resume-ok", files).key == b._cache_key
    fresh = QemuBackend()
    assert _lookup(fresh, "fresh", files) is None
    assert fresh._boot_note == "fresh (the boot is under test)" and fresh._cache is None
    none = QemuBackend()
    assert _lookup(none, None, files) is None and none._cache is None
    off = QemuBackend(boot_cache="off")
    assert _lookup(off, "resume-ok", files) is None
    assert off._boot_note == "fresh (boot cache off)"


def test_a_machine_another_run_is_booting_is_waited_for_then_resumed(files, cache_root,
                                                                     monkeypatch):
    """Two workers, one machine: the first to miss the cache claims its key and boots;
    the second waits for that claim and then resumes what the first saved, instead of
    booting the same machine at the same time (on two cores: as long as both in turn)."""
    import threading
    first = QemuBackend()
    assert _lookup(first, "resume-ok", files) is None and first._claim is not None
    key = first._cache_key

    def boot_and_save():                  # what the first run's _save_boot does
        time.sleep(0.6)
        cache = bootcache.BootCache()
        cache.publish(_stage(cache, key, "A"), key)
        first._release_claim()
    t = threading.Thread(target=boot_and_save)
    t.start()
    t0 = time.monotonic()
    second = QemuBackend()
    entry = _lookup(second, "resume-ok", files)
    t.join()
    assert entry is not None and entry.key == key and time.monotonic() - t0 >= 0.5
    assert second._claim is None                       # resumed: nothing to save


def test_a_claim_not_given_back_in_time_means_a_fresh_boot(files, cache_root, monkeypatch):
    monkeypatch.setenv("SMM_HARNESS_BOOT_TIMEOUT", "0.5")
    first = QemuBackend()
    assert _lookup(first, "resume-ok", files) is None
    second = QemuBackend()
    t0 = time.monotonic()
    assert _lookup(second, "resume-ok", files) is None
    assert 0.4 <= time.monotonic() - t0 < 3 and second._claim is None
    assert second._boot_note.startswith("fresh (not in the boot cache yet")
    first.close()                                      # a closed run gives its claim back
    third = QemuBackend()
    assert _lookup(third, "resume-ok", files) is None and third._claim is not None
    third.close()


def test_boot_cache_setting(monkeypatch):
    monkeypatch.delenv("SMM_HARNESS_BOOT_CACHE", raising=False)
    assert settings.boot_cache() is True
    monkeypatch.setenv("SMM_HARNESS_BOOT_CACHE", "off")
    assert settings.boot_cache() is False
    assert settings.boot_cache("on") is True               # the option wins
    monkeypatch.setenv("SMM_HARNESS_BOOT_CACHE", "maybe")
    with pytest.raises(ConfigError, match="SMM_HARNESS_BOOT_CACHE: expected on or off"):
        settings.boot_cache()


def test_only_a_resumable_multi_threaded_tcg_machine_boots_single_threaded():
    """QemuBackend._boot_machine: a multi-threaded TCG machine whose boot may resume
    boots single-threaded (and goes on multi-threaded from the saved machine); a boot
    under test, another accelerator, a single-threaded machine or the cache off boot
    the machine as it says."""
    from harness.machine import MachineConfig
    from harness.qemu.backend import QemuBackend
    multi, single = MachineConfig(cpus=3, tcg_thread="multi"), MachineConfig(cpus=3)
    b = QemuBackend(boot_cache="on")
    booted = b._boot_machine("resume-ok", multi, "tcg")
    assert booted.tcg_thread == "single" and booted.cpus == 3
    assert b._boot_machine("fresh", multi, "tcg") is multi
    assert b._boot_machine(None, multi, "tcg") is multi
    assert b._boot_machine("resume-ok", multi, "kvm") is multi
    assert b._boot_machine("resume-ok", single, "tcg") is single
    assert QemuBackend(boot_cache="off")._boot_machine("resume-ok", multi, "tcg") is multi
