"""Whether a machine makes progress: the evidence a hang verdict rests on.

A wait running out proves nothing: a slow host (QEMU sharing a core, a migration, a
CPU-burning neighbour) makes a healthy boot take three times as long. So a hang is
established only by what the machine does, sampled from outside:

- every CPU stays at one place across the samples: the same SMM and HLT state, the same
  CS, and RIP within ``SPIN_SPAN`` bytes, ``SMM_SPIN_SPAN`` in SMM (TCG reports RIP at
  the start of a translation block, so a spin loop shows a few addresses; a halted CPU
  one). Measured spins in SMM: the hot-add hang's CPU 0 at one RIP and its AP at
  0x1ffd4f19-0x1ffd4f21, OVMF 2025.02's 1 MiB TSEG hang 0x1ffd4d8c-0x1ffd4d9a; outside
  SMM the sparse cold-plug hang's CPU 0 over 0xffffffff81192872-8119293b (0xc9 bytes,
  a slowed run in CI) and at times one RIP elsewhere;
- or, for a CPU in SMM, a loop: up to ``LOOP_PLACES`` such places, the CPU in SMM at
  every sample and its SMI count unchanged between two reads, so it never left that one
  SMI (OVMF 2025.02 with 1 MiB TSEG: CPU 0 alternates between two places 0x3baa apart).
  Work inside one SMI is what a slow healthy SMI does too, so this needs
  ``LOOP_CPU_SECONDS``, three times the longest healthy SMI measured: OVMF 2022.11's SMI
  153 (of 390) on four multi-threaded vCPUs lasts 42-48 s, 34-39 s of QEMU CPU time, CPU 0
  looping over 0x1ffd78f1-0x1ffd79e5 with visits beyond, the other CPUs spinning in SMM,
  the variable store unchanged (2025.02 and 2026.08: at most 2.2 s). With 0x100 bytes as
  one place in SMM too, that loop was one place and the one-place rule called such a
  boot hung about one time in eight: what earlier runs took for an intermittent QEMU
  stall;
- a sample that catches CPUs outside SMM elsewhere, at most ``EXCURSION_BURST`` in a row
  and ``EXCURSION_SHARE`` of the run, with nothing printed, is an excursion, not the end
  of the run: an interrupt handled (a timer tick, the kernel's watchdog) after which the
  CPU is back at its place. Recorded on a throttled host, the sparse cold-plug hang's
  CPU 0 and halted CPU 2 were caught elsewhere every 5 to 20 s, which ended every run
  before it held 5 s of QEMU CPU (tests/data/progress_sparse_coldplug_hang_throttled.json);
- the guest's console and the firmware's debug console (port 0x402) print nothing;
- QEMU reports no guest reset;

and that for long enough: at least ``STALL_SAMPLES`` samples over ``STALL_CPU_SECONDS``
of QEMU's own CPU time per running vCPU (work done without progress: a starved or
stopped QEMU does not accrue it, and the vCPUs that spin share it, in one TCG thread or
several), or, when every CPU is halted throughout (QEMU idle), ``STALL_IDLE_SECONDS``
of wall time. Or: the firmware resets the machine over and over (``RESET_LOOP`` guest
resets with the console silent), each cycle starting again from the reset vector. Or:
an SMI storm, the firmware taking SMI after SMI with nothing else happening: at least
``SMI_STORM`` SMIs (QEMU's own per-CPU count, ``msr_smi_count`` in the migration stream,
read every ``SMI_READ_WAITING`` samples while a wait runs and every ``SMI_READ_EVERY``
once it ran out) with the consoles silent and no reset. A storm moves every RIP (each SMI re-enters the handler), so the
"one place" rule cannot see it; the count can. A whole healthy boot to the guest's shell
takes 324-390 SMIs per CPU (QEMU 7.2 + OVMF 2022.11: 390, 10.0 + 2025.02: 324, 11.1 +
2026.08: 342); OVMF 2026.08 with 7 MiB of TSEG took 16,360 in 22 s (QEMU 11.1.3), CPU 0
returning between SMIs to the same DXE loop. ``SMI_STORM`` is ten whole healthy boots.

Measured on QEMU 7.2.22 + OVMF 2022.11 (2 vCPUs, TCG, this 2-core machine): a healthy
boot's longest stay of every CPU at one place is about 1.5 s of QEMU CPU time (the BSP
in a PEI wait loop, the AP halted at its reset vector); OVMF with 1 MiB TSEG resets the
machine every 3.3 s; the sparse cold-plug hang spins CPU 0 at one RIP for good. With
three vCPUs and multi-threaded TCG, a healthy boot keeps every CPU in SMM for 19 s, CPU
0 within 0xf4 bytes for 5 s of it (4.2 s of QEMU CPU time, three vCPUs spinning): why
the work is counted per running vCPU.

The variable store (the pflash VARS file QEMU writes through) changing is progress as
much as console output is (``Sample.flash``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

SAMPLE_INTERVAL = 0.5        # seconds between samples
SPIN_SPAN = 0x100            # RIPs within this many bytes are one place (a spin loop)
SMM_SPIN_SPAN = 0x40         # ... for a CPU in SMM (a healthy SMI loops over 0xf4 bytes)
LOOP_PLACES = 3              # places a CPU in SMM may cycle among inside one SMI
STALL_SAMPLES = 6
STALL_CPU_SECONDS = 5.0      # > 3 x the longest healthy stay at one place (1.5 s)
LOOP_CPU_SECONDS = 30.0      # inside one SMI at a few places: 3 x the longest healthy SMI
#                              (OVMF 2022.11's SMI 153 on 4 vCPUs, MTTCG: 9.7 s per vCPU)
STALL_IDLE_SECONDS = 8.0     # every CPU halted, QEMU idle: wall time (timers still run)
RESET_LOOP = 3               # guest resets, console silent: the firmware resets in a loop
SMI_STORM = 4000             # SMIs on one CPU, consoles silent: > 10 x a whole healthy boot
SMI_READ_EVERY = 4           # samples between reads of the SMI count (a small migration,
#                              ~0.07 s) while hang evidence is gathered after a wait ran out
SMI_READ_WAITING = 20        # ... and while a wait is still running (boot, hot-add, reset)
EXCURSION_BURST = 2          # samples in a row a CPU outside SMM may be caught elsewhere
EXCURSION_SHARE = 0.2        # ... and their share of a run at most
HISTORY = 2400               # samples kept to find the run in (20 min at SAMPLE_INTERVAL)
# The guest's own reports of a stall are not progress: a slowed sparse cold-plug hang
# prints "watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [migration/0:16]" every
# 20-odd seconds (QEMU 7.2.22, OVMF 2022.11, loglevel=3 shows only these lines)
STALL_REPORT = re.compile(r"(?:\[ *\d+\.\d+\] )?(?:watchdog: BUG: soft lockup|Watchdog "
                          r"detected hard LOCKUP|rcu: INFO: \S+ (?:self-)?detected stall)"
                          r"[^\r\n]*")


def console_progress(text):
    """(bytes of console output that are not the kernel's stall reports, those
    reports): what counts as the guest printing something, and its own words."""
    reports = STALL_REPORT.findall(text)
    return len(STALL_REPORT.sub("", text).encode("utf-8", "replace")), \
        [r.strip() for r in reports]


@dataclass(frozen=True)
class CpuPlace:
    index: int
    in_smm: bool
    halted: bool
    cs: int | None
    rip: int | None


@dataclass(frozen=True)
class Sample:
    t: float                      # monotonic seconds
    cpu_seconds: float            # QEMU's CPU time (user + system)
    cpus: tuple                   # CpuPlace per CPU
    console: int                  # bytes the guest console printed so far (no stall reports)
    debugcon: int                 # bytes of firmware debug output so far
    resets: int                   # guest resets QEMU reported so far
    smis: dict | None = None      # CPU index -> SMIs taken so far, when it was read
    flash: int = 0                # CRC-32 of the firmware's variable store (pflash VARS)


@dataclass
class Evidence:
    """Why the machine is taken as hung, in the trace's terms."""
    kind: str                     # "stall", "reset-loop" or "smi-storm"
    samples: int
    seconds: float
    cpu_seconds: float
    cpus: list = field(default_factory=list)   # per CPU: index, in_smm, halted, cs, rip
    resets: int = 0
    console_bytes: int = 0
    debugcon_bytes: int = 0
    guest_reports: list = field(default_factory=list)   # the kernel's stall reports
    smis: dict = field(default_factory=dict)    # smi-storm: CPU index -> SMIs taken
    excursions: int = 0           # stall: samples that caught a CPU briefly elsewhere

    def spinning(self):
        return sorted(c["index"] for c in self.cpus if not c["halted"])

    def text(self):
        if self.kind == "reset-loop":
            return (f"the guest reset the machine {self.resets} times in {self.seconds:.1f} s "
                    f"with nothing on its console")
        if self.kind == "smi-storm":
            took = ", ".join(f"cpu{i} {n}" for i, n in sorted(self.smis.items()))
            return (f"an SMI storm: SMIs taken in {self.seconds:.1f} s ({took}; a whole "
                    f"healthy boot takes under 400) with console and firmware debug "
                    f"output unchanged and no reset")
        where = "; ".join(
            f"cpu{c['index']} {'halted' if c['halted'] else 'spinning'}"
            f"{' in SMM' if c['in_smm'] else ''} at {_at(c)}" for c in self.cpus)
        says = f"; the guest says: {self.guest_reports[-1]}" if self.guest_reports else ""
        away = (f" ({self.excursions} more sample(s) caught a CPU briefly elsewhere, "
                f"back at its place after)" if self.excursions else "")
        return (f"no progress over {self.samples} samples, {self.seconds:.1f} s "
                f"({self.cpu_seconds:.1f} s of QEMU CPU time): {where}{away}; console "
                f"and firmware debug output unchanged{says}")

    def to_dict(self):
        return dict(self.__dict__)


def _output(s: Sample):
    """What the machine did that shows progress by itself: console and firmware debug
    output, guest resets, writes to the variable store."""
    return s.console, s.debugcon, s.resets, s.flash


def _at(c):
    cs = "????" if c["cs"] is None else f"{c['cs']:04x}"
    if c.get("places"):
        at = " and ".join(f"{cs}:{lo:x}" if lo == hi else f"{cs}:{lo:x}-{hi:x}"
                          for lo, hi in c["places"])
        return f"{at} inside one SMI (its SMI count stayed {c['smi_count']})"
    if c["rip"] is None:
        return f"{cs}:?"
    lo, hi = c["rip"]
    return f"{cs}:{lo:x}" if lo == hi else f"{cs}:{lo:x}-{hi:x}"


def _at_places(a: CpuPlace, b: CpuPlace, spans):
    """``spans`` (the RIP ranges ``a``'s CPU was seen at, None where QEMU gave no RIP)
    with ``b``'s RIP in them, or False where ``b`` is not at those places. A CPU in SMM
    may be at up to LOOP_PLACES places (a loop calling out of itself); whether it stayed
    inside one SMI is for the SMI count to say (:meth:`ProgressMonitor._one_smi`)."""
    if (a.index, a.in_smm, a.halted, a.cs) != (b.index, b.in_smm, b.halted, b.cs):
        return False
    if b.rip is None or spans is None:
        return None if b.rip is None and spans is None else False
    span = SMM_SPIN_SPAN if a.in_smm else SPIN_SPAN
    for i, (lo, hi) in enumerate(spans):
        if max(hi, b.rip) - min(lo, b.rip) <= span:
            return spans[:i] + [(min(lo, b.rip), max(hi, b.rip))] + spans[i + 1:]
    if a.in_smm and len(spans) < LOOP_PLACES:
        return spans + [(b.rip, b.rip)]
    return False


class ProgressMonitor:
    """Samples in; a verdict out once the samples prove no progress."""

    def __init__(self, stall_samples=STALL_SAMPLES, stall_cpu_seconds=STALL_CPU_SECONDS,
                 stall_idle_seconds=STALL_IDLE_SECONDS, reset_loop=RESET_LOOP,
                 smi_storm=SMI_STORM, smi_read_every=SMI_READ_WAITING,
                 loop_cpu_seconds=LOOP_CPU_SECONDS):
        self.stall_samples = stall_samples
        self.stall_cpu_seconds = stall_cpu_seconds
        self.loop_cpu_seconds = loop_cpu_seconds
        self.stall_idle_seconds = stall_idle_seconds
        self.reset_loop = reset_loop
        self.smi_storm = smi_storm
        self.smi_read_every = smi_read_every
        self.added = 0                     # samples added, for smi_read_due
        self.history: list[Sample] = []    # the latest HISTORY samples
        self.samples: list[Sample] = []    # the run at the newest sample's places
        self.places: dict = {}             # CPU index -> RIP spans of the run, per CPU
        self.excursions = 0                # samples left out of the run as excursions
        self.first: Sample | None = None
        self.quiet: Sample | None = None   # the first SMI count read since the consoles
        #                                    last printed (or the machine last reset)

    def add(self, s: Sample):
        if self.first is None:
            self.first = s
        self.added += 1
        q = self.quiet
        if q is not None and _output(q) != _output(s):
            self.quiet = q = None
        if q is None and s.smis is not None:
            self.quiet = s
        self.history.append(s)
        del self.history[:-HISTORY]
        self.samples, self.places, self.excursions = self._run(self.history)

    @classmethod
    def _run(cls, history):
        """The run of samples at the same places as the newest one, walking back: (its
        samples, oldest first; RIP spans per CPU; how many samples left out of it as
        excursions). An excursion is a sample that caught CPUs outside SMM elsewhere, at
        most ``EXCURSION_BURST`` in a row and ``EXCURSION_SHARE`` of the run, with the
        same output: an interrupt handled (a timer tick, the kernel's watchdog), after
        which the CPU is back at its place. The run ends at any output, at a CPU
        appearing or vanishing, at a sample in SMM elsewhere, at a longer burst."""
        s = history[-1]
        places = cls._places_of(s)
        seq, burst = [], 0
        for old in reversed(history[:-1]):
            if _output(old) != _output(s) or \
                    {c.index for c in old.cpus} != set(places):
                break
            if cls._continues(old, places):
                seq.append(True)
                burst = 0
            elif burst < EXCURSION_BURST and cls._excursion(old, places):
                seq.append(False)
                burst += 1
            else:
                break
        # the longest stretch back that ends on a sample at the places and keeps the
        # excursions a minority
        keep, fits, outs = 0, 1, 0
        for k, fit in enumerate(seq, 1):
            fits, outs = fits + fit, outs + (not fit)
            if fit and outs <= EXCURSION_SHARE * (fits + outs):
                keep = k
        kept = [s]
        places = cls._places_of(s)
        for old, fit in zip(reversed(history[-1 - keep:-1]), seq[:keep]):
            if fit:
                cls._continues(old, places)
                kept.append(old)
        return (kept[::-1], {i: spans for i, (_, spans) in places.items()},
                keep + 1 - len(kept))

    @staticmethod
    def _places_of(s):
        return {c.index: (c, None if c.rip is None else [(c.rip, c.rip)]) for c in s.cpus}

    @staticmethod
    def _continues(old, places):
        """Whether every CPU of ``old`` is at the run's places (which it widens)."""
        moved = {}
        for c in old.cpus:
            ref, spans = places[c.index]
            spans = _at_places(ref, c, spans)
            if spans is False:
                return False
            moved[c.index] = (ref, spans)
        places.update(moved)
        return True

    @staticmethod
    def _excursion(old, places):
        """Whether ``old`` may be an excursion: every CPU at its place, or outside SMM
        both there and at the run's newest sample."""
        for c in old.cpus:
            ref, spans = places[c.index]
            if _at_places(ref, c, spans) is False and (ref.in_smm or c.in_smm):
                return False
        return True

    def verdict(self) -> Evidence | None:
        if not self.samples:
            return None
        last = self.samples[-1]
        resets = last.resets - self.first.resets
        if resets >= self.reset_loop and last.console == self.first.console:
            return Evidence("reset-loop", len(self.samples), last.t - self.first.t,
                            last.cpu_seconds - self.first.cpu_seconds, self._cpus(),
                            resets, last.console, last.debugcon)
        storm = self._storm(last)
        if storm:
            return Evidence("smi-storm", len(self.samples), last.t - self.quiet.t,
                            last.cpu_seconds - self.quiet.cpu_seconds, self._cpus(), 0,
                            last.console, last.debugcon, smis=storm)
        samples = self.samples
        looping = [i for i, spans in self.places.items() if spans and len(spans) > 1]
        one_smi = {}
        if looping:                  # only inside one SMI, shown by its unchanged count
            samples, one_smi = self._one_smi(looping)
        if len(samples) < self.stall_samples or not last.cpus:
            return None
        first, last = samples[0], samples[-1]
        busy = last.cpu_seconds - first.cpu_seconds
        running = sum(1 for c in last.cpus if not c.halted)
        idle = all(c.halted for s in samples for c in s.cpus)
        bar = self.loop_cpu_seconds if one_smi else self.stall_cpu_seconds
        if (running and busy / running >= bar) or (
                idle and last.t - first.t >= self.stall_idle_seconds):
            return Evidence("stall", len(samples), last.t - first.t, busy,
                            self._cpus(samples, one_smi), 0, last.console, last.debugcon,
                            excursions=self.excursions)
        return None

    def on_its_way(self):
        """Whether the samples show a run at the same places long enough to count
        (STALL_SAMPLES) but no verdict yet: watching longer may prove a hang."""
        return len(self.samples) >= self.stall_samples and self.verdict() is None

    def _one_smi(self, looping):
        """The samples between the SMI count reads of the run that show every CPU in
        ``looping`` (in SMM at every sample, at more than one place) taking no SMI,
        up to the newest read, and its count: in SMM at every sample and no new SMI
        means the one SMI never ended. ([], {}) where the counts cannot show it."""
        reads = [k for k, s in enumerate(self.samples) if s.smis is not None]
        if not reads:
            return [], {}
        b = self.samples[reads[-1]].smis
        if any(b.get(i) is None for i in looping):
            return [], {}
        start = reads[-1]
        for k in reversed(reads[:-1]):    # back to the last read that differs
            if any(self.samples[k].smis.get(i) != b[i] for i in looping):
                break
            start = k
        if start == reads[-1]:
            return [], {}
        return self.samples[start:reads[-1] + 1], {i: b[i] for i in looping}

    def smi_read_due(self):
        """Whether the next sample should read the SMI count: the first sample, then
        every ``smi_read_every``-th."""
        return self.added % self.smi_read_every == 0

    def _quiet_smis(self, last):
        """SMIs per CPU since the consoles went quiet, where ``last`` read the count."""
        q = self.quiet
        if q is None or last.smis is None or last is q:
            return None
        return {i: n - q.smis.get(i, 0) for i, n in last.smis.items()}

    def _storm(self, last):
        """:meth:`_quiet_smis`, if one CPU took SMI_STORM."""
        took = self._quiet_smis(last)
        return took if took and max(took.values()) >= self.smi_storm else None

    def _cpus(self, samples=None, one_smi=None):
        out = []
        samples = samples or self.samples
        for c in samples[-1].cpus:
            rips = [p.rip for s in samples for p in s.cpus
                    if p.index == c.index and p.rip is not None]
            cpu = {"index": c.index, "in_smm": c.in_smm, "halted": c.halted,
                   "cs": c.cs, "rip": [min(rips), max(rips)] if rips else None}
            if one_smi and c.index in one_smi:
                cpu["places"] = [list(p) for p in self.places[c.index]]
                cpu["smi_count"] = one_smi[c.index]
            out.append(cpu)
        return out

    def progress_text(self):
        """What the samples showed, for a wait that ended without evidence of a hang."""
        if not self.samples or self.first is None:
            return "no sample of the machine could be taken"
        last = self.samples[-1]
        return (f"{len(self.samples)} latest sample(s) at the same places over "
                f"{last.t - self.samples[0].t:.1f} s "
                f"({last.cpu_seconds - self.samples[0].cpu_seconds:.1f} s of QEMU CPU "
                f"time), not enough to call it a hang; console {last.console} bytes, "
                f"{last.resets - self.first.resets} guest reset(s) since watching began"
                f"{self._smis_text(last)}")

    def _smis_text(self, last):
        took = self._quiet_smis(last)
        if took is None:
            return ""
        return (f"; up to {max(took.values(), default=0)} SMIs per CPU since the consoles "
                f"went quiet")
