"""The hang verdict's evidence (harness.qemu.progress), replayed from samples recorded on
real runs (QEMU 7.2.22 + OVMF 2022.11, TCG; tests/data/progress_*.json name the run):
a healthy boot never proves a hang, however slowly it is replayed; the sparse cold-plug
hang does, however slowly; a reset loop does by its resets."""
import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness.qemu.progress import (LOOP_CPU_SECONDS, LOOP_PLACES, RESET_LOOP,
                                   SMM_SPIN_SPAN, SPIN_SPAN, STALL_CPU_SECONDS, console_progress,
                                   STALL_IDLE_SECONDS, STALL_SAMPLES, CpuPlace,
                                   ProgressMonitor, Sample)

DATA = Path(__file__).resolve().parents[1] / "data"


def recorded(name, wall=1.0, work=1.0, resets=None, read_every=1):
    """Samples of a recorded run, with wall time stretched by ``wall`` (QEMU stopped or
    starved between samples: it does no more work) and its CPU time by ``work``; where
    the recording has SMI counts (every sample), only every ``read_every``-th is kept,
    as the backend reads them."""
    rows = json.loads((DATA / name).read_text())["samples"]
    out = []
    for i, r in enumerate(rows):
        cpus = tuple(CpuPlace(c[0], c[1], c[2], c[3], int(c[4], 16)) for c in r["cpus"])
        smis = (dict(enumerate(r["smis"])) if r.get("smis") and i % read_every == 0
                else None)
        out.append(Sample(t=r["t"] * wall, cpu_seconds=r["cputime"] * work, cpus=cpus,
                          console=r["con"], debugcon=0,
                          resets=resets(i) if resets else r.get("resets", 0), smis=smis,
                          flash=r.get("flash", 0)))
    return out


def replay(samples, stop_at_verdict=True):
    m = ProgressMonitor()
    for i, s in enumerate(samples):
        m.add(s)
        v = m.verdict()
        if v is not None and stop_at_verdict:
            return i, v
    return None, None


@pytest.mark.parametrize("wall", [1.0, 4.0, 10.0])
def test_a_healthy_boot_never_proves_a_hang_however_slow(wall):
    # up to the guest agent's banner (console 120 bytes); the idle guest after it is
    # at one place for good, which is what an idle machine is
    samples = [s for s in recorded("progress_healthy_boot_tseg7m.json", wall=wall)
               if s.console < 120]
    assert len(samples) > 40
    assert replay(samples) == (None, None)


@pytest.mark.parametrize("wall", [1.0, 4.0])
def test_a_healthy_3_cpu_boot_long_in_smm_is_not_a_hang(wall):
    samples = [s for s in recorded("progress_healthy_boot_3cpu_multi.json", wall=wall)
               if s.console < 120]
    assert sum(1 for s in samples if all(c.in_smm for c in s.cpus)) > 50
    assert replay(samples) == (None, None)


@pytest.mark.parametrize("read_every", [1, 4, 20])
@pytest.mark.parametrize("name", ["progress_healthy_boot_4cpu_multi_smi153.json",
                                  "progress_healthy_boot_4cpu_multi_2026.json"])
def test_a_long_healthy_smi_is_not_a_hang(name, read_every):
    """OVMF 2022.11's SMI 153 on four multi-threaded vCPUs: 42 s inside one SMI, CPU 0
    looping over 0xf4 bytes and two places beyond, every other CPU spinning in SMM. It
    ends; so must the verdict's patience outlast it (2026.08's longest SMI: 1.7 s)."""
    samples = [s for s in recorded(name, read_every=read_every) if s.console < 120]
    smis = [s.smis[0] for s in samples if s.smis]
    assert smis[-1] > 300
    if "smi153" in name:
        inside = [s for s in samples if s.smis and s.smis[0] == 153]
        assert inside[-1].cpu_seconds - inside[0].cpu_seconds > 30 or read_every == 20
    assert replay(samples) == (None, None)


@pytest.mark.parametrize("wall", [1.0, 4.0])
def test_the_sparse_coldplug_hang_is_proven_however_slow(wall):
    samples = recorded("progress_sparse_coldplug_hang.json", wall=wall)
    i, v = replay(samples)
    assert v is not None and v.kind == "stall"
    cpus = {c["index"]: c for c in v.cpus}
    # recorded: cpu 0 spins at one kernel RIP, cpu 2 halted in its idle loop
    assert cpus[0] == {"index": 0, "in_smm": False, "halted": False, "cs": 0x10,
                       "rip": [0xffffffff81170441, 0xffffffff81170441]}
    assert cpus[2]["halted"] and not cpus[2]["in_smm"]
    assert v.spinning() == [0]
    assert v.cpu_seconds >= STALL_CPU_SECONDS and v.samples >= STALL_SAMPLES
    assert samples[i].t - samples[0].t < 20 * wall     # found within the first 20 s
    assert "cpu0 spinning at 0010:ffffffff81170441" in v.text()


def test_the_sparse_coldplug_hang_is_proven_on_a_throttled_host():
    """Recorded with QEMU stopped two thirds of the time (scripts/record-progress
    --throttle, as the slow-host test runs it): 0.27 s of QEMU CPU per second, CPU 0
    moving between two kernel spin places, CPU 0 and the halted CPU 2 caught elsewhere
    every few seconds (timer ticks). Each such sample used to end the run, so the 5 s of
    work came 130 s in, after the boot's 120 s; as excursions they end nothing."""
    samples = recorded("progress_sparse_coldplug_hang_throttled.json")
    i, v = replay(samples)
    assert v is not None and v.kind == "stall" and v.excursions >= 1
    assert v.spinning() == [0] and v.cpu_seconds >= STALL_CPU_SECONDS
    assert samples[i].t < 90
    assert "caught a CPU briefly elsewhere" in v.text()


def test_a_starved_qemu_proves_nothing():
    """The same hang, but QEMU got (almost) no CPU: the samples at one place are not
    work done without progress, and the machine is never called hung."""
    samples = recorded("progress_sparse_coldplug_hang.json", wall=4.0, work=0.0)
    assert replay(samples) == (None, None)


def test_a_reset_loop_is_proven_by_its_resets():
    # the recorded tseg-1m run (6 RESET events in 20 s): say one every 3.3 s
    samples = recorded("progress_tseg1m_reset_loop.json", resets=lambda i: int(i / 13))
    i, v = replay(samples)
    assert v is not None and v.kind == "reset-loop" and v.resets == RESET_LOOP
    assert "reset the machine 3 times" in v.text()


def test_two_resets_are_not_a_loop():
    samples = recorded("progress_tseg1m_reset_loop.json",
                       resets=lambda i: min(2, int(i / 13)))
    assert replay(samples) == (None, None)


def test_a_reset_loop_with_console_output_is_not_a_hang():
    s = [Sample(t=i, cpu_seconds=i, cpus=(CpuPlace(0, False, False, 0x10, 0x1000 * i),),
                console=i, debugcon=0, resets=i) for i in range(10)]
    assert replay(s) == (None, None)


def place(i, rip=0x1000, halted=False, smm=False, cs=0x38, console=0, debugcon=0,
          cpu=None, idle_cpu=True):
    cpus = (CpuPlace(0, smm, halted, cs, rip),)
    if idle_cpu:
        cpus += (CpuPlace(1, False, True, 0x38, 0x2000),)
    return Sample(t=i * 0.5, cpu_seconds=(i * 0.5) if cpu is None else cpu, cpus=cpus,
                  console=console, debugcon=debugcon, resets=0)


def n_for_window():
    return max(STALL_SAMPLES, int(STALL_CPU_SECONDS / 0.5) + 1)


def test_a_spin_within_the_span_is_one_place():
    n = n_for_window()
    s = [place(i, rip=0x1000 + (i % 2) * SPIN_SPAN) for i in range(n)]
    _, v = replay(s)
    assert v is not None and v.cpus[0]["rip"] == [0x1000, 0x1000 + SPIN_SPAN]


def test_in_smm_one_place_is_narrower():
    """In SMM 0x41 bytes apart are two places (a healthy SMI loops over 0xf4 bytes; the
    loop rule and its SMI count decide there); outside SMM the sparse cold-plug hang's
    kernel spin over 0xc9 bytes is one place."""
    n = n_for_window()
    outside = [place(i, rip=0xffffffff81192872 + (i % 2) * 0xc9) for i in range(n)]
    assert replay(outside)[1] is not None
    inside = [place(i, rip=0x1000 + (i % 2) * (SMM_SPIN_SPAN + 1), smm=True)
              for i in range(n)]
    assert replay(inside) == (None, None)
    inside_ok = [place(i, rip=0x1000 + (i % 2) * SMM_SPIN_SPAN, smm=True) for i in range(n)]
    assert replay(inside_ok)[1] is not None


def test_a_rip_beyond_the_span_is_progress():
    n = n_for_window()
    s = [place(i, rip=0x1000 + (i % 2) * (SPIN_SPAN + 1)) for i in range(n)]
    assert replay(s) == (None, None)


@pytest.mark.parametrize("change", ["console", "debugcon", "smm", "halted", "cs"])
def test_any_output_or_state_change_restarts_the_window(change):
    n = n_for_window()
    s = []
    for i in range(n):
        kw = {change if change in ("console", "debugcon") else
              {"smm": "smm", "halted": "halted", "cs": "cs"}[change]:
              (i if change in ("console", "debugcon") else
               (bool(i % 2) if change in ("smm", "halted") else 0x10 + 8 * (i % 2)))}
        s.append(place(i, **kw))
    assert replay(s) == (None, None)
    # the same samples without the change prove a stall
    assert replay([place(i) for i in range(n)])[1] is not None


def test_too_few_samples_or_too_little_work_is_no_verdict():
    n = n_for_window()
    assert replay([place(i) for i in range(STALL_SAMPLES - 1)]) == (None, None)
    assert replay([place(i, cpu=i * 0.01) for i in range(n)]) == (None, None)


def test_every_cpu_halted_needs_wall_time_not_work():
    steps = int(STALL_IDLE_SECONDS / 0.5)
    idle = [place(i, halted=True, cpu=0.0) for i in range(steps)]
    assert replay(idle) == (None, None)           # STALL_IDLE_SECONDS not yet covered
    idle.append(place(steps, halted=True, cpu=0.0))
    _, v = replay(idle)
    assert v is not None and v.spinning() == [] and v.cpu_seconds == 0.0


def elsewhere(i, **kw):
    """A sample of CPU 0 caught away from its place 0x1000 (an interrupt handler)."""
    return place(i, rip=0x9000, **kw)


def test_a_cpu_caught_elsewhere_now_and_then_is_still_at_its_place():
    n = n_for_window() + 4
    s = [elsewhere(i) if i % 6 == 3 else place(i) for i in range(n)]
    _, v = replay(s)
    assert v is not None and v.excursions >= 1
    assert v.cpus[0]["rip"] == [0x1000, 0x1000]      # the excursions are not its place


@pytest.mark.parametrize("how", ["burst", "often", "smm", "output"])
def test_an_excursion_that_is_more_is_progress(how):
    n = 2 * n_for_window()
    if how == "burst":        # three samples in a row elsewhere: it went somewhere
        s = [elsewhere(i) if i % 8 in (3, 4, 5) else place(i) for i in range(n)]
    elif how == "often":      # elsewhere one sample in three
        s = [elsewhere(i) if i % 3 == 1 else place(i) for i in range(n)]
    elif how == "smm":        # in SMM, another place is another place (the SMI count's)
        s = [place(i, rip=0x9000 if i % 6 == 3 else 0x1000, smm=True) for i in range(n)]
    else:                     # it printed something each time it was away
        s = [(elsewhere if i % 6 == 3 else place)(i, console=(i + 2) // 6)
             for i in range(n)]
    assert replay(s) == (None, None)


def test_a_cpu_appearing_or_vanishing_is_progress():
    n = n_for_window()
    s = [place(i, idle_cpu=(i % 2 == 0)) for i in range(n)]
    assert replay(s) == (None, None)


def test_progress_text_says_why_no_verdict():
    m = ProgressMonitor()
    assert "no sample" in m.progress_text()
    m.add(place(0))
    m.add(place(1))
    assert "2 latest sample(s)" in m.progress_text()
    assert "not enough to call it a hang" in m.progress_text()


def test_the_kernels_stall_reports_are_not_progress_but_its_words_are_kept():
    # seen on QEMU 7.2.22 + OVMF 2022.11, the sparse cold-plug hang slowed three-fold
    text = ("\x1b[2J\x1b[01;01H[   36.597752] watchdog: BUG: soft lockup - CPU#0 stuck for"
            " 23s! [migration/0:16]\r\n[   36.817752] watchdog: BUG: soft lockup - CPU#1 "
            "stuck for 23s! [swapper/1:0]\r\n")
    n, reports = console_progress(text)
    assert n == len("\x1b[2J\x1b[01;01H\r\n\r\n")
    assert reports == ["[   36.597752] watchdog: BUG: soft lockup - CPU#0 stuck for 23s! "
                       "[migration/0:16]", "[   36.817752] watchdog: BUG: soft lockup - "
                       "CPU#1 stuck for 23s! [swapper/1:0]"]
    assert console_progress("Linux version 6.1\n") == (len("Linux version 6.1\n"), [])


def storm_samples(n, smis_per_sample, console=lambda i: 0, read_every=4):
    """An SMI storm as recorded on QEMU 11.1.3 + OVMF 2026.08 with 7 MiB of TSEG: CPU 0
    in and out of SMM at RIPs thousands of bytes apart, CPU 1 in the handler, SMI count
    read every ``read_every`` samples."""
    rips = [0x1fadcc6a, 0x1f729be0, 0x1ffcd751, 0x1f901085, 0x1fff9133, 0x1f733508]
    out = []
    for i in range(n):
        cpus = (CpuPlace(0, i % 3 != 1, False, 0x38, rips[i % len(rips)]),
                CpuPlace(1, True, False, 0x38, rips[(i + 2) % len(rips)]))
        smis = ({0: i * smis_per_sample, 1: i * smis_per_sample}
                if i % read_every == 0 else None)
        out.append(Sample(t=i * 0.5, cpu_seconds=i * 0.4, cpus=cpus, console=console(i),
                          debugcon=0, resets=0, smis=smis))
    return out


def test_an_smi_storm_is_proven_by_the_smi_count_though_every_rip_moves():
    samples = storm_samples(40, 350)           # 700 SMIs/s, as measured
    i, v = replay(samples)
    assert v is not None and v.kind == "smi-storm"
    assert i == 12                             # the first count read past SMI_STORM
    assert v.smis == {0: 4200, 1: 4200}
    assert "an SMI storm" in v.text() and "cpu0 4200" in v.text()


def test_a_healthy_boots_smis_are_not_a_storm():
    # a whole healthy boot takes 324-390 SMIs (QEMU 7.2 to 11.1, OVMF 2022.11 to 2026.08)
    samples = storm_samples(60, 7)
    assert replay(samples) == (None, None)


def test_console_output_restarts_the_smi_count():
    # the guest prints every 10 samples: the SMIs between are never 4000 on one CPU
    samples = storm_samples(80, 350, console=lambda i: i // 10)
    assert replay(samples) == (None, None)


def test_without_smi_counts_a_storm_is_not_called():
    samples = [Sample(s.t, s.cpu_seconds, s.cpus, s.console, s.debugcon, s.resets, None)
               for s in storm_samples(40, 350)]
    assert replay(samples) == (None, None)


def test_the_smi_count_is_read_on_the_first_sample_then_every_nth():
    m = ProgressMonitor(smi_read_every=3)
    due = []
    for s in storm_samples(7, 0):
        due.append(m.smi_read_due())
        m.add(s)
    assert due == [True, False, False, True, False, False, True]


# --- inside one SMI: a CPU in SMM cycling among a few places, its SMI count unchanged -----

@pytest.mark.parametrize("read_every", [1, 4, 20])
def test_a_cpu_looping_inside_one_smi_is_proven_by_its_unchanged_smi_count(read_every):
    """OVMF 2025.02 with 1 MiB TSEG (recorded): CPU 0 never leaves its second SMI, its
    RIP alternating between places 0x3baa apart, so the one-place rule cannot see it;
    in SMM at every sample with the same SMI count, it never left that SMI."""
    samples = alternating(recorded("progress_tseg1m_pei_one_smi.json",
                                   read_every=read_every))
    i, v = replay(samples)
    assert v is not None and v.kind == "stall"
    cpus = {c["index"]: c for c in v.cpus}
    assert cpus[0]["in_smm"] and not cpus[0]["halted"] and cpus[0]["smi_count"] == 2
    places = cpus[0]["places"]
    assert 2 <= len(places) <= LOOP_PLACES and [0x1ffd11f0, 0x1ffd11f0] in places
    assert cpus[1]["halted"] and not cpus[1]["in_smm"]
    assert "cpu0 spinning in SMM at 0038:" in v.text()
    assert "inside one SMI (its SMI count stayed 2)" in v.text()
    assert v.cpu_seconds >= LOOP_CPU_SECONDS
    assert samples[i].t - samples[0].t < 2 * LOOP_CPU_SECONDS + read_every


def alternating(samples):
    """From CPU 0's first visit to its second place on: where the one-place rule alone
    never holds long enough (its first 8 s at one place would prove it by that rule)."""
    k = next(k for k, s in enumerate(samples) if s.cpus[0].rip == 0x1ffd11f0)
    return samples[k:]


def test_the_recorded_loop_is_beyond_the_one_place_rule():
    samples = [replace(s, smis=None)
               for s in alternating(recorded("progress_tseg1m_pei_one_smi.json"))]
    assert len(samples) > 100 and replay(samples) == (None, None)


def looping(n, smis, rips=(0x1000, 0x5000), smm=True, read_every=2):
    return [replace(place(i, rip=rips[i % len(rips)], smm=smm),
                    smis={0: smis(i), 1: 0} if i % read_every == 0 else None)
            for i in range(n)]


N_LOOP = int(LOOP_CPU_SECONDS / 0.5) + 4


def test_a_loop_across_smis_is_progress():
    """The same places, but the SMI count grows: each SMI ran the loop and left."""
    assert replay(looping(2 * N_LOOP, smis=lambda i: i)) == (None, None)


def test_a_loop_outside_smm_is_progress():
    assert replay(looping(2 * N_LOOP, smis=lambda i: 1, smm=False)) == (None, None)


def test_more_places_than_a_loop_is_progress():
    rips = tuple(0x1000 + k * 0x1000 for k in range(LOOP_PLACES + 1))
    assert replay(looping(2 * N_LOOP, smis=lambda i: 1, rips=rips)) == (None, None)


def test_a_synthetic_loop_inside_one_smi_is_proven():
    i, v = replay(looping(2 * N_LOOP, smis=lambda i: 1))
    assert v is not None and v.cpus[0]["places"] == [[0x1000, 0x1000], [0x5000, 0x5000]]
    assert "0038:1000 and 0038:5000 inside one SMI (its SMI count stayed 1)" in v.text()


def test_the_one_smi_window_starts_at_the_last_new_smi():
    """SMIs taken early in the run do not void it: the window runs from the first read
    of the count that holds to the end, and needs the work within it."""
    n = n_for_window()
    s = looping(3 * n + int(LOOP_CPU_SECONDS / 0.5), smis=lambda i: min(i, n))
    i, v = replay(s)
    assert v is not None and v.cpus[0]["smi_count"] == n
    assert v.cpu_seconds >= LOOP_CPU_SECONDS and s[i].t - s[n].t >= LOOP_CPU_SECONDS


def test_a_loop_inside_one_smi_needs_the_loop_bar_not_the_spin_bar():
    """Work at a few places inside one SMI is what a slow healthy SMI does too: below
    LOOP_CPU_SECONDS per running vCPU it proves nothing, however many samples."""
    n = int(LOOP_CPU_SECONDS / 0.5) - 2
    assert n > 4 * n_for_window()
    assert replay(looping(n, smis=lambda i: 1)) == (None, None)
