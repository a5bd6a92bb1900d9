"""The hang verdict's evidence (harness.qemu.progress), replayed from samples recorded on
real runs (QEMU 7.2.22 + OVMF 2022.11, TCG; tests/data/progress_*.json name the run):
a healthy boot never proves a hang, however slowly it is replayed; the sparse cold-plug
hang does, however slowly; a reset loop does by its resets."""
import json
from pathlib import Path

import pytest

from harness.qemu.progress import (RESET_LOOP, SPIN_SPAN, STALL_CPU_SECONDS, console_progress,
                                   STALL_IDLE_SECONDS, STALL_SAMPLES, CpuPlace,
                                   ProgressMonitor, Sample)

DATA = Path(__file__).resolve().parents[1] / "data"


def recorded(name, wall=1.0, work=1.0, resets=None):
    """Samples of a recorded run, with wall time stretched by ``wall`` (QEMU stopped or
    starved between samples: it does no more work) and its CPU time by ``work``."""
    rows = json.loads((DATA / name).read_text())["samples"]
    out = []
    for i, r in enumerate(rows):
        cpus = tuple(CpuPlace(c[0], c[1], c[2], c[3], int(c[4], 16)) for c in r["cpus"])
        out.append(Sample(t=r["t"] * wall, cpu_seconds=r["cputime"] * work, cpus=cpus,
                          console=r["con"], debugcon=0,
                          resets=resets(i) if resets else 0))
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
