"""The boot wait's end (QemuBackend._await_banner), with the agent and the VM faked:
a banner that comes after the deadline, while hang evidence is being gathered, is a
slow boot; no banner and no evidence is "still progressing"; a hang the samples
proved ends the wait at once."""
import pytest

from harness.errors import Hang, StillProgressing
from harness.qemu import backend as qb
from harness.qemu.progress import SMI_READ_EVERY


class FakeAgent:
    def __init__(self, answers):
        self.answers = list(answers)     # per wait_ready call: seconds, or an exception
        self.limits = []

    def wait_ready(self, limit, tick=None, tick_every=0.5, probe_after=None):
        self.limits.append(limit)
        a = self.answers.pop(0)
        if isinstance(a, BaseException):
            raise a
        return a


class FakeVM:
    def alive(self):
        return True


def backend(answers):
    b = qb.QemuBackend()
    b.vm, b.agent = FakeVM(), FakeAgent(answers)
    return b


def test_a_banner_after_the_deadline_is_a_slow_boot_not_a_hang():
    b = backend([Hang("guest agent not ready within 120 s"), 131.5])
    assert b._await_banner("guest did not boot to its agent", 120) == 131.5
    assert b.agent.limits == [120, qb.EVIDENCE_WAIT]


def test_no_banner_and_no_evidence_is_still_progressing():
    b = backend([Hang("not ready"), Hang("not ready")])
    with pytest.raises(StillProgressing) as e:
        b._await_banner("guest did not boot to its agent", 120)
    assert (f"guest did not boot to its agent within 120 s and {qb.EVIDENCE_WAIT:.0f} s "
            f"more of watching" in str(e.value))


def test_a_proven_hang_ends_the_wait_at_once():
    b = backend([])
    proven = Hang("no progress over 6 samples")
    b.hung = proven
    b.agent.answers = [proven]
    with pytest.raises(Hang) as e:
        b._await_banner("guest did not boot to its agent", 120)
    assert e.value is proven and b.agent.limits == [120]


def test_after_the_deadline_the_smi_count_is_read_more_often(monkeypatch):
    monitors = []
    real = qb.ProgressMonitor

    def spy(*a, **k):
        monitors.append(real(*a, **k))
        return monitors[-1]
    monkeypatch.setattr(qb, "ProgressMonitor", spy)
    b = backend([Hang("not ready"), 5.0])
    b._await_banner("guest did not boot to its agent", 120)
    assert monitors[0].smi_read_every == SMI_READ_EVERY


class Stuck:
    """A monitor whose samples show the machine at one place, the verdict's work not
    yet done (``on_its_way``), for the first ``n`` asks."""

    def __init__(self, n):
        self.n, self.smi_read_every = n, None

    def on_its_way(self):
        self.n -= 1
        return self.n >= 0

    def progress_text(self):
        return "at one place"


def test_a_machine_at_one_place_is_watched_longer_but_not_forever(monkeypatch):
    monkeypatch.setattr(qb, "ProgressMonitor", lambda: Stuck(100))
    b = backend([Hang("not ready")] * 20)
    with pytest.raises(StillProgressing) as e:
        b._await_banner("guest did not boot to its agent", 120)
    first, then, *more = b.agent.limits
    assert (first, then) == (120, qb.EVIDENCE_WAIT)
    assert len(more) > 1 and all(0 < m <= qb.EVIDENCE_STEP for m in more)
    assert then + sum(more) == qb.EVIDENCE_MAX
    assert f"within 120 s and {qb.EVIDENCE_MAX:.0f} s more of watching" in str(e.value)


def test_a_machine_that_moves_on_is_not_watched_longer(monkeypatch):
    monkeypatch.setattr(qb, "ProgressMonitor", lambda: Stuck(1))
    b = backend([Hang("not ready")] * 20)
    with pytest.raises(StillProgressing):
        b._await_banner("guest did not boot to its agent", 120)
    assert b.agent.limits == [120, qb.EVIDENCE_WAIT, qb.EVIDENCE_STEP]
