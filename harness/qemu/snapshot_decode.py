"""Decode a parsed migration stream (:mod:`harness.qemu.migstream`) into a
:class:`harness.snapshot.Snapshot`.

Stream field names used (as QEMU 7.2's VM description names them; checked on a real
q35 + OVMF stream, and all looked up by name, never by offset):

per vCPU (instance id = QEMU cpu-index)
  ``cpu``          ``env.smbase`` (uint32), ``env.hflags`` (uint32, bit 19 HF_SMM),
                   subsection ``cpu/msr_smi_count``: ``env.msr_smi_count`` (uint64; the
                   subsection is only sent when non-zero -> 0 when absent)
  ``cpu_common``   ``halted`` (uint32), ``interrupt_request`` (uint32; CPU_INTERRUPT_SMI
                   0x40, CPU_INTERRUPT_INIT 0x400)
  ``apic``         ``id`` (uint8 xAPIC ID register). The section's instance id is the
                   CPU's initial APIC ID (q35 machine types); the apic section that
                   follows a ``cpu`` section in the stream belongs to that CPU (they are
                   registered together when the CPU is realized). apic_id = instance id
                   when its low byte equals ``id``, else ``id``.

chipset
  ``0000:00:00.0/mch``      ``parent_obj.config[0]`` (256-byte PCI config space, little
                            endian): 0x9C F_SMBASE, 0x9D SMRAM, 0x9E ESMRAMC,
                            0x50 EXT_TSEG_MBYTES (16 bit), 0xB0 TOLUD (16 bit)
  ``0000:00:1f.0/ICH9LPC``  ``apm.apmc`` / ``apm.apms`` (ports 0xB2/0xB3),
                            ``pm.smi_en`` (uint32), subsection ``ICH9LPC/smi_feat``:
                            ``smi_guest_features_le`` (8 x uint8, LE = requested),
                            ``smi_features_ok`` (uint8), ``smi_negotiated_features``
                            (uint64)

TSEG: size from ESMRAMC.TSEG_SZ (1/2/8 MiB, or EXT_TSEG_MBYTES MiB for "extended"), only
when ESMRAMC.T_EN and SMRAM.G_SMRAME are both set (else ``tseg`` is None). QEMU puts it
at ``below_4g_mem_size - size``; the stream carries TOLUD (which OVMF programs to the
top of low RAM) and the ``pc.ram`` block length. The base is computed from TOLUD; when
TOLUD is still 0 (firmware did not program it) the ``pc.ram`` length is used if it is
below 2 GiB (q35 puts all of it below 4G then).
"""
from __future__ import annotations

from harness import hw
from harness.errors import BackendError
from harness.snapshot import CpuState, Snapshot, Tseg

MCH_SECTION = "0000:00:00.0/mch"
LPC_SECTION = "0000:00:1f.0/ICH9LPC"



def _pci_config_field(sec):
    for name in ("parent_obj.config[0]", "d.config[0]", "dev.config[0]"):
        if sec.has(name):
            return name
    for name, f in sec.fields.items():
        if f.type == "pci config":
            return name
    raise BackendError(f"migration stream: section {sec.name!r} has no PCI config field")


def _apic_for_cpus(stream):
    """cpu index -> apic section: the first apic section after each cpu section."""
    out, current = {}, None
    for sec in stream.sections:
        if sec.name == "cpu":
            current = sec.instance_id
        elif sec.name == "apic" and current is not None and current not in out:
            out[current] = sec
            current = None
    # fall back to matching instance ids for anything not adjacent
    for sec in stream.find("apic"):
        if sec not in out.values():
            out.setdefault(sec.instance_id, sec)
    return out


def _apic_id(apic_sec):
    if apic_sec is None:
        return None
    reg = apic_sec.field("id", None)
    if reg is None:
        return apic_sec.instance_id
    if apic_sec.instance_id is not None and (apic_sec.instance_id & 0xFF) == reg:
        return apic_sec.instance_id
    return reg


def decode_cpus(stream) -> list:
    commons = {s.instance_id: s for s in stream.find("cpu_common")}
    apics = _apic_for_cpus(stream)
    cpus = []
    for sec in stream.find("cpu"):
        idx = sec.instance_id
        common = commons.get(idx)
        irq = common.field("interrupt_request", None) if common else None
        halted = common.field("halted", None) if common else None
        cpus.append(CpuState(
            index=idx,
            apic_id=_apic_id(apics.get(idx)),
            smbase=sec.field("env.smbase"),
            in_smm=bool(sec.field("env.hflags") & hw.HFLAGS_SMM_BIT),
            halted=bool(halted) if halted is not None else None,
            smi_count=sec.field("env.msr_smi_count", 0),
            pending_smi=bool(irq & hw.CPU_INTERRUPT_SMI) if irq is not None else None,
            pending_init=bool(irq & hw.CPU_INTERRUPT_INIT) if irq is not None else None,
        ))
    cpus.sort(key=lambda c: c.index)
    return cpus


def decode_mch(stream) -> dict:
    mch = stream.section(MCH_SECTION, 0, None)
    if mch is None:
        return {}
    cfg = _pci_config_field(mch)
    return {
        "smram": mch.field_le(cfg, hw.MCH_SMRAM, 1),
        "esmramc": mch.field_le(cfg, hw.MCH_ESMRAMC, 1),
        "ext_tseg_mbytes": mch.field_le(cfg, hw.MCH_EXT_TSEG_MBYTES, 2),
        "tolud": mch.field_le(cfg, hw.MCH_TOLUD, 2),
        "f_smbase": mch.field_le(cfg, hw.MCH_F_SMBASE, 1),
    }


def tseg_size(regs):
    """TSEG bytes QEMU decodes from the registers; 0 when disabled, None if unknown."""
    esmramc, smram = regs.get("esmramc"), regs.get("smram")
    if esmramc is None or smram is None:
        return None
    ext = regs.get("ext_tseg_mbytes")
    if ext == hw.MCH_EXT_TSEG_QUERY:
        ext = None           # the guest never queried: QEMU's size is not in the stream
    return hw.tseg_size_bytes(esmramc, smram, ext)


def low_ram_top(stream, regs):
    tolud = regs.get("tolud") or 0
    top = (tolud & hw.MCH_TOLUD_MASK) << 16
    if top:
        return top
    blk = stream.ram_blocks.get("pc.ram")
    if blk is not None and blk.length < hw.Q35_LOWMEM_WHEN_SPLIT:
        return blk.length
    return None


def decode_tseg(stream, regs):
    size = tseg_size(regs)
    if not size:
        return None
    top = low_ram_top(stream, regs)
    if top is None or top < size:
        return None
    return Tseg(base=top - size, size=size, locked=bool(regs["smram"] & hw.SMRAM_D_LCK))


def decode_lpc(stream):
    lpc = stream.section(LPC_SECTION, 0, None)
    if lpc is None:
        return {}, {}
    regs = {
        "apm_cnt": lpc.field("apm.apmc", None),
        "apm_sts": lpc.field("apm.apms", None),
        "smi_en": lpc.field("pm.smi_en", None),
    }
    req_le = lpc.field("smi_guest_features_le", None)
    requested = int.from_bytes(req_le, "little") if isinstance(req_le, bytes) else 0
    negotiated = lpc.field("smi_negotiated_features", 0)
    ok = bool(lpc.field("smi_features_ok", 0))
    names = hw.smi_feature_names(negotiated)
    feats = {"requested": requested, "negotiated": negotiated, "ok": ok, "names": names}
    return regs, feats


def decode_snapshot(stream) -> Snapshot:
    """Stream -> Snapshot (cpus sorted by cpu index, tseg, registers, smi_features)."""
    try:
        cpus = decode_cpus(stream)
        regs = decode_mch(stream)
        tseg = decode_tseg(stream, regs)
        lpc_regs, feats = decode_lpc(stream)
    except KeyError as e:
        raise BackendError(f"migration stream {stream.path}: {e.args[0]}") from None
    regs.update(lpc_regs)
    if not cpus:
        raise BackendError(f"migration stream {stream.path}: no 'cpu' sections")
    return Snapshot(cpus=cpus, tseg=tseg, registers=regs, smi_features=feats)


def snapshot_from_file(path) -> Snapshot:
    from harness.qemu.migstream import parse_stream
    return decode_snapshot(parse_stream(path))
