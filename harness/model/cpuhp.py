"""QEMU's ACPI CPU hot-plug register block at 0x0CD8 (facts §1; hw/acpi/cpu.c).

Starts in legacy mode (32-byte present bitmap by APIC id); writing 0 at offset 0
switches to the modern 12-byte block for good (a flag). Supported accesses: the widths
OVMF and the AML use (4-byte selector/data, 1-byte status/control and command).
"""
from __future__ import annotations

from .. import hw


class CpuHotplugBlock:
    def __init__(self, arch_ids, on_eject=None, first_slot=0):
        self.arch_ids = list(arch_ids)          # by selector (= slot): APIC id
        n = len(self.arch_ids)
        self.n = n
        self.present = [False] * n
        self.is_inserting = [False] * n
        self.is_removing = [False] * n
        self.fw_remove = [False] * n
        self.ost_event = [0] * n
        self.ost_status = [0] * n
        self.ost_log = []                       # ACPI_DEVICE_OST events (slot, ev, st)
        self.selector = 0
        self.command = 0
        self.legacy = True
        self.on_eject = on_eject                # callback(slot): QEMU destroys the vCPU
        self.first_slot = first_slot            # slot of first_cpu: never ejected

    # --- QEMU-side callbacks (facts §1.5) -----------------------------------------
    def plug(self, slot, hotplug):
        """A CPU was created in ``slot``. Returns True if a GPE (SCI) is raised."""
        self.present[slot] = True
        if hotplug:
            self.is_inserting[slot] = True
            return True
        return False

    def unplug_request(self, slot):
        self.is_removing[slot] = True
        return True

    def unplugged(self, slot):
        self.present[slot] = False
        self.fw_remove[slot] = False

    # --- guest I/O ------------------------------------------------------------------
    def read(self, offset, size=1):
        if self.legacy:
            return self._legacy_read(offset, size)
        sel = self.selector
        if sel >= self.n:
            return 0
        if offset == hw.CPUHP_SEL:                      # command data 2
            if self.command == hw.CPUHP_CMD_GET_ARCH_ID:
                return (self.arch_ids[sel] >> 32) & 0xFFFFFFFF
            return 0
        if offset == hw.CPUHP_STAT:
            return (int(self.present[sel]) * hw.CPUHP_STAT_ENABLED
                    | int(self.is_inserting[sel]) * hw.CPUHP_STAT_INSERT
                    | int(self.is_removing[sel]) * hw.CPUHP_STAT_REMOVE
                    | int(self.fw_remove[sel]) * hw.CPUHP_STAT_FW_REMOVE)
        if offset == hw.CPUHP_DATA:
            if self.command == hw.CPUHP_CMD_GET_NEXT:
                val = sel
            elif self.command == hw.CPUHP_CMD_GET_ARCH_ID:
                val = self.arch_ids[sel] & 0xFFFFFFFF
            else:
                val = 0
            return val & ((1 << (8 * size)) - 1)
        return 0                                         # 5..7 and beyond

    def write(self, offset, value, size=1):
        if self.legacy:
            if offset == 0 and value == 0:
                self.legacy = False                     # one-way switch to modern
            return
        if offset == hw.CPUHP_SEL:
            self.selector = value & 0xFFFFFFFF          # always stored
            return
        sel = self.selector
        if sel >= self.n:
            return
        if offset == hw.CPUHP_STAT:
            self._control(sel, value & 0xFF)
        elif offset == hw.CPUHP_CMD:
            value &= 0xFF
            if value >= 4:
                return
            self.command = value
            if value == hw.CPUHP_CMD_GET_NEXT:
                self._scan()
        elif offset == hw.CPUHP_DATA:
            if self.command == hw.CPUHP_CMD_OST_EVENT:
                self.ost_event[sel] = value
            elif self.command == hw.CPUHP_CMD_OST_STATUS:
                self.ost_status[sel] = value
                self.ost_log.append((sel, self.ost_event[sel], value))

    def _control(self, sel, value):
        # first match wins (facts §1.3)
        if value & hw.CPUHP_STAT_INSERT:
            self.is_inserting[sel] = False
        elif value & hw.CPUHP_STAT_REMOVE:
            self.is_removing[sel] = False
        elif value & hw.CPUHP_STAT_EJECT:
            if self.present[sel] and sel != self.first_slot:
                if self.on_eject is not None:
                    self.on_eject(sel)
                self.unplugged(sel)
        elif value & hw.CPUHP_STAT_FW_REMOVE:
            if self.present[sel] and sel != self.first_slot:
                self.fw_remove[sel] = True

    def _scan(self):
        n = self.n
        start = self.selector
        ins, rem, fwr = self.is_inserting, self.is_removing, self.fw_remove
        for k in range(n):
            i = (start + k) % n
            if ins[i] or rem[i] or fwr[i]:
                self.selector = i
                return

    def _legacy_read(self, offset, size):
        val = 0
        for b in range(size):
            byte = 0
            for bit in range(8):
                apic = (offset + b) * 8 + bit
                for slot, a in enumerate(self.arch_ids):
                    if a == apic and self.present[slot]:
                        byte |= 1 << bit
            val |= byte << (8 * b)
        return val

    def status(self, slot):
        """Status bits of ``slot`` without touching the selector (for tests/snapshots)."""
        return (int(self.present[slot]) * hw.CPUHP_STAT_ENABLED
                | int(self.is_inserting[slot]) * hw.CPUHP_STAT_INSERT
                | int(self.is_removing[slot]) * hw.CPUHP_STAT_REMOVE
                | int(self.fw_remove[slot]) * hw.CPUHP_STAT_FW_REMOVE)
