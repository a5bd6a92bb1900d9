"""Property-based tests: random operation sequences under both semantics."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import hw
from harness.errors import BackendError, Hang, QemuCrashed, Refused
from harness.machine import CpuPlug

from model_helpers import make

OPS = st.one_of(
    st.tuples(st.just("hotplug"), st.integers(0, 5)),
    st.tuples(st.just("unplug"), st.integers(0, 5)),
    st.tuples(st.just("online"), st.integers(1, 5)),
    st.tuples(st.just("offline"), st.integers(1, 5)),
    st.tuples(st.just("smi"), st.sampled_from([0, 2, 3, 4, 0x55])),
    st.tuples(st.just("reset"), st.just(0)),
)


@st.composite
def scenarios(draw):
    maxcpus = draw(st.integers(2, 6))
    cpus = draw(st.integers(1, maxcpus))
    mem = draw(st.sampled_from([512, 1024, 2048, 3072]))
    free = list(range(cpus, maxcpus))
    cold = draw(st.lists(st.sampled_from(free), unique=True, max_size=len(free))) if free else []
    ops = draw(st.lists(OPS, max_size=12))
    return dict(memory_mib=mem, cpus=cpus, maxcpus=maxcpus), cold, ops


def check_invariants(b, sem):
    s = b.snapshot()
    tseg = s.tseg
    relocated = [c.smbase for c in s.cpus if c.smbase != hw.DEFAULT_SMBASE]
    assert len(relocated) == len(set(relocated)), "two CPUs share an SMBASE"
    for c in relocated:
        assert tseg.base <= c + hw.SMI_ENTRY_OFFSET and c + hw.SAVE_STATE_END <= tseg.base + tseg.size
    if b.m.stuck:
        return
    assert not any(c.in_smm for c in s.cpus), "a CPU left in SMM at quiescence"
    assert all(c.halted for c in s.cpus), "an idle guest's CPUs are halted"
    if sem == "kvm":
        for c in s.cpus:
            assert c.smbase != hw.DEFAULT_SMBASE, f"cpu{c.index} not relocated"
            if c.online:
                assert tseg.base <= c.smbase + hw.SMI_ENTRY_OFFSET < tseg.base + tseg.size


def run_ops(b, sem, ops):
    for op, arg in ops:
        was_stuck = b.m.stuck is not None
        present_before = set(b.m.by_slot)
        try:
            if op == "hotplug":
                b.hotplug(CpuPlug(arg))
            elif op == "unplug":
                b.unplug(arg)
            elif op == "online":
                b.online(arg)
            elif op == "offline":
                b.offline(arg)
            elif op == "smi":
                b.smi(arg, None, 1)
            elif op == "reset":
                b.reset()
        except Hang:
            if op == "hotplug" and sem == "kvm" and not was_stuck:
                raise AssertionError("kvm: hot-add hung")
            assert sem == "tcg" or was_stuck, f"unexpected hang in {op} under kvm"
        except (Refused, BackendError) as e:
            assert not isinstance(e, Hang)
            if b.m.dead is not None:         # a modelled QEMU crash: nothing runs after it
                assert isinstance(e, QemuCrashed) and op in ("unplug", "reset", "hotplug")
                return
        else:
            assert not was_stuck or op == "reset", "a stuck machine ran a step"
            if op == "hotplug" and sem == "tcg" and arg not in present_before:
                raise AssertionError("tcg: a runtime hot-add completed")
            if op == "unplug":
                assert arg not in b.m.by_slot
            if op == "online" and sem == "kvm":
                c = b.m.by_slot[arg]
                assert not c.in_smm and b.m.mch.in_tseg(c.smbase + hw.SMI_ENTRY_OFFSET)
        check_invariants(b, sem)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios(), sem=st.sampled_from(["tcg", "kvm"]),
       defects=st.sampled_from(["none", None]))
def test_random_sequences(sc, sem, defects):
    """The protocol's invariants hold with and without QEMU's own defects (None: those
    of the semantics, e.g. QEMU 7.2 TCG's crashes and lost SCI)."""
    cfg, cold, ops = sc
    b = make(sem, coldplug=cold, defects=defects, **cfg)
    check_invariants(b, sem)
    # boot SMBASEs in APIC id order, as measured on OVMF 2022.11 (real-qemu-findings.md:
    # the first tile 0x3b000 + maxcpus * 0x2000 below the top of TSEG, 0x2000 apart)
    top = b.m.mch.tseg_base + b.m.mch.tseg_size
    apics = sorted(c.apic_id for c in b.snapshot().cpus)
    expect = {a: top - 0x3b000 - cfg["maxcpus"] * 0x2000 + i * 0x2000
              for i, a in enumerate(apics)}
    assert {c.apic_id: c.smbase for c in b.snapshot().cpus} == expect
    run_ops(b, sem, ops)


@settings(max_examples=30, deadline=None)
@given(cfg=st.tuples(st.integers(1, 4), st.integers(0, 3)), slot_off=st.integers(0, 3),
       smis=st.integers(0, 3))
def test_tcg_runtime_hot_add_always_hangs(cfg, slot_off, smis):
    cpus, extra = cfg
    maxcpus = cpus + extra + 1
    b = make("tcg", cpus=cpus, maxcpus=maxcpus)
    if smis:
        b.smi(4, None, smis)
    slot = cpus + slot_off % (extra + 1)
    try:
        b.hotplug(CpuPlug(slot))
    except Hang as h:
        sig = h.signature()
        assert sig["in_smm"] == list(range(cpus))
        assert sig["halted"] == [slot]        # QEMU's cpu index of a CPU is its slot
    else:
        raise AssertionError("hot-add completed under tcg")


@settings(max_examples=30, deadline=None)
@given(cpus=st.integers(1, 4), adds=st.lists(st.integers(0, 7), max_size=6),
       mem=st.sampled_from([512, 1024, 4096]))
def test_kvm_hot_adds_fill_lowest_free_tiles(cpus, adds, mem):
    b = make("kvm", cpus=cpus, maxcpus=8, memory_mib=mem)
    top = b.m.mch.tseg_base + b.m.mch.tseg_size
    for slot in adds:
        try:
            b.hotplug(CpuPlug(slot))
        except Refused:
            assert slot in b.m.by_slot
            continue
        b.online(slot)
    got = sorted(c.smbase for c in b.snapshot().cpus)
    n = len(got)
    # OVMF 2022.11's measured tiles (real-qemu-findings.md), lowest first
    assert got == [top - 0x3b000 - 8 * 0x2000 + i * 0x2000 for i in range(n)]
