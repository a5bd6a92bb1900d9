"""Learn an unknown firmware image's SMBASE layout from one real boot.

An image that neither ``firmware/images.json`` (by sha256) nor its version identifies
is booted once (2 of 4 CPUs, 512 MiB, 16 MiB TSEG), every CPU's SMBASE is read from the
migration stream, and the edk2 layout that reproduces all of them is kept, cached by the
image's sha256 (:func:`harness.firmware.remember_identity`). The report then says the
layout was learned, and from which boot.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from .. import firmware as fwmod
from ..errors import BackendError
from ..machine import MachineConfig
from .backend import QemuBackend

log = logging.getLogger(__name__)

PROBE = MachineConfig(cpus=2, maxcpus=4, memory_mib=512, tseg_mbytes=16, accel="tcg")


def learn_identity(ident: fwmod.FirmwareIdentity, qemu, qemu_version, code, vars_template,
                   say=print) -> fwmod.FirmwareIdentity:
    say(f"firmware: SMBASE layout of {code} unknown (sha256 {ident.sha256[:12]}); "
        f"learning it from one boot on QEMU {qemu_version}")
    b = QemuBackend(qemu=qemu, ovmf_code=code, ovmf_vars=vars_template,
                    firmware_version=ident.version)
    with tempfile.TemporaryDirectory(prefix="smm-learn-") as d:
        try:
            b.start(replace(PROBE), Path(d), paused=True)
            b.boot()
            snap = b.snapshot()
        finally:
            b.close()
    if snap.tseg is None:
        raise BackendError(f"learning the layout of {code}: no TSEG in the snapshot")
    smbases = {c.index: c.smbase for c in snap.cpus}
    layout = fwmod.fit_layout(smbases, PROBE.maxcpus, snap.tseg.base,
                              snap.tseg.base + snap.tseg.size)
    if layout is None:
        raise BackendError(f"learning the layout of {code}: SMBASEs "
                           f"{', '.join(hex(v) for v in smbases.values())} fit neither "
                           f"edk2 layout (DXE or PEI relocation)")
    how = (f"learned from a boot on QEMU {qemu_version}, "
           f"{time.strftime('%Y-%m-%d', time.gmtime())}")
    learned = fwmod.remember_identity(replace(ident, layout=layout), how)
    say(f"firmware: {learned.describe()}")
    return learned
