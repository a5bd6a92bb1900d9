"""Parse HMP ``info registers -a`` (QMP ``human-monitor-command``) into per-CPU dicts.

QEMU (x86_cpu_dump_state) prints, for each vCPU, a line ``CPU#<cpu-index>`` and then
the registers. Two layouts exist, chosen per CPU by whether CS is a 64-bit segment:

64-bit::

    RAX=... RBX=... RCX=... RDX=...            (also RSI RDI RBP RSP, R8 ..R15)
    RIP=000000001e0dd2cb RFL=00000206 [-----P-] CPL=0 II=0 A20=1 SMM=0 HLT=0
    CS =0038 0000000000000000 ffffffff 00af9a00 DPL=0 CS64 [-R-]

32-bit / real mode::

    EAX=00000000 EBX=... ECX=... EDX=00060fb1
    EIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1
    CS =f000 ffff0000 0000ffff 00009b00

Each CPU becomes a dict::

    {"index": int, "apic_id": None (not printed by QEMU), "in_smm": bool,
     "halted": bool, "cs": selector, "cs_base": int, "eip": RIP or EIP,
     "eflags": int, "cpl": int, "a20": int, "long_mode": bool (64-bit layout),
     "regs": {"rax": ..., "cr0": ..., "es": ..., "gdt_base": ...}}

All values are ints. Unknown lines are ignored, so newer QEMU versions that add lines
still parse.
"""
from __future__ import annotations

import re

_CPU_RE = re.compile(r"^CPU#(\d+)")
_SEG_RE = re.compile(
    r"^(ES|CS|SS|DS|FS|GS|LDT|TR)\s*=\s*([0-9a-fA-F]+)\s+([0-9a-fA-F]+)\s+"
    r"([0-9a-fA-F]+)\s+([0-9a-fA-F]+)")
_TABLE_RE = re.compile(r"^(GDT|IDT)\s*=\s*([0-9a-fA-F]+)\s+([0-9a-fA-F]+)")
_KV_RE = re.compile(r"(?<![\w\[])([A-Z][A-Z0-9]*)\s?=\s*([0-9a-fA-F]+)\b")


def _new_cpu(index):
    return {"index": index, "apic_id": None, "in_smm": None, "halted": None,
            "cs": None, "cs_base": None, "eip": None, "eflags": None, "cpl": None,
            "a20": None, "long_mode": None, "regs": {}}


def _finish(cpu):
    regs = cpu["regs"]
    if "smm" in regs:
        cpu["in_smm"] = bool(regs["smm"])
    if "hlt" in regs:
        cpu["halted"] = bool(regs["hlt"])
    if "rip" in regs:
        cpu["eip"], cpu["long_mode"] = regs["rip"], True
    elif "eip" in regs:
        cpu["eip"], cpu["long_mode"] = regs["eip"], False
    cpu["eflags"] = regs.get("rfl", regs.get("efl"))
    cpu["cpl"] = regs.get("cpl")
    cpu["a20"] = regs.get("a20")
    cpu["cs"] = regs.get("cs")
    cpu["cs_base"] = regs.get("cs_base")
    return cpu


def parse_info_registers(text) -> list:
    """Per-CPU dicts (see module doc), in the order QEMU printed them.

    Text without any ``CPU#`` line (``info registers`` without ``-a`` on old QEMU)
    is taken as one CPU of index 0 if it holds registers at all."""
    cpus, cur = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        m = _CPU_RE.match(line)
        if m:
            if cur is not None:
                cpus.append(_finish(cur))
            cur = _new_cpu(int(m.group(1)))
            continue
        m = _SEG_RE.match(line)
        if m:
            if cur is None:
                cur = _new_cpu(0)
            name = m.group(1).lower()
            sel, base, limit, flags = (int(g, 16) for g in m.groups()[1:])
            cur["regs"].update({name: sel, f"{name}_base": base,
                                f"{name}_limit": limit, f"{name}_flags": flags})
            dpl = re.search(r"DPL=(\d)", line)
            if dpl:
                cur["regs"][f"{name}_dpl"] = int(dpl.group(1))
            continue
        m = _TABLE_RE.match(line)
        if m:
            if cur is None:
                cur = _new_cpu(0)
            name = m.group(1).lower()
            cur["regs"][f"{name}_base"] = int(m.group(2), 16)
            cur["regs"][f"{name}_limit"] = int(m.group(3), 16)
            continue
        pairs = _KV_RE.findall(line)
        if not pairs:
            continue
        if cur is None:
            cur = _new_cpu(0)
        for k, v in pairs:
            cur["regs"].setdefault(k.lower(), int(v, 16))
    if cur is not None:
        cpus.append(_finish(cur))
    return cpus


def info_registers(qmp) -> list:
    """Run ``info registers -a`` over a QMP connection (anything with a
    ``cmd(name, **args)`` method, e.g. ``qemu.qmp.legacy.QEMUMonitorProtocol``) and
    parse it."""
    text = qmp.cmd("human-monitor-command", **{"command-line": "info registers -a"})
    if isinstance(text, dict):      # raw QMP response
        text = text.get("return", "")
    return parse_info_registers(text)


def summary(cpus) -> str:
    """One line per CPU for hang reports: ``cpu0 SMM=1 HLT=0 CS:IP=0038:1ffd79e5``."""
    out = []
    for c in cpus:
        cs = "????" if c["cs"] is None else f"{c['cs']:04x}"
        ip = "?" if c["eip"] is None else f"{c['eip']:x}"
        out.append(f"cpu{c['index']} SMM={int(bool(c['in_smm']))} "
                   f"HLT={int(bool(c['halted']))} CS:IP={cs}:{ip}")
    return "\n".join(out)
