"""The booted-machine cache on real QEMU: a scenario whose boot is under test never
starts from the cache, even with an entry for its exact machine there; a resumed
scenario reaches the same outcome as a fresh one, with the same state (traces compared
step by step), and its guest still works (the agent answers, an ACPI hot-add relocates
and onlines a CPU on ``qemu-7.2-smm-fix``, where the runtime hot-add succeeds).

Each test uses its own cache directory, so it starts cold and leaves nothing behind.
"""
from pathlib import Path

import pytest

from harness import scenario
from harness.compare import compare, format_comparison
from harness.qemu import bootcache
from harness.session import Options, run_one

pytestmark = pytest.mark.vm

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def _run(name, tmp_path, tag, **opts):
    scn = scenario.load(SCENARIOS / f"{name}.yaml")
    o = Options(trace_dir=tmp_path / tag, accel="tcg", **opts)
    return run_one(scn, "qemu", o, "tcg")


def _boot_step(result):
    from harness.trace import read_trace
    _, steps, _ = read_trace(result.trace_path)
    return next(s for s in steps if s["op"] == "boot")


def test_boot_under_test_never_resumes(tmp_path, cache_root):
    """smi-once (boot: resume-ok) fills the cache for its machine; boot-2-of-4 is the
    same machine (same key) but its boot is under test: it boots fresh and QEMU is
    started without -incoming. smi-once itself then resumes."""
    first = _run("smi-once", tmp_path, "fill")
    assert first.met, first.reason
    assert first.boot.startswith("fresh (saved to the boot cache as ")
    key = _boot_step(first)["result"]["boot_cache"].split()[-1]
    assert bootcache.BootCache().lookup(key) is not None

    fresh = _run("boot-2-of-4", tmp_path, "under-test")
    assert fresh.met, fresh.reason
    assert fresh.boot == "fresh (the boot is under test)"
    step = _boot_step(fresh)
    assert step["result"]["boot"] == "fresh" and "boot_cache" not in step["result"]
    assert "-incoming" not in (fresh.run_dir / "qemu-cmdline.txt").read_text()
    assert [e.key for e in bootcache.BootCache().entries()] == [key]   # nothing added

    resumed = _run("smi-once", tmp_path, "resumed")
    assert resumed.met, resumed.reason
    assert resumed.boot == f"resumed from cache {key}"
    assert "-incoming defer" in (resumed.run_dir / "qemu-cmdline.txt").read_text()
    c = compare(first.trace_path, resumed.trace_path)
    assert c.divergence is None, format_comparison(c)

    off = _run("smi-once", tmp_path, "off", boot_cache="off")
    assert off.met and off.boot == "fresh (boot cache off)"


def test_resumed_hotadd_matches_fresh_and_model(tmp_path, cache_root):
    """hotadd-runtime on qemu-7.2-smm-fix: boot fresh (saving the machine), then again
    resumed from it. Both pass; the resumed guest takes the ACPI hot-add (the guest's
    clock jumped by the time the entry sat in the cache), its CPU is relocated to the
    same SMBASE; the two traces agree step by step, and the resumed one agrees with the
    model too."""
    opts = {"qemu": "qemu-7.2-smm-fix"}
    fresh = _run("hotadd-runtime", tmp_path, "fresh", **opts)
    assert fresh.met, fresh.reason
    assert fresh.boot.startswith("fresh (saved to the boot cache as ")
    resumed = _run("hotadd-runtime", tmp_path, "resumed", **opts)
    assert resumed.met, resumed.reason
    assert resumed.boot.startswith("resumed from cache ")
    step = _boot_step(resumed)
    assert set(_boot_step(fresh)["result"]) - {"boot_cache"} <= set(step["result"])
    c = compare(fresh.trace_path, resumed.trace_path)
    assert c.divergence is None, format_comparison(c)
    where = [(c.index, c.smbase, c.online, c.in_smm) for c in resumed.last_snapshot.cpus]
    assert where == [(c.index, c.smbase, c.online, c.in_smm)
                     for c in fresh.last_snapshot.cpus]
    assert len(where) == 3 and where[2][2]        # the hot-added CPU, online
    scn = scenario.load(SCENARIOS / "hotadd-runtime.yaml")
    model = run_one(scn, "model", Options(trace_dir=tmp_path / "model", accel="tcg", **opts),
                    "tcg")
    cm = compare(resumed.trace_path, model.trace_path)
    assert cm.divergence is None, format_comparison(cm)
    assert "resumed a machine booted earlier" in format_comparison(cm)


def test_resumed_coldplugged_machine_matches_fresh(tmp_path, cache_root):
    """unplug-coldplugged (tcg_thread: multi) cold-plugs slots 1 and 2, boots
    single-threaded (saving the machine with its cold-plugs in the key), goes on from
    the saved machine in a multi-threaded QEMU, then unplugs both (which QEMU 7.2 does
    only multi-threaded). Again, resumed: QEMU gets the two CPUs by device_add before the
    stream loads, the cold-plug steps report the same devices, the guest sees three CPUs
    and both unplugs work; the traces agree step by step."""
    fresh = _run("unplug-coldplugged", tmp_path, "fresh")
    assert fresh.met, fresh.reason
    assert fresh.boot.startswith("fresh with TCG thread=single (saved to the boot cache "
                                 "as ") and fresh.boot.endswith("went on with "
                                                                "thread=multi from it")
    booted = (fresh.run_dir / "booted-single-thread-qemu-cmdline.txt").read_text()
    went_on = (fresh.run_dir / "qemu-cmdline.txt").read_text()
    assert "tcg,thread=single" in booted and "-incoming" not in booted
    assert "tcg,thread=multi" in went_on and "-incoming defer" in went_on
    assert _boot_step(fresh)["result"]["booted_with_tcg_thread"] == "single"
    (entry,) = bootcache.BootCache().entries()
    assert [c["slot"] for c in entry.meta()["inputs"]["coldplug"]] == [1, 2]
    assert "tcg,thread=single" in entry.meta()["inputs"]["args"]
    resumed = _run("unplug-coldplugged", tmp_path, "resumed")
    assert resumed.met, resumed.reason
    assert resumed.boot == f"resumed from cache {entry.key}"
    assert "tcg,thread=multi" in (resumed.run_dir / "qemu-cmdline.txt").read_text()
    from harness.trace import read_trace
    plugs = [[s["result"] for s in read_trace(r.trace_path)[1] if s["op"] == "coldplug"]
             for r in (fresh, resumed)]
    assert plugs[0] == plugs[1] and [p["device"] for p in plugs[1]] == ["cpu-slot1",
                                                                       "cpu-slot2"]
    c = compare(fresh.trace_path, resumed.trace_path)
    assert c.divergence is None, format_comparison(c)


def test_entry_that_does_not_load_is_removed_and_the_boot_is_fresh(tmp_path, cache_root):
    """A stream QEMU refuses (here: not a migration stream at all) costs nothing but
    the attempt: the entry is removed, QEMU is started again without -incoming, and the
    trace says why the boot is fresh. No boot needed to see it."""
    import shutil
    from harness.machine import MachineConfig
    from harness.qemu.backend import QemuBackend
    machine = MachineConfig(cpus=2, maxcpus=4)
    b = QemuBackend()
    try:
        b.start(machine, tmp_path / "a", paused=True, boot="resume-ok")
        key = b._cache_key
        vars_file = b.vm.firmware.vars_template
    finally:
        b.close()
    cache = bootcache.BootCache()
    d = cache.staging(key)
    (d / bootcache.STREAM).write_bytes(b"not a migration stream\n" * 100)
    shutil.copyfile(vars_file, d / bootcache.VARS)
    (d / bootcache.META).write_text("{}")
    assert cache.publish(d, key) is not None
    b = QemuBackend()
    try:
        info = b.start(machine, tmp_path / "b", paused=True, boot="resume-ok")
        assert info["boot"].startswith(f"fresh (boot cache entry {key} did not load: ")
        assert b.vm.alive() and b.vm.incoming is None
        assert "-incoming" not in (tmp_path / "b" / "qemu-cmdline.txt").read_text()
        assert "-incoming defer" in (tmp_path / "b" / "resume-failed-qemu-cmdline.txt").read_text()
        assert cache.lookup(key) is None
    finally:
        b.close()
