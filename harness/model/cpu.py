"""One x86 CPU as far as SMM hot-plug is concerned (facts §4).

A CPU runs a *program*: a Python generator that yields one token per micro-step
(``STEP`` = did something, ``SPIN`` = a spin-loop iteration that changed nothing,
``HALT`` = executed HLT). The scheduler in :mod:`harness.model.engine` interleaves the
programs of all CPUs deterministically. SMM entry saves the running program into the
save-state area (keyed by address ``SMBASE + 0xFC00`` in :class:`Memory`, so two CPUs
sharing an SMBASE really do clobber each other's save state) and starts the program
found at ``SMBASE + 0x8000``; RSM reloads SMBASE from the save state's SMBASE field
and resumes the saved program.

How INIT, SIPI and SMI interact differs between hardware/KVM and QEMU's TCG; that is
:class:`CpuSemantics`, a frozen dataclass of flags, so tests can build deliberately
wrong machines (``dataclasses.replace(TCG, init_latched_in_smm=True)``).
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import hw
from ..microcode.cpuid import cpuid_signature

# program tokens ---------------------------------------------------------------------
STEP = 1        # progress: something in the machine may have changed
SPIN = 0        # one iteration of a spin loop that observed no change
HALT = 2        # HLT: the CPU stops until an event (SMI, INIT, SIPI, guest IPI) wakes it

# run states (``Cpu.run_state``) ---------------------------------------------------
RESET_WAIT_SIPI = "wait-for-sipi"
RUNNING = "running"
HALTED = "halted"

# CPU models the model knows: name -> (vendor, family, model, stepping)
CPU_MODELS = hw.QEMU_CPU_MODELS
DEFAULT_UCODE_REV = hw.QEMU_UCODE_REV_AMD_DEFAULT   # qemu64 is an AMD-vendor model


QEMU64_SIGNATURE = cpuid_signature(hw.QEMU64_FAMILY, hw.QEMU64_MODEL, hw.QEMU64_STEPPING)


def model_defaults(cpu_model):
    """(signature, default ucode-rev) for a CPU model; (None, None) if unknown."""
    known = CPU_MODELS.get(cpu_model)
    if known is None:
        return None, None
    vendor, fam, mod, step = known
    rev = hw.QEMU_UCODE_REV_AMD_DEFAULT if vendor == "AMD" else hw.QEMU_UCODE_REV_INTEL_DEFAULT
    return cpuid_signature(fam, mod, step), rev


def parse_int(value):
    if isinstance(value, str):
        return int(value, 0)
    return int(value)


@dataclass(frozen=True)
class CpuSemantics:
    """How a CPU treats INIT/SIPI/SMI around SMM. Each flag is one rule (facts §4.2/4.3)."""
    name: str
    # INIT received in SMM is held until RSM (hardware, KVM) instead of resetting the CPU
    init_latched_in_smm: bool
    # SIPI received while in SMM is discarded
    sipi_dropped_in_smm: bool
    # a pending SMI wakes a CPU that waits for SIPI (TCG) instead of staying pending
    smi_wakes_wait_for_sipi: bool
    # INIT throws away a pending SMI (TCG: interrupt_request := SIPI bit only)
    init_discards_pending_smi: bool
    # INIT puts SMBASE back to 0x30000 (no real implementation does: QEMU restores
    # smbase across INIT; the knob exists for comparison tests)
    init_resets_smbase: bool = False
    # WRMSR 0x79 (microcode update trigger): "qemu" = ignored, revision unchanged;
    # "hardware" = validated and loaded when newer (harness.model.microcode)
    wrmsr_ucode: str = "qemu"


KVM = CpuSemantics("kvm", init_latched_in_smm=True, sipi_dropped_in_smm=True,
                   smi_wakes_wait_for_sipi=False, init_discards_pending_smi=False)
# QEMU TCG as of 7.2.x with df32e5c568c9 backported (SIPI in SMM dropped); INIT in SMM is
# still not latched (facts §4.2).
TCG = CpuSemantics("tcg", init_latched_in_smm=False, sipi_dropped_in_smm=True,
                   smi_wakes_wait_for_sipi=True, init_discards_pending_smi=True)
# QEMU TCG with our patch series (contrib/qemu/, build qemu-7.2-smm-fix): INIT latched
# in SMM, SMI held while waiting for SIPI and kept across INIT -- KVM's rules.
TCG_SMM_FIX = CpuSemantics("tcg+smm-fix", init_latched_in_smm=True, sipi_dropped_in_smm=True,
                           smi_wakes_wait_for_sipi=False, init_discards_pending_smi=False)
SEMANTICS = {"kvm": KVM, "tcg": TCG, "tcg+smm-fix": TCG_SMM_FIX}


def semantics_for_build(accel, qemu_version=None):
    """The CPU rules of the build the model stands for: KVM's under kvm; under tcg,
    TCG's own unless the QEMU build is free of known bug ``tcg-init-in-smm`` (a build
    with our fix series; harness.known_bugs decides, from its --version)."""
    if accel != "tcg":
        return semantics(accel)
    from ..known_bugs import get
    if qemu_version is not None and not get("tcg-init-in-smm").affects("tcg", qemu_version):
        return TCG_SMM_FIX
    return TCG


def semantics(value):
    if isinstance(value, CpuSemantics):
        return value
    try:
        return SEMANTICS[value]
    except KeyError:
        raise ValueError(f"semantics must be one of {sorted(SEMANTICS)} or a CpuSemantics, "
                         f"got {value!r}") from None


class Memory:
    """What the model needs of guest memory: code by address and SMRAM save states.

    ``code``: entry address -> factory(cpu) returning a program generator.
    ``save``: save-state address (SMBASE + 0xFC00) -> dict with the fields the model uses.
    ``ucode``: address of an update's data (header + 48) -> the update's bytes, for
    WRMSR 0x79 / 0xC0010020 given an address.
    """
    __slots__ = ("code", "save", "ucode")

    def __init__(self):
        self.code = {}
        self.save = {}
        self.ucode = {}

    def clear(self):
        self.code.clear()
        self.save.clear()
        self.ucode.clear()


def _stray_code(cpu):
    """What runs where no code was installed: an endless loop that changes nothing."""
    cpu.where = "no-code"
    while True:
        yield SPIN


class Cpu:
    __slots__ = ("index", "apic_id", "slot", "is_bsp", "sem", "mem", "smbase", "in_smm",
                 "halted", "wait_sipi", "pending_smi", "pending_init", "smi_count", "prog",
                 "where", "ucode_rev", "signature", "removed", "msr_writes",
                 "vendor", "platform_id", "power_on_ucode_rev")

    def __init__(self, index, apic_id, slot, sem, mem, *, is_bsp=False,
                 ucode_rev=DEFAULT_UCODE_REV, signature=QEMU64_SIGNATURE,
                 vendor="AuthenticAMD", platform_id=0):
        self.index = index
        self.apic_id = apic_id
        self.slot = slot
        self.is_bsp = is_bsp
        self.sem = sem
        self.mem = mem
        self.ucode_rev = ucode_rev
        self.power_on_ucode_rev = ucode_rev     # a RESET drops a loaded update
        self.signature = signature
        self.vendor = vendor
        self.platform_id = platform_id
        self.removed = False
        self.msr_writes = 0
        self.reset()

    # --- reset / interrupts ------------------------------------------------------
    def reset(self):
        """Power-on / system_reset (not INIT): SMBASE back to default, APs wait for SIPI."""
        self.smbase = hw.DEFAULT_SMBASE
        self.ucode_rev = self.power_on_ucode_rev
        self.in_smm = False
        self.pending_smi = False
        self.pending_init = False
        self.smi_count = 0
        self.prog = None
        self.halted = True
        self.wait_sipi = not self.is_bsp
        self.where = "reset"

    @property
    def run_state(self):
        if self.halted and self.wait_sipi:
            return RESET_WAIT_SIPI
        return HALTED if self.halted else RUNNING

    def raise_smi(self):
        self.pending_smi = True

    def send_init(self):
        if self.in_smm and self.sem.init_latched_in_smm:
            self.pending_init = True
        else:
            self.do_init()

    def do_init(self):
        sem = self.sem
        self.pending_init = False
        self.in_smm = False
        self.prog = None
        self.halted = True
        self.wait_sipi = True
        self.where = "wait-for-sipi"
        if sem.init_discards_pending_smi:
            self.pending_smi = False
        if sem.init_resets_smbase:
            self.smbase = hw.DEFAULT_SMBASE

    def send_sipi(self, vector):
        """Start-up IPI: start at vector << 12 if waiting for SIPI. True if applied."""
        if not self.wait_sipi:
            return False
        if self.in_smm and self.sem.sipi_dropped_in_smm:
            return False
        self.wait_sipi = False
        self.halted = False
        factory = self.mem.code.get(vector << 12)
        self.prog = factory(self) if factory else _stray_code(self)
        return True

    def deliverable(self):
        """Can an event be taken at the next instruction boundary?"""
        if self.pending_init and not (self.in_smm and self.sem.init_latched_in_smm):
            return True
        if self.pending_smi and not self.in_smm:
            return not (self.wait_sipi and self.halted) or self.sem.smi_wakes_wait_for_sipi
        return False

    def take_event(self):
        if self.pending_init and not (self.in_smm and self.sem.init_latched_in_smm):
            self.do_init()
        elif self.pending_smi and not self.in_smm:
            self.enter_smm()

    # --- SMM ----------------------------------------------------------------------
    def enter_smm(self):
        smbase = self.smbase
        resume_halted = self.prog is None     # woken from wait-for-SIPI (TCG only)
        self.mem.save[smbase + hw.SAVE_STATE_OFFSET] = {
            "smbase": smbase, "revision": hw.SMM_REVISION_ID_X86_64,
            "prog": self.prog, "halted": resume_halted, "where": self.where,
        }
        self.pending_smi = False
        self.in_smm = True
        self.halted = False
        self.smi_count += 1
        self.where = "smm:entry"
        factory = self.mem.code.get(smbase + hw.SMI_ENTRY_OFFSET)
        self.prog = factory(self) if factory else _stray_code(self)

    def save_state(self):
        """This CPU's save-state area (as addressed by its current SMBASE)."""
        return self.mem.save.get(self.smbase + hw.SAVE_STATE_OFFSET)

    def rsm(self):
        ss = self.mem.save.get(self.smbase + hw.SAVE_STATE_OFFSET)
        self.in_smm = False
        if ss is None:      # nothing saved there: model as a shutdown-like stop
            self.prog, self.halted, self.where = None, True, "rsm-without-save-state"
            return
        if ss["revision"] & hw.SMM_REVISION_SMBASE_RELOC:
            self.smbase = ss["smbase"] & 0xFFFFFFFF
        # a HLT interrupted by the SMI is not restarted: execution continues after it
        self.prog, self.halted, self.where = ss["prog"], ss["halted"], ss["where"]

    # --- MSRs -----------------------------------------------------------------------
    def rdmsr(self, msr):
        if msr == hw.MSR_IA32_BIOS_SIGN_ID:
            return self.ucode_rev
        raise KeyError(f"MSR {msr:#x} not modelled")

    def wrmsr(self, msr, value):
        if msr == hw.MSR_IA32_BIOS_UPDT_TRIG:
            self.msr_writes += 1
            if self.sem.wrmsr_ucode == "qemu":
                return          # QEMU ignores the update trigger: revision unchanged
            if self.sem.wrmsr_ucode == "hardware":
                from .microcode import apply_update
                if isinstance(value, int):
                    value = self.mem.ucode.get(value, b"")
                return apply_update(self, value, "hardware")
            raise ValueError(f"unknown wrmsr_ucode policy {self.sem.wrmsr_ucode!r}")
        if msr == hw.MSR_IA32_BIOS_SIGN_ID:
            return              # QEMU: writes to 0x8B do not change ucode-rev
        if msr == hw.MSR_AMD64_PATCH_LOADER:
            self.msr_writes += 1
            from .microcode import apply_amd_patch
            if isinstance(value, int):
                value = self.mem.ucode.get(value, b"")
            return apply_amd_patch(self, value, self.sem.wrmsr_ucode)
        raise KeyError(f"MSR {msr:#x} not modelled")

    def __repr__(self):
        return (f"Cpu(index={self.index}, apic={self.apic_id}, smbase={self.smbase:#x}, "
                f"smm={self.in_smm}, {self.run_state}, {self.where})")
