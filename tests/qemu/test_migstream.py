"""Migration-stream parser and snapshot decoder: synthetic streams (no VM) and real
QEMU q35 + OVMF boots (marked ``vm``)."""
from __future__ import annotations

import json
import os
import random
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from harness import hw
from harness.errors import BackendError
from harness.qemu import migstream as ms
from harness.qemu.migstream import parse_stream
from harness.qemu.process import spawn
from harness.qemu.snapshot_decode import decode_snapshot

QEMU = shutil.which("qemu-system-x86_64")
OVMF_SMM_CODE = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
OVMF_PLAIN_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
MIB = 1 << 20


# --- a synthetic stream, built byte by byte ------------------------------------------

def be16(v): return struct.pack(">H", v)
def be32(v): return struct.pack(">I", v)
def be64(v): return struct.pack(">Q", v)
def bstr(s): return bytes([len(s)]) + s.encode()


def _full(sid, name, inst, ver, body):
    return b"\x04" + be32(sid) + bstr(name) + be32(inst) + be32(ver) + body + b"\x7e" + be32(sid)


def _fld(name, typ, size, **kw):
    d = {"name": name}
    d.update({k: v for k, v in kw.items() if k != "struct"})
    d["type"] = typ
    if "struct" in kw:
        d["struct"] = kw["struct"]
    d["size"] = size
    return d


def _sub(name):
    return b"\x05" + bstr(name) + be32(1)


def build_stream(cpus=((0x1FFBD000, 0, 0, 5), (0x1FFBF000, 1 << 19, 0x40, 0)),
                 with_smi_feat=True, page_size=4096, ignore_shared=False):
    """cpus: (smbase, hflags, interrupt_request, smi_count) per CPU. ``ignore_shared``:
    as QEMU writes it with the capability x-ignore-shared and pc.ram shared: the
    capability named in the configuration, each block's address in the block list,
    no record of pc.ram's pages (a flash block's page is still sent)."""
    ps = page_size
    out = b"QEVM" + be32(3)
    out += b"\x07" + be32(10) + b"pc-q35-7.2"
    if ignore_shared:
        out += _sub("configuration/capabilities") + be32(1) + bstr("x-ignore-shared")
    # RAM: START with the block list, one PART with a page and a zero page, END
    out += b"\x01" + be32(0) + bstr("ram") + be32(0) + be32(4)
    if ignore_shared:
        out += (be64((3 * ps) | ms.RAM_SAVE_FLAG_MEM_SIZE) + bstr("pc.ram") + be64(2 * ps)
                + be64(0) + bstr("system.flash0") + be64(ps) + be64(0xFFFFF000))
        out += be64(ms.RAM_SAVE_FLAG_EOS) + b"\x7e" + be32(0)
        out += (b"\x02" + be32(0) + be64(ms.RAM_SAVE_FLAG_PAGE) + bstr("system.flash0")
                + b"\xcd" * ps)
    else:
        out += be64((2 * ps) | ms.RAM_SAVE_FLAG_MEM_SIZE) + bstr("pc.ram") + be64(2 * ps)
        out += be64(ms.RAM_SAVE_FLAG_EOS) + b"\x7e" + be32(0)
        out += (b"\x02" + be32(0) + be64(ms.RAM_SAVE_FLAG_PAGE) + bstr("pc.ram")
                + b"\xab" * ps)
        out += be64(ps | ms.RAM_SAVE_FLAG_ZERO | ms.RAM_SAVE_FLAG_CONTINUE) + b"\x00"
    out += be64(ms.RAM_SAVE_FLAG_EOS) + b"\x7e" + be32(0)
    out += b"\x03" + be32(0) + be64(ms.RAM_SAVE_FLAG_EOS) + b"\x7e" + be32(0)
    devices, sid = [], 1
    for i, (smbase, hflags, irq, smis) in enumerate(cpus):
        sid += 1
        out += _full(sid, "cpu_common", i, 1, be32(1 if i else 0) + be32(irq))
        devices.append({"name": "cpu_common", "instance_id": i, "vmsd_name": "cpu_common",
                        "version": 1, "fields": [_fld("halted", "uint32", 4),
                                                 _fld("interrupt_request", "uint32", 4)]})
        sid += 1
        body = be64(0) * 2 + be32(hflags) + be32(smbase) + b"\x00\x01\x00\x02"
        seg = {"vmsd_name": "segment", "version": 1,
               "fields": [_fld("selector", "uint16", 2), _fld("pad", "uint16", 2)]}
        desc = {"name": "cpu", "instance_id": i, "vmsd_name": "cpu", "version": 12,
                "fields": [_fld("env.regs", "uint64", 8, array_len=2),
                           _fld("env.hflags", "uint32", 4),
                           _fld("env.smbase", "uint32", 4),
                           _fld("env.segs", "struct", 4, array_len=1, struct=seg)]}
        if smis:
            body += _sub("cpu/msr_smi_count") + be64(smis)
            desc["subsections"] = [{"vmsd_name": "cpu/msr_smi_count", "version": 1,
                                    "fields": [_fld("env.msr_smi_count", "uint64", 8)]}]
        out += _full(sid, "cpu", i, 12, body)
        devices.append(desc)
        sid += 1
        out += _full(sid, "apic", i, 3, be32(0xFEE00900) + bytes([i]))
        devices.append({"name": "apic", "instance_id": i, "vmsd_name": "apic", "version": 3,
                        "fields": [_fld("apicbase", "uint32", 4), _fld("id", "uint8", 1)]})
    cfg = bytearray(256)
    cfg[hw.MCH_SMRAM] = 0x1A
    cfg[hw.MCH_ESMRAMC] = 0x3F
    cfg[hw.MCH_F_SMBASE] = 0x02
    cfg[hw.MCH_EXT_TSEG_MBYTES:hw.MCH_EXT_TSEG_MBYTES + 2] = (16).to_bytes(2, "little")
    cfg[hw.MCH_TOLUD:hw.MCH_TOLUD + 2] = (0x2000).to_bytes(2, "little")
    pci = {"vmsd_name": "PCIDevice", "version": 2,
           "fields": [_fld("version_id", "int32 le", 4), _fld("config[0]", "pci config", 256)]}
    sid += 1
    out += _full(sid, "0000:00:00.0/mch", 0, 1, struct.pack("<i", 2) + bytes(cfg) + b"\0")
    devices.append({"name": "0000:00:00.0/mch", "instance_id": 0, "vmsd_name": "mch",
                    "version": 1, "fields": [_fld("parent_obj", "struct", 260, struct=pci),
                                             _fld("unused", "unused_buffer", 1)]})
    lpc_body = struct.pack("<i", 2) + bytes(256) + bytes([4, 0x5A]) + be32(0x21)
    lpc = {"name": "0000:00:1f.0/ICH9LPC", "instance_id": 0, "vmsd_name": "ICH9LPC",
           "version": 1,
           "fields": [_fld("d", "struct", 260, struct=pci),
                      _fld("apm", "struct", 2, struct={"vmsd_name": "APM State", "version": 1,
                           "fields": [_fld("apmc", "uint8", 1), _fld("apms", "uint8", 1)]}),
                      _fld("pm", "struct", 4, struct={"vmsd_name": "ich9_pm", "version": 1,
                           "fields": [_fld("smi_en", "uint32", 4)]})]}
    if with_smi_feat:
        lpc_body += _sub("ICH9LPC/smi_feat") + bytes([7, 0, 0, 0, 0, 0, 0, 0, 1]) + be64(7)
        lpc["subsections"] = [{"vmsd_name": "ICH9LPC/smi_feat", "version": 1, "fields": [
            _fld("smi_guest_features_le", "uint8", 1, array_len=8),
            _fld("smi_features_ok", "uint8", 1),
            _fld("smi_negotiated_features", "uint64", 8)]}]
    sid += 1
    out += _full(sid, "0000:00:1f.0/ICH9LPC", 0, 1, lpc_body)
    devices.append(lpc)
    out += b"\x00"
    js = json.dumps({"page_size": ps, "devices": devices}).encode()
    out += b"\x06" + be32(len(js)) + js
    return out


@pytest.fixture
def synth(tmp_path):
    p = tmp_path / "synth.mig"
    p.write_bytes(build_stream())
    return p


def test_synthetic_stream_fields(synth):
    s = parse_stream(synth)
    assert s.machine == "pc-q35-7.2" and s.page_size == 4096
    blk = s.ram_blocks["pc.ram"]
    assert (blk.length, blk.pages, blk.zero_pages) == (8192, 1, 1)
    assert s.parts == 2
    cpu0, cpu1 = s.find("cpu")
    assert cpu0.field("env.smbase") == 0x1FFBD000
    assert cpu0.field("env.regs[1]") == 0 and cpu0.field("env.regs") == bytes(16)
    assert cpu0.field("env.segs[0].pad") == 2
    assert cpu0.field("env.msr_smi_count") == 5
    assert cpu0.subsections == ["cpu/msr_smi_count"]
    assert cpu1.field("env.msr_smi_count", 0) == 0 and not cpu1.has("env.msr_smi_count")
    with pytest.raises(KeyError):
        cpu1.field("env.msr_smi_count")
    mch = s.section("0000:00:00.0/mch")
    assert mch.field("parent_obj.version_id") == 2          # "int32 le"
    assert mch.field_le("parent_obj.config[0]", hw.MCH_TOLUD, 2) == 0x2000
    assert len(mch.raw) == mch.body_size == 4 + 256 + 1


def test_synthetic_snapshot_decode(synth):
    snap = decode_snapshot(parse_stream(synth))
    c0, c1 = snap.cpus
    assert (c0.index, c0.apic_id, c0.smbase, c0.in_smm, c0.halted) == (0, 0, 0x1FFBD000, False, False)
    assert (c0.smi_count, c0.pending_smi, c0.pending_init) == (5, False, False)
    assert (c1.apic_id, c1.in_smm, c1.halted, c1.pending_smi, c1.smi_count) == (1, True, True, True, 0)
    assert snap.tseg.base == 0x1F000000 and snap.tseg.size == 16 * MIB and snap.tseg.locked
    assert snap.registers == {"smram": 0x1A, "esmramc": 0x3F, "ext_tseg_mbytes": 16,
                              "tolud": 0x2000, "f_smbase": 2, "apm_cnt": 4, "apm_sts": 0x5A,
                              "smi_en": 0x21}
    assert snap.smi_features == {"requested": 7, "negotiated": 7, "ok": True,
                                 "names": ["broadcast", "cpu_hotplug", "cpu_hotunplug"]}


def test_synthetic_without_smi_feat_subsection(tmp_path):
    p = tmp_path / "s.mig"
    p.write_bytes(build_stream(with_smi_feat=False))
    snap = decode_snapshot(parse_stream(p))
    assert snap.smi_features == {"requested": 0, "negotiated": 0, "ok": False, "names": []}


def test_synthetic_stream_without_shared_ram(tmp_path):
    """x-ignore-shared: pc.ram is listed (its length still gives the top of low RAM)
    but none of its pages is sent; the device state decodes as from a full stream."""
    p = tmp_path / "small.mig"
    p.write_bytes(build_stream(ignore_shared=True))
    s = parse_stream(p)
    assert s.capabilities == ["x-ignore-shared"]
    assert {n: (b.length, b.pages, b.zero_pages) for n, b in s.ram_blocks.items()} == {
        "pc.ram": (8192, 0, 0), "system.flash0": (4096, 1, 0)}
    full = tmp_path / "full.mig"
    full.write_bytes(build_stream())
    assert decode_snapshot(s).to_dict() == decode_snapshot(parse_stream(full)).to_dict()


def _expect_error(tmp_path, data, *needles):
    p = tmp_path / "bad.mig"
    p.write_bytes(data)
    with pytest.raises(BackendError) as ei:
        parse_stream(p)
    msg = str(ei.value)
    assert "offset" in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_synthetic_errors(tmp_path):
    good = build_stream()
    _expect_error(tmp_path, b"QEVX" + good[4:], "bad magic", "offset 0")
    _expect_error(tmp_path, good[:4] + be32(2) + good[8:], "file version")
    _expect_error(tmp_path, good[:len(good) // 2], "no VM description")
    _expect_error(tmp_path, good[:6], "offset")
    cpu_at = good.index(b"\x04" + be32(3) + bstr("cpu"))
    _expect_error(tmp_path, good[:cpu_at] + b"\xee" + good[cpu_at + 1:],
                  "unknown section type 0xee", f"offset {cpu_at}")
    sub_at = good.index(b"\x05" + bstr("cpu/msr_smi_count"))
    _expect_error(tmp_path, good[:sub_at] + b"\x09" + good[sub_at + 1:],
                  "expected subsection 'cpu/msr_smi_count'", f"offset {sub_at}")
    ram_at = good.index(b"\x02" + be32(0)) + 5           # first PART record header
    _expect_error(tmp_path, good[:ram_at] + be64(0xFFF) + good[ram_at + 8:],
                  f"offset {ram_at}")
    for name in (b"\x06pc.ram", ):                        # unknown block
        at = good.index(name, ram_at)
        _expect_error(tmp_path, good[:at] + b"\x06pc.rom" + good[at + 7:], "unknown block")
    _expect_error(tmp_path, b"", "empty")


# --- real QEMU ----------------------------------------------------------------------

needs_qemu = pytest.mark.skipif(
    not (QEMU and os.path.exists(OVMF_SMM_CODE) and os.path.exists(OVMF_VARS)),
    reason="qemu-system-x86_64 or OVMF not installed")


class Vm:
    """A q35 + OVMF VM driven over QMP; ``close`` always kills QEMU."""

    def __init__(self, workdir, code=OVMF_SMM_CODE, smm=True, smp="2,maxcpus=4", mem=512,
                 paused=False):
        from qemu.qmp.legacy import QEMUMonitorProtocol
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        vars_fd = self.dir / "vars.fd"
        shutil.copyfile(OVMF_VARS, vars_fd)
        self.sock = self.dir / "qmp.sock"
        args = [QEMU, "-machine", f"q35,smm={'on' if smm else 'off'}", "-accel", "tcg"]
        if code == OVMF_SMM_CODE:
            args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        args += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}",
                 "-cpu", "qemu64", "-smp", smp, "-m", str(mem), "-vga", "none",
                 "-display", "none", "-serial", "none", "-net", "none", "-no-reboot",
                 "-qmp", f"unix:{self.sock},server=on,wait=off"]
        if paused:
            args.append("-S")
        self.log = open(self.dir / "qemu.log", "wb")
        self.proc = spawn(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.qmp = None
        try:
            deadline = time.monotonic() + 15
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"QEMU exited: {(self.dir / 'qemu.log').read_text()}")
                if self.sock.exists():
                    try:
                        q = QEMUMonitorProtocol(str(self.sock))
                        q.connect()
                        q.settimeout(30)
                        self.qmp = q
                        break
                    except (OSError, socket.error):
                        pass
                if time.monotonic() > deadline:
                    raise TimeoutError("QMP socket did not come up in 15 s")
                time.sleep(0.1)
        except BaseException:
            self.close()
            raise

    def cmd(self, name, **args):
        return self.qmp.cmd(name, **args)

    def snapshot_file(self, path, timeout=60):
        running = self.cmd("query-status")["running"]
        self.cmd("stop")
        try:
            self.cmd("migrate", uri=f"exec:cat > {path}")
            deadline = time.monotonic() + timeout
            while True:
                st = self.cmd("query-migrate").get("status")
                if st == "completed":
                    break
                if st in ("failed", "cancelled") or time.monotonic() > deadline:
                    raise RuntimeError(f"migration {st}")
                time.sleep(0.05)
        finally:
            if running:
                self.cmd("cont")
        return Path(path)

    def snapshot(self, path):
        return decode_snapshot(parse_stream(self.snapshot_file(path)))

    def wait_relocated(self, ncpus, timeout=90, idle=True, keep=None):
        """Poll snapshots until ncpus CPUs have left the default SMBASE and TSEG is
        locked (OVMF's SMM setup is done) and, with ``idle``, no CPU is in SMM.
        (With 3 vCPUs on 2 host cores OVMF spends 20-30 s in SMM rendezvous under
        TCG, so the cold-plug test does not wait for idle.)  The accepted stream is
        moved to ``keep``: a firmware-only VM sits in OVMF's boot manager, which
        keeps calling the SMM variable service, so a second snapshot taken after
        this one may well catch a CPU in SMM."""
        deadline = time.monotonic() + timeout
        path = self.dir / "poll.mig"
        while True:
            time.sleep(1.0)
            snap = self.snapshot(path)
            if (len(snap.cpus) == ncpus and snap.tseg and snap.tseg.locked
                    and all(c.smbase != hw.DEFAULT_SMBASE and not (idle and c.in_smm)
                            for c in snap.cpus)):
                if keep is not None:
                    path.replace(keep)
                return snap
            if time.monotonic() > deadline:
                raise TimeoutError(f"CPUs not relocated in {timeout} s: {snap.cpus}")

    def close(self):
        if self.qmp is not None:
            try:
                self.qmp.close()
            except Exception:
                pass
            self.qmp = None
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


@pytest.fixture(scope="module")
def smm_vm(tmp_path_factory):
    vm = Vm(tmp_path_factory.mktemp("smmvm"))
    try:
        yield vm
    finally:
        vm.close()


@pytest.fixture(scope="module")
def booted(smm_vm):
    """(snapshot, stream path, parse seconds) of the booted 2-of-4 CPU, 512 MiB VM."""
    path = smm_vm.dir / "booted.mig"
    smm_vm.wait_relocated(2, keep=path)
    t0 = time.perf_counter()
    stream = parse_stream(path)
    dt = time.perf_counter() - t0
    return decode_snapshot(stream), stream, path, dt


@needs_qemu
@pytest.mark.vm
def test_boot_cpus_relocated_into_tseg(booted):
    snap, stream, path, dt = booted
    assert stream.machine.startswith("pc-q35-")
    assert stream.ram_blocks["pc.ram"].length == 512 * MIB
    assert dt < 1.0, f"parse of {stream.size} bytes took {dt:.3f} s"
    assert snap.tseg.size == 16 * MIB and snap.tseg.base == 0x1F000000 and snap.tseg.locked
    assert snap.registers["ext_tseg_mbytes"] == 16
    assert (snap.registers["tolud"] & 0xFFF0) << 16 == 512 * MIB
    assert snap.registers["smram"] & hw.SMRAM_D_LCK
    assert snap.registers["smi_en"] & hw.SMI_EN_APMC
    assert [c.index for c in snap.cpus] == [0, 1]
    assert [c.apic_id for c in snap.cpus] == [0, 1]
    smbases = [c.smbase for c in snap.cpus]
    assert len(set(smbases)) == 2 and hw.DEFAULT_SMBASE not in smbases
    for c in snap.cpus:
        lo, hi = snap.tseg.base, snap.tseg.base + snap.tseg.size
        assert lo <= c.smbase and c.smbase + hw.SAVE_STATE_END <= hi
        assert not c.in_smm and not c.pending_smi and not c.pending_init
        assert c.smi_count > 0
    # Debian's OVMF 2022.11 layout (real-qemu-findings.md)
    if os.path.realpath(OVMF_SMM_CODE).startswith("/usr/share/OVMF/"):
        assert smbases == [0x1FFBD000, 0x1FFBF000]


@needs_qemu
@pytest.mark.vm
def test_boot_smi_features_negotiated(booted):
    snap = booted[0]
    f = snap.smi_features
    assert f["ok"] and f["requested"] == f["negotiated"]
    assert {"broadcast", "cpu_hotplug", "cpu_hotunplug"} <= set(f["names"])


@needs_qemu
@pytest.mark.vm
def test_real_stream_layout_from_description(booted):
    _, stream, _, _ = booted
    cpu0 = stream.section("cpu", 0)
    info = cpu0.field_info("env.smbase")
    assert info.size == 4 and info.type == "uint32"
    assert "cpu/msr_smi_count" in cpu0.subsections
    # every described device was walked, and the walk ended exactly at EOF + description
    assert len(stream.sections) == len(stream.vmdesc["devices"])
    common = stream.section("cpu_common", 1)
    assert set(common.fields) >= {"halted", "interrupt_request"}


@needs_qemu
@pytest.mark.vm
def test_real_stream_truncated_and_garbled(booted, tmp_path):
    _, stream, path, _ = booted
    data = Path(path).read_bytes()
    first_dev = stream.sections[0].offset
    for cut in (3, 20, 100, len(data) // 3, first_dev + 10, len(data) - 10):
        p = tmp_path / "cut.mig"
        p.write_bytes(data[:cut])
        with pytest.raises(BackendError, match="offset"):
            parse_stream(p)
    cpu = stream.section("cpu", 0)
    bad = bytearray(data)
    bad[cpu.offset] = 0x55
    p = tmp_path / "bad.mig"
    p.write_bytes(bad)
    with pytest.raises(BackendError, match=f"unknown section type 0x55 at offset {cpu.offset} "):
        parse_stream(p)
    # random byte damage outside page data: a clean BackendError or a successful parse,
    # never another exception
    rng = random.Random(1234)
    regions = [(0, 300), (first_dev, stream.vmdesc_offset + 64)]
    for _ in range(40):
        bad = bytearray(data)
        lo, hi = rng.choice(regions)
        for _ in range(rng.randint(1, 3)):
            bad[rng.randrange(lo, min(hi, len(bad)))] = rng.randrange(256)
        p.write_bytes(bad)
        try:
            parse_stream(p)
        except BackendError as e:
            assert "offset" in str(e)


@needs_qemu
@pytest.mark.vm
def test_coldplugged_cpu_is_relocated(tmp_path_factory):
    vm = Vm(tmp_path_factory.mktemp("coldplug"), paused=True)
    try:
        free = [c for c in vm.cmd("query-hotpluggable-cpus") if "qom-path" not in c]
        props = min(free, key=lambda c: sorted(c["props"].items()))["props"]
        vm.cmd("device_add", driver="qemu64-x86_64-cpu", id="c2", **props)
        vm.cmd("cont")
        snap = vm.wait_relocated(3, idle=False)
        assert [c.index for c in snap.cpus] == [0, 1, 2]
        assert snap.cpus[2].apic_id == 2
        smbases = [c.smbase for c in snap.cpus]
        assert len(set(smbases)) == 3
        for c in snap.cpus:
            assert snap.tseg.base <= c.smbase < snap.tseg.base + snap.tseg.size
            assert c.smi_count > 0
    finally:
        vm.close()


@needs_qemu
@pytest.mark.vm
@pytest.mark.skipif(not os.path.exists(OVMF_PLAIN_CODE), reason="no non-SMM OVMF")
def test_non_smm_firmware_leaves_default_smbase(tmp_path_factory):
    from harness.qemu.hmp_diag import info_registers
    vm = Vm(tmp_path_factory.mktemp("plain"), code=OVMF_PLAIN_CODE, smm=True)
    try:
        # wait until DXE's MP init has put every CPU into long mode, then a bit more
        deadline = time.monotonic() + 90
        while not all(c["long_mode"] for c in info_registers(vm.qmp)):
            assert time.monotonic() < deadline, "OVMF did not reach DXE"
            time.sleep(0.5)
        time.sleep(2)
        snap = vm.snapshot(vm.dir / "plain.mig")
        assert len(snap.cpus) == 2
        assert all(c.smbase == hw.DEFAULT_SMBASE for c in snap.cpus)
        assert all(c.smi_count == 0 and not c.in_smm for c in snap.cpus)
        assert snap.tseg is None
        assert not snap.smi_features["ok"] and snap.smi_features["names"] == []
    finally:
        vm.close()
