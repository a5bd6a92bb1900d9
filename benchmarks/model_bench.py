"""Model speed: random operation sequences under both semantics.

A *step* is one micro-step of the model: one CPU/firmware/guest program step (one
register access, IPI, memory update or spin-loop iteration) or one interrupt/SMI taken
(``Machine.steps``). Backend operations (start+boot, hotplug, unplug, online, offline,
smi, reset) are reported separately as ``ops_per_s``.

    .venv/bin/python benchmarks/model_bench.py [--sequences N] [--seed S]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness.errors import BackendError  # noqa: E402
from harness.firmware import known_identity  # noqa: E402
from harness.machine import CpuPlug, MachineConfig  # noqa: E402
from harness.model.backend import ModelBackend  # noqa: E402

FIRMWARE = known_identity("2022.11-6+deb12u2")


def _sequence(rng, sem):
    maxcpus = rng.randint(2, 8)
    cpus = rng.randint(1, maxcpus)
    cfg = MachineConfig(cpus=cpus, maxcpus=maxcpus,
                        memory_mib=rng.choice([512, 1024, 2048, 4096]))
    b = ModelBackend(sem, FIRMWARE)
    b.start(cfg, Path("/nonexistent"), paused=True)
    ops = 1
    for slot in rng.sample(range(cpus, maxcpus), rng.randint(0, maxcpus - cpus)):
        b.coldplug(CpuPlug(slot))
        ops += 1
    b.boot()
    ops += 1
    for _ in range(rng.randint(4, 16)):
        op = rng.choice(["hotplug", "unplug", "online", "offline", "smi", "smi", "reset"])
        slot = rng.randrange(maxcpus)
        try:
            if op == "hotplug":
                b.hotplug(CpuPlug(slot))
            elif op == "unplug":
                b.unplug(slot)
            elif op == "online":
                b.online(slot)
            elif op == "offline":
                b.offline(slot)
            elif op == "smi":
                b.smi(rng.choice([0, 4]), None, rng.randint(1, 3))
            else:
                b.reset()
        except BackendError:        # Hang, Refused, guest errors: all count as ops
            pass
        ops += 1
    return b.m.steps, ops


def run(sequences=400, seed=1) -> dict:
    rng = random.Random(seed)
    steps = ops = 0
    t0 = time.perf_counter()
    for i in range(sequences):
        s, o = _sequence(rng, "tcg" if i % 2 else "kvm")
        steps += s
        ops += o
    dt = time.perf_counter() - t0
    return {"sequences": sequences, "steps": steps, "ops": ops, "seconds": round(dt, 3),
            "steps_per_s": round(steps / dt), "ops_per_s": round(ops / dt),
            "step": "one CPU/firmware/guest micro-step or one SMI/INIT taken",
            "target_steps_per_s": 20000}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequences", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    print(json.dumps(run(a.sequences, a.seed), indent=2))
