"""Where guest RAM may be a shared file (harness/qemu/vm.py shared_ram_dir), without
QEMU: the QEMU version gate and the room on the tmpfs."""
import os

from harness.qemu.vm import shared_ram_dir


def test_a_directory_with_room_on_a_new_enough_qemu(tmp_path):
    assert shared_ram_dir(1, "7.2.22", parent=str(tmp_path)) == (str(tmp_path), None)
    assert shared_ram_dir(1, "11.1.3", parent=str(tmp_path)) == (str(tmp_path), None)


def test_qemu_before_5_0_has_no_machine_memory_backend(tmp_path):
    assert shared_ram_dir(1, "4.2.1", parent=str(tmp_path)) == \
        (None, "QEMU 4.2.1 < 5.0 has no -machine memory-backend")
    assert shared_ram_dir(1, "", parent=str(tmp_path))[0] is None


def test_too_little_room_keeps_ram_private(tmp_path):
    st = os.statvfs(tmp_path)
    free_mib = st.f_bavail * st.f_frsize >> 20
    d, why = shared_ram_dir(free_mib + 4096, "7.2.22", parent=str(tmp_path))
    assert d is None and why.endswith(f"MiB free, the guest {free_mib + 4096} MiB")


def test_a_missing_directory_keeps_ram_private(tmp_path):
    d, why = shared_ram_dir(1, "7.2.22", parent=str(tmp_path / "nope"))
    assert d is None and "nope" in why
