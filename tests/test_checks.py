"""Checks on hand-built snapshots: each verdict and the CPUs it blames."""
from harness import hw
from harness.checks import CheckContext, run_check
from harness.snapshot import CpuState, Snapshot, Tseg

TSEG = Tseg(base=0x1F000000, size=16 << 20, locked=True)


def snap(*smbases, in_smm=(), smis=None, online=None, ucode=None):
    cpus = []
    for i, s in enumerate(smbases):
        cpus.append(CpuState(index=i, apic_id=i, smbase=s, in_smm=i in in_smm, halted=True,
                             smi_count=None if smis is None else smis[i],
                             online=None if online is None else online[i],
                             ucode_rev=None if ucode is None else ucode[i]))
    return Snapshot(cpus=cpus, tseg=TSEG, registers={"smram": 0x1A, "esmramc": 0x3F},
                    smi_features={"names": ["broadcast", "cpu_hotplug"]})


def check(name, s, arg=None, **kw):
    return run_check(name, arg, CheckContext(snapshot=s, **kw))


def test_smbase_relocated_blames_the_default():
    r = check("smbase_relocated", snap(0x1FFBD000, hw.DEFAULT_SMBASE))
    assert not r.passed and r.cpus == [1]
    assert check("smbase_relocated", snap(0x1FFBD000, 0x1FFBF000)).passed


def test_smbase_in_tseg_edges():
    top = TSEG.base + TSEG.size
    assert check("smbase_in_tseg", snap(top - hw.SAVE_STATE_END)).passed
    r = check("smbase_in_tseg", snap(top - hw.SAVE_STATE_END + 0x1000,
                                     TSEG.base - hw.SMI_ENTRY_OFFSET - 1))
    assert r.cpus == [0, 1]


def test_tiles_ovmf_interleaving_is_disjoint_but_equal_or_close_smbases_clash():
    ovmf = [0x1FFBD000 + i * 0x2000 for i in range(8)]   # OVMF's 8 KiB stride
    assert check("smbase_tiles_disjoint", snap(*ovmf)).passed
    r = check("smbase_tiles_disjoint", snap(0x1FFBD000, 0x1FFC1000, 0x1FFBD000))
    assert not r.passed and r.cpus == [0, 2]
    # 0x800 apart: entry pages overlap
    assert check("smbase_tiles_disjoint", snap(0x1FFBD000, 0x1FFBD800)).cpus == [0, 1]
    # save-state map of one on the entry page of another: SMBASE + 0xFC00 == other + 0x8000
    assert check("smbase_tiles_disjoint", snap(0x1FFBD000, 0x1FFBD000 + 0x7C00)).cpus == [0, 1]


def test_no_cpu_in_smm():
    assert check("no_cpu_in_smm", snap(1, 2, 3, in_smm={2})).cpus == [2]


def test_smi_delivered_exact_and_new_cpus():
    before = snap(0x1000, 0x3000, smis=[10, 10])
    after = Snapshot(cpus=snap(0x1000, 0x3000, 0x5000, smis=[110, 110, 100]).cpus, tseg=TSEG)
    ok = check("smi_delivered", after, previous=before, smis_since_previous=100)
    assert ok.passed and ok.observed == {0: "+100", 1: "+100", 2: "100 (new)"}
    short = snap(0x1000, 0x3000, smis=[110, 109])
    r = check("smi_delivered", short, previous=before, smis_since_previous=100)
    assert not r.passed and r.cpus == [1]
    assert not check("smi_delivered", after, previous=None).passed


def test_smbase_unchanged():
    assert check("smbase_unchanged", snap(1, 2), previous=snap(1, 2)).passed
    assert check("smbase_unchanged", snap(1, 3), previous=snap(1, 2)).cpus == [1]


def test_counts_features_lock_microcode():
    s = snap(1, 2, 3, online=[True, True, False], ucode=[5, 5, 6])
    assert check("cpus_present", s, 3).passed and not check("cpus_present", s, 2).passed
    r = check("cpus_online", s, 3)
    assert not r.passed and r.observed == 2 and r.cpus == [2]
    assert check("smi_features", s, ["cpu_hotplug", "broadcast"]).passed
    assert not check("smi_features", s, ["broadcast"]).passed
    assert check("tseg_locked", s).passed
    s.registers["smram"] &= ~hw.SMRAM_D_LCK
    assert not check("tseg_locked", s).passed
    r = check("microcode_uniform", s)
    assert not r.passed and r.cpus == [2]
    assert check("microcode_revision", snap(1, 2, ucode=[5, 5]), 5).passed
    assert check("microcode_revision", s, 5).cpus == [2]


def test_smbase_checks_fail_on_a_snapshot_without_smbases():
    s = snap(None, None)
    s.source = "qmp"
    for name in ("smbase_relocated", "smbase_in_tseg", "smbase_tiles_disjoint",
                 "smbase_unchanged"):
        r = check(name, s, previous=snap(1, 2))
        assert (r.name, r.passed, r.observed, r.cpus) == (name, False, "unknown", [0, 1])
        assert r.detail == "this snapshot (qmp) has no SMBASE for CPU 0, 1"


def guest_snap(*cpus):
    """CPUs as (vendor, ucode-rev, msr read, cpuinfo, sysfs, online)."""
    out = []
    for i, (vendor, rev, msr, cpuinfo, sysfs, online) in enumerate(cpus):
        out.append(CpuState(index=i, apic_id=i, smbase=0x1FFBD000 + i * 0x2000, in_smm=False,
                            halted=True, online=online, ucode_rev=rev, vendor=vendor,
                            guest_msr_ucode=msr, guest_ucode_rev=cpuinfo,
                            guest_ucode_sysfs=sysfs))
    return Snapshot(cpus=out, tseg=TSEG)


INTEL, AMD = "GenuineIntel", "AuthenticAMD"


def test_microcode_guest_intel_high_dword_amd_low_dword():
    s = guest_snap((INTEL, 0x1_0000_0000, 0x1_0000_0000, 0x1, None, True),
                   (INTEL, 0x1_0000_0000, 0x1_0000_0000, 0x1, 0x1, True),
                   (INTEL, 0x2A_0000_0000, None, None, None, False))      # offline: not read
    assert check("microcode_guest", s).passed
    s = guest_snap((AMD, 0x01000065, 0x01000065, 0x01000065, None, True))
    assert check("microcode_guest", s).passed
    # decoded with the wrong vendor's rule, the revision does not match
    s = guest_snap((AMD, 0x1_0000_0000, 0x1_0000_0000, 0x1, None, True))
    r = check("microcode_guest", s)
    assert not r.passed and r.cpus == [0] and "another value" in r.detail


def test_microcode_guest_blames_disagreement_and_the_odd_revision():
    s = guest_snap((INTEL, 0x1_0000_0000, 0x1_0000_0000, 0x1, None, True),
                   (INTEL, 0x1_0000_0000, 0x1_0000_0000, 0x1, None, True),
                   (INTEL, 0x2A_0000_0000, 0x2A_0000_0000, 0x2A, None, True))
    r = check("microcode_guest", s)
    assert not r.passed and r.cpus == [2] and "another revision" in r.detail
    s = guest_snap((INTEL, 0x1_0000_0000, 0x5_0000_0000, 0x5, None, True),   # MSR != property
                   (INTEL, 0x1_0000_0000, 0x1_0000_0000, 0x1, 0x2, True),    # sysfs differs
                   (INTEL, 0x1_0000_0000, None, 0x1, None, True))            # MSR not read
    assert check("microcode_guest", s).cpus == [0, 1, 2]


def test_microcode_guest_needs_the_guest():
    s = guest_snap((INTEL, 0x1_0000_0000, None, None, None, None))
    r = check("microcode_guest", s)
    assert not r.passed and "no CPU" in r.detail


# --- every verdict's shape, early exits and edges (found by mutation testing) -----------
def test_a_result_reads_as_a_line_and_a_dict():
    from harness.checks import CheckResult
    r = CheckResult("x", False, 3, 2, "too few", [1])
    assert r.to_dict() == {"name": "x", "passed": False, "expected": 3, "observed": 2,
                           "detail": "too few", "cpus": [1]}
    assert r.line() == "FAIL x: expected 3, observed 2 (too few)"
    assert CheckResult("x", True, 3, 3).line() == "ok   x: expected 3, observed 3"


def test_observed_smbases_are_hex_and_unknowns_are_words():
    r = check("smbase_relocated", snap(0x1FFBD000, 0x1FFBF000))
    assert r.observed == {0: "0x1ffbd000", 1: "0x1ffbf000"}
    s1, s0 = snap(0x1FFBD000), snap(0x1FFBD000)
    s0.cpus = []
    r = check("smbase_unchanged", s1, previous=s0)
    assert r.passed and r.observed == {0: "None -> 0x1ffbd000"}


def test_no_smis_since_the_previous_snapshot_is_the_default():
    before, after = snap(0x1FFBD000, smis=[5]), snap(0x1FFBD000, smis=[5])
    r = run_check("smi_delivered", None, CheckContext(snapshot=after, previous=before))
    assert r.passed and r.expected == "every CPU +0 SMIs"


def test_smbase_in_tseg_without_tseg_and_at_its_exact_edges():
    s = snap(0x1FFBD000)
    s.tseg = None
    r = check("smbase_in_tseg", s)
    assert (r.passed, r.observed, r.detail) == (False, "no TSEG",
                                                "ESMRAMC T_EN/G_SMRAME not set")
    s.tseg = Tseg(base=TSEG.base, size=0, locked=False)
    assert check("smbase_in_tseg", s).observed == "no TSEG"
    base, top = TSEG.base, TSEG.base + TSEG.size
    lowest = base - hw.SMI_ENTRY_OFFSET            # entry page exactly at TSEG base
    highest = top - hw.SAVE_STATE_END              # save state ends exactly at the top
    r = check("smbase_in_tseg", snap(lowest, highest))
    assert r.passed, r.detail
    assert r.expected == f"entry and save state in TSEG [{base:#x}, {top:#x})"
    r = check("smbase_in_tseg", snap(lowest - 1, highest + 1))
    assert not r.passed and r.cpus == [0, 1] and r.detail == "CPU 0, 1 outside TSEG"


def test_no_cpu_in_smm_names_them():
    r = check("no_cpu_in_smm", snap(0x1FFBD000, 0x1FFBF000, in_smm=(1,)))
    assert (r.passed, r.cpus, r.observed, r.detail) == (False, [1], {"in_smm": [1]},
                                                        "CPU 1 in SMM")
    r = check("no_cpu_in_smm", snap(0x1FFBD000, 0x1FFBF000))
    assert (r.passed, r.detail) == (True, "")


def test_smbase_unchanged_needs_a_snapshot_before():
    r = check("smbase_unchanged", snap(0x1FFBD000))
    assert (r.passed, r.observed, r.detail) == (
        False, "none", "add a snapshot step earlier in the scenario")


def test_passing_checks_say_nothing_and_failing_ones_say_why():
    s = snap(0x1FFBD000, 0x1FFBF000, online=[True, False])
    assert check("smi_features", s, ["broadcast", "cpu_hotplug"]).detail == ""
    assert check("smi_features", s, ["broadcast"]).detail == \
        "negotiated SMI features differ"
    assert check("cpus_present", s, 2).detail == ""
    assert check("cpus_present", s, 3).detail == "CPUs present: [0, 1]"
    r = check("cpus_online", s, 1)
    assert (r.passed, r.detail, r.cpus) == (True, "", [])
    r = check("cpus_online", s, 2)
    assert (r.passed, r.detail, r.cpus) == (False, "offline: [1]", [1])


def test_cpus_online_unknown_is_a_failure():
    r = check("cpus_online", snap(0x1FFBD000), 1)
    assert (r.passed, r.observed, r.detail) == (
        False, "unknown", "the guest did not report online CPUs")


def test_tseg_locked_with_registers_unknown_fails():
    s = snap(0x1FFBD000)
    s.registers = {"smram": 0x1A}
    r = check("tseg_locked", s)
    assert (r.passed, r.observed) == (False, "registers unknown")
    s.registers = {"esmramc": 0x3F}
    assert check("tseg_locked", s).observed == "registers unknown"


def test_guest_alive_words():
    s = snap(0x1FFBD000)
    assert check("guest_alive", s, guest_alive=True).observed == "answers"
    assert check("guest_alive", s, guest_alive=True).passed
    r = check("guest_alive", s, guest_alive=None)
    assert (r.passed, r.observed) == (False, "not asked")
    assert check("guest_alive", s, guest_alive=False).observed == "no answer"


def test_microcode_uniform_unknown_revisions_are_not_uniform():
    r = check("microcode_uniform", snap(0x1FFBD000, 0x1FFBF000, ucode=[None, None]))
    assert not r.passed
    r = check("microcode_uniform", snap(1, 2, 3, ucode=[7, 7, 9]))
    assert not r.passed and r.cpus == [2] and r.detail == "CPU 2 differ"
