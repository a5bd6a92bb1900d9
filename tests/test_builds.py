"""Named builds (harness/builds.py): the catalog, reading the mirror from apt sources,
Debian version picking, the QEMU wrapper, build.json, path checks and their one-line
errors; and one real fetch of a small build (ovmf-2025.02) into a temporary cache."""

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import builds
from harness.errors import ConfigError, HarnessError

MIRROR = "http://mirror.example/debian"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own cache; the user's is never touched."""
    d = tmp_path / "cache"
    monkeypatch.setenv("SMM_HARNESS_CACHE", str(d))
    monkeypatch.delenv("SMM_HARNESS_QEMU", raising=False)
    return d / "builds"


@pytest.fixture
def no_tools(monkeypatch):
    """Fail the test if any apt / dpkg / mmdebstrap command is run."""
    ran = []

    def refuse(argv, *a, **kw):
        ran.append(argv)
        raise AssertionError(f"ran {argv[0]}")
    monkeypatch.setattr(builds, "_run", refuse)
    return ran


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _ovmf_image(path: Path, size=2 << 20, fvh_block=3) -> Path:
    data = bytearray(size)
    if fvh_block is not None:
        off = fvh_block * 0x1000 + 0x28
        data[off:off + 4] = b"_FVH"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


# ---------------------------------------------------------------- catalog


def test_catalog_names_and_kinds():
    assert builds.build_names() == ["qemu-7.2", "qemu-10.0", "qemu-11.1", "qemu-7.2-smm-fix",
                                    "qemu-10.2-smm-fix", "ovmf-2022.11", "ovmf-2025.02",
                                    "ovmf-2026.08"]
    assert builds.build_names("qemu") == ["qemu-7.2", "qemu-10.0", "qemu-11.1",
                                          "qemu-7.2-smm-fix", "qemu-10.2-smm-fix"]
    assert builds.build_names("ovmf") == ["ovmf-2022.11", "ovmf-2025.02", "ovmf-2026.08"]
    assert len({e.name for e in builds.CATALOG}) == len(builds.CATALOG)
    for e in builds.CATALOG:
        assert e.kind in ("qemu", "ovmf") and \
            e.method in ("system", "debs", "mmdebstrap", "source")
        assert e.name.endswith(e.version) or e.name.endswith(f"{e.version}-{e.marker}")
        hash(e)                                    # frozen rows
    e = builds.catalog_entry("qemu-11.1")
    assert (e.suite, e.base_suite, e.method) == ("trixie-backports", "trixie", "mmdebstrap")
    assert builds.catalog_entry("ovmf-2026.08").packages == ("ovmf-generic",)


def test_unknown_name_lists_the_known_ones(no_tools):
    with pytest.raises(ConfigError) as e:
        builds.fetch(["qemu-10.0", "qemu-9.9"])
    msg = str(e.value)
    assert "qemu-9.9" in msg and "ovmf-2025.02" in msg and "\n" not in msg
    assert not no_tools                            # nothing fetched before the check
    with pytest.raises(ConfigError, match=r"qemu-7.2, qemu-10.0, qemu-11.1"):
        builds.resolve_qemu("qemu-12.0")
    with pytest.raises(ConfigError, match=r"ovmf-2022.11, ovmf-2025.02, ovmf-2026.08"):
        builds.resolve_firmware("ovmf-2099.01")
    with pytest.raises(ConfigError, match="OVMF build, not QEMU"):
        builds.resolve_qemu("ovmf-2025.02")
    with pytest.raises(ConfigError, match="QEMU build, not OVMF"):
        builds.resolve_firmware("qemu-11.1")


# ---------------------------------------------------------------- apt sources


ONE_LINE = f"""\
# the mirror of the main suite
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {MIRROR}/ bookworm main contrib
deb-src {MIRROR} bookworm main
deb http://security.example/debian-security bookworm-security main   # security
deb {MIRROR} bookworm-updates main
"""

DEB822 = f"""\
Types: deb
# http://old.example/archive/debian/20250520T000000Z
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
URIs: {MIRROR}
  http://second.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Enabled: no
"""


def test_one_line_sources():
    entries = builds.parse_one_line_sources(ONE_LINE)
    assert [e.suites for e in entries] == [("bookworm",), ("bookworm",),
                                           ("bookworm-security",), ("bookworm-updates",)]
    assert entries[0].uris == (MIRROR + "/",) and entries[0].components == ("main", "contrib")
    assert entries[1].types == ("deb-src",)
    assert builds.mirror_from_sources([("sources.list", ONE_LINE)], "bookworm") == MIRROR
    assert builds.mirror_from_sources([("sources.list", ONE_LINE)], "trixie") is None


def test_deb822_sources():
    entries = builds.parse_deb822_sources(DEB822)
    assert len(entries) == 2                       # the disabled paragraph is left out
    assert entries[1].uris == (MIRROR, "http://second.example/debian")
    assert entries[1].suites == ("bookworm", "bookworm-updates")
    assert builds.mirror_from_sources([("debian.sources", DEB822)], "bookworm") == MIRROR
    # the security suite is never taken for the main one
    only_security = DEB822.split("\n\n")[0]
    assert builds.mirror_from_sources([("x.sources", only_security)], "bookworm") is None


def test_mirror_from_system_files(tmp_path, monkeypatch):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text("# nothing here\n")
    (etc / "sources.list.d" / "other.list").write_text("deb http://other.example/apt stable main\n")
    (etc / "sources.list.d" / "debian.sources").write_text(DEB822)
    (etc / "sources.list.d" / "old.list.disabled").write_text("deb http://no.example bookworm main\n")
    files = builds._system_source_files((etc / "sources.list", etc / "sources.list.d"))
    assert sorted(n for n, _ in files) == ["debian.sources", "other.list", "sources.list"]
    assert builds.mirror_from_sources(files, "bookworm") == MIRROR
    monkeypatch.setattr(builds, "APT_SOURCES", (etc / "sources.list", etc / "sources.list.d"))
    monkeypatch.setattr(builds, "system_codename", lambda: "bookworm")
    assert builds.system_mirror() == MIRROR
    monkeypatch.setattr(builds, "system_codename", lambda: "trixie")
    with pytest.raises(HarnessError, match="no 'deb' source for Debian trixie"):
        builds.system_mirror()


def test_private_sources_are_signed_deb822():
    text = builds.private_sources(MIRROR, ["trixie"])
    entry, = builds.parse_deb822_sources(text)
    assert entry.uris == (MIRROR,) and entry.suites == ("trixie",) and entry.types == ("deb",)
    assert f"Signed-By: {builds.KEYRING}" in text and "trusted" not in text


def test_private_sources_components():
    text = builds.private_sources(MIRROR, ["bookworm"], components=("main", "non-free-firmware"))
    entry, = builds.parse_deb822_sources(text)
    assert entry.components == ("main", "non-free-firmware")
    assert builds.parse_deb822_sources(builds.private_sources(MIRROR, ["sid"]))[0].components \
        == ("main",)


def test_private_apt_options_never_name_system_state(tmp_path):
    apt = builds.PrivateApt(tmp_path, "sid", MIRROR)
    opts = " ".join(apt.options())
    assert "Dir::Etc::SourceList=/dev/null" in opts
    for key in ("SourceParts", "Dir::State::Lists", "Dir::Cache", "Dir::State::status"):
        value = opts.split(key + "=")[1].split()[0]
        assert value.startswith(str(tmp_path)), key


# ---------------------------------------------------------------- versions


MADISON = """\
qemu-system-x86 | 1:10.1.0+ds-1~bpo12+1 | http://mirror.example/debian bookworm-backports/main amd64 Packages
qemu-system-x86 | 1:10.0.2+ds-2+deb13u1~bpo12+1 | http://mirror.example/debian bookworm-backports/main amd64 Packages
qemu-system-x86 | 1:10.0.10+ds-1~bpo12+1 | http://mirror.example/debian bookworm-backports/main amd64 Packages
qemu-system-x86 | 1:10.01-1 | http://mirror.example/debian bookworm-backports/main amd64 Packages
qemu-system-common | 1:10.0.2+ds-2+deb13u1~bpo12+1 | http://mirror.example/debian bookworm-backports/main amd64 Packages
      ovmf | 2025.02-8+deb13u1 | http://mirror.example/debian trixie/main amd64 Packages
"""


def test_pick_version():
    assert builds.pick_version(MADISON, "qemu-system-x86", "10.0") == "1:10.0.10+ds-1~bpo12+1"
    assert builds.pick_version(MADISON, "qemu-system-x86", "10.1") == "1:10.1.0+ds-1~bpo12+1"
    assert builds.pick_version(MADISON, "qemu-system-x86", "11.1") is None
    assert builds.pick_version(MADISON, "qemu-system-common", "10.0") == \
        "1:10.0.2+ds-2+deb13u1~bpo12+1"
    assert builds.pick_version(MADISON, "ovmf", "2025.02") == "2025.02-8+deb13u1"
    assert builds.pick_version(MADISON, "ovmf", None) == "2025.02-8+deb13u1"
    assert builds.pick_version(MADISON, "ovmf-generic", None) is None
    assert builds.upstream_matches("2026.08+ds-2", "2026.08")
    assert not builds.upstream_matches("1:10.01-1", "10.0")


@pytest.mark.parametrize("a,b,sign", [
    ("1.0", "1.0", 0), ("1.0~rc1", "1.0", -1), ("1:1.0", "2.0", 1), ("1.0-1", "1.0-1+b1", -1),
    ("1:11.1.3+ds-2~bpo13+1", "1:11.1.3+ds-2", -1), ("10.0.10", "10.0.9", 1),
    ("2025.02-8+deb13u1", "2025.02-8", 1), ("1.0a", "1.0", 1), ("1.0", "1.0+", -1),
])
def test_compare_versions_like_dpkg(a, b, sign):
    r = builds.compare_versions(a, b)
    assert (r > 0) - (r < 0) == sign
    if shutil.which("dpkg"):
        op = {0: "eq", -1: "lt", 1: "gt"}[sign]
        assert subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0


def test_dpkg_status_and_deb_names():
    status = ("Package: qemu-system-x86\nStatus: install ok installed\nVersion: 1:11.1.3+ds-2~bpo13+1\n"
              "Description: x\n multi-line\n\nPackage: gone\nStatus: deinstall ok config-files\n"
              "Version: 1\n\nPackage: seabios\nStatus: install ok installed\nVersion: 1.17.0-1~bpo13+1\n")
    assert builds.parse_dpkg_status(status) == {"qemu-system-x86": "1:11.1.3+ds-2~bpo13+1",
                                               "seabios": "1.17.0-1~bpo13+1"}
    assert builds.deb_filename_version("1:10.0.2+ds-2") == "1%3a10.0.2+ds-2"


def test_last_line_prefers_apt_errors():
    proc = subprocess.CompletedProcess([], 100, "Reading package lists...\n",
                                       "W: Download is performed unsandboxed\n"
                                       "E: Can't find a source to download version '9' of 'ovmf'\n")
    assert builds.last_line(proc) == "E: Can't find a source to download version '9' of 'ovmf'"
    assert builds.last_line(subprocess.CompletedProcess([], 3, "", "")) == "exit status 3"


# ---------------------------------------------------------------- roots and wrappers


def test_in_root_keeps_absolute_links_inside(tmp_path):
    root = tmp_path / "root"
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").write_text("loader")
    (root / "usr/lib64").mkdir()
    os.symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
               root / "usr/lib64/ld-linux-x86-64.so.2")
    os.symlink("usr/lib", root / "lib")
    os.symlink("usr/lib64", root / "lib64")
    got = builds.in_root(root, "lib64/ld-linux-x86-64.so.2")
    assert got == root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert builds.in_root(root, "lib/x86_64-linux-gnu") == root / "usr/lib/x86_64-linux-gnu"


def _layout(loader=False):
    layout = {"root": "root", "qemu": builds.WRAPPER, "binary": "root/usr/bin/qemu-system-x86_64",
              "datadirs": ["root/usr/share/qemu", "root/usr/share/seabios"],
              "module_dir": "root/usr/lib/x86_64-linux-gnu/qemu", "loader": None,
              "library_path": []}
    if loader:
        layout.update(loader="root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                      library_path=["root/usr/lib/x86_64-linux-gnu"])
    return layout


def test_wrapper_text():
    d = Path("/cache/builds/qemu-11.1")
    text = builds.wrapper_script(d, _layout(loader=True), "QEMU emulator version 11.1.3")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/sh" and text.endswith('"$@"\n')
    assert f"QEMU_MODULE_DIR={d}/root/usr/lib/x86_64-linux-gnu/qemu" in lines
    assert "export QEMU_MODULE_DIR" in lines
    assert lines[-1] == (f"exec {d}/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "
                         f"--library-path {d}/root/usr/lib/x86_64-linux-gnu "
                         f"{d}/root/usr/bin/qemu-system-x86_64 -L {d}/root/usr/share/qemu "
                         f'-L {d}/root/usr/share/seabios "$@"')
    plain = builds.wrapper_script(d, _layout())
    assert plain.splitlines()[-1] == (f"exec {d}/root/usr/bin/qemu-system-x86_64 "
                                      f"-L {d}/root/usr/share/qemu "
                                      f'-L {d}/root/usr/share/seabios "$@"')
    spaced = builds.wrapper_script(Path("/a b/qemu-10.0"), _layout())
    assert "'/a b/qemu-10.0/root/usr/bin/qemu-system-x86_64'" in spaced


def test_wrapper_execs_with_module_dir_and_roms_first(tmp_path):
    """The wrapper replaces itself by QEMU (same PID), passes the arguments on after
    -L, and exports QEMU_MODULE_DIR."""
    d = tmp_path / "b"
    _script(d / "root/usr/bin/qemu-system-x86_64",
            'echo "pid=$$ module=$QEMU_MODULE_DIR"; for a in "$@"; do echo "arg=$a"; done\n')
    w = _script(d / builds.WRAPPER, builds.wrapper_script(d, _layout())[len("#!/bin/sh\n"):])
    proc = subprocess.Popen([str(w), "-M", "q35", "two words"], stdout=subprocess.PIPE, text=True)
    out = proc.communicate(timeout=10)[0].splitlines()
    assert out[0] == f"pid={proc.pid} module={d}/root/usr/lib/x86_64-linux-gnu/qemu"
    assert out[1:] == ["arg=-L", f"arg={d}/root/usr/share/qemu", "arg=-L",
                       f"arg={d}/root/usr/share/seabios", "arg=-M", "arg=q35", "arg=two words"]


# ---------------------------------------------------------------- records and the cache


def _fake_qemu_build(cache: Path, name="qemu-10.0", version="10.0.2"):
    """A cached QEMU build as a fetch leaves it, with a shell script for QEMU."""
    entry = builds.catalog_entry(name)
    d = cache / name
    layout = _layout(loader=entry.method == "mmdebstrap")
    _script(d / layout["binary"], f'echo "QEMU emulator version {version} (Debian test)"\n')
    line = f"QEMU emulator version {version} (Debian test)"
    _script(d / builds.WRAPPER, builds.wrapper_script(d, layout, line)[len("#!/bin/sh\n"):])
    packages = [{"name": "qemu-system-x86", "version": f"1:{version}+ds-1",
                 "deb": f"qemu-system-x86_1%3a{version}+ds-1_amd64.deb", "sha256": "ab" * 32}]
    record = builds.make_record(entry, d, layout, packages, line, version,
                                {layout["binary"]: builds.sha256_file(d / layout["binary"])}, 1.5)
    (d / builds.RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return d, record


def test_record_round_trip(cache):
    d, record = _fake_qemu_build(cache)
    read = builds.read_record(d)
    assert read == json.loads(json.dumps(record))
    for key in ("name", "kind", "suite", "packages", "paths", "sha256", "version",
                "fetched_at"):
        assert key in read
    assert read["suite"] == "bookworm-backports"
    assert read["paths"]["binary"] == str(d / "root/usr/bin/qemu-system-x86_64")
    b = builds.build_from_record(read, d)
    assert b == builds.Build(name="qemu-10.0", kind="qemu", version="10.0.2",
                             qemu=d / builds.WRAPPER, sha256=b.sha256, record=d / builds.RECORD,
                             source="fetched")
    assert b.sha256 == {str(d / "root/usr/bin/qemu-system-x86_64"):
                        builds.sha256_file(d / "root/usr/bin/qemu-system-x86_64")}
    assert builds.load_cached("qemu-10.0") == b


def test_ovmf_record_round_trip(cache, tmp_path):
    entry = builds.catalog_entry("ovmf-2025.02")
    d = cache / entry.name
    _ovmf_image(d / "root" / builds.OVMF_CODE)
    _ovmf_image(d / "root" / builds.OVMF_VARS, size=0x84000, fvh_block=0)
    layout = {"root": "root", "ovmf_code": "root/" + builds.OVMF_CODE,
              "ovmf_vars": "root/" + builds.OVMF_VARS}
    record = builds.make_record(entry, d, layout, [{"name": "ovmf", "version": "2025.02-8",
                                                     "deb": "ovmf.deb", "sha256": "cd" * 32}],
                                "2025.02-8", "2025.02-8", {}, 0.5)
    (d / builds.RECORD).write_text(json.dumps(record))
    b = builds.load_cached(entry.name)
    assert (b.kind, b.version, b.source) == ("ovmf", "2025.02-8", "fetched")
    assert b.ovmf_code == d / "root" / builds.OVMF_CODE and b.qemu is None
    (d / "root" / builds.OVMF_VARS).unlink()
    assert builds.load_cached(entry.name) is None     # incomplete: fetched again


def test_cached_fetch_is_one_line_and_runs_no_apt(cache, no_tools):
    d, _ = _fake_qemu_build(cache, "qemu-11.1", "11.1.3")
    said = []
    got, = builds.fetch(["qemu-11.1"], log=said.append)
    assert said == [f"builds: qemu-11.1: cached, QEMU 11.1.3 ({d / builds.WRAPPER})"]
    assert got.qemu == d / builds.WRAPPER and not no_tools
    assert builds.resolve_qemu("qemu-11.1", log=said.append) == got


def test_moved_cache_rewrites_the_wrapper(cache, tmp_path, monkeypatch):
    d, _ = _fake_qemu_build(cache)
    moved = tmp_path / "elsewhere"
    shutil.move(str(cache.parent), str(moved))
    monkeypatch.setenv("SMM_HARNESS_CACHE", str(moved))
    b = builds.load_cached("qemu-10.0")
    assert b.qemu == moved / "builds/qemu-10.0" / builds.WRAPPER
    assert str(d) not in b.qemu.read_text()
    assert subprocess.run([str(b.qemu), "--version"], capture_output=True,
                          text=True).stdout.startswith("QEMU emulator version 10.0.2")
    assert builds.read_record(moved / "builds/qemu-10.0")["dir"] == str(moved / "builds/qemu-10.0")


def test_records_of_another_format_are_not_trusted(cache):
    d = cache / "ovmf-2025.02"
    d.mkdir(parents=True)
    (d / builds.RECORD).write_text(json.dumps({"name": "ovmf-2025.02", "kind": "ovmf"}))
    assert builds.load_cached("ovmf-2025.02") is None
    (d / builds.RECORD).write_text("{not json")
    assert builds.load_cached("ovmf-2025.02") is None


def test_lock_is_exclusive(cache):
    import fcntl
    lock = cache / ".locks" / "x.lock"
    with builds._lock(lock):
        with open(lock) as fh:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_failed_download_is_one_line_and_leaves_nothing(cache, tmp_path, monkeypatch):
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"")
    monkeypatch.setattr(builds, "KEYRING", keyring)
    monkeypatch.setattr(builds, "system_mirror", lambda: MIRROR)
    ran = []

    def fake_run(argv, *a, **kw):
        ran.append(argv[-1] if argv[-2] != "madison" else "madison")
        if "madison" in argv:
            return subprocess.CompletedProcess(argv, 0, MADISON, "")
        if "download" in argv:
            return subprocess.CompletedProcess(
                argv, 100, "", f"Err:1 {MIRROR} trixie/main amd64 ovmf all 2025.02-8+deb13u1\n"
                "  404  Not Found\nE: Failed to fetch ovmf_2025.02-8+deb13u1_all.deb  404  Not Found\n")
        return subprocess.CompletedProcess(argv, 0, "", "")
    monkeypatch.setattr(builds, "_run", fake_run)
    said = []
    with pytest.raises(HarnessError) as e:
        builds.fetch(["ovmf-2025.02"], log=said.append)
    assert str(e.value) == ("ovmf-2025.02: apt-get download failed: E: Failed to fetch "
                            "ovmf_2025.02-8+deb13u1_all.deb  404  Not Found")
    assert ran == ["update", "madison", "ovmf=2025.02-8+deb13u1"]
    assert said == ["builds: ovmf-2025.02: apt-get update trixie (private lists)",
                    "builds: ovmf-2025.02: apt-get download ovmf=2025.02-8+deb13u1"]
    assert sorted(p.name for p in cache.iterdir()) == [".apt", ".locks"]   # no half build
    src = (cache / ".apt/trixie/sources.list.d/trixie.sources").read_text()
    assert f"URIs: {MIRROR}" in src and "Suites: trixie" in src


def test_suite_without_the_promised_version(cache, tmp_path, monkeypatch):
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"")
    monkeypatch.setattr(builds, "KEYRING", keyring)
    monkeypatch.setattr(builds, "system_mirror", lambda: MIRROR)
    monkeypatch.setattr(builds, "_run", lambda argv, *a, **kw: subprocess.CompletedProcess(
        argv, 0, MADISON if "madison" in argv else "", ""))
    with pytest.raises(HarnessError, match=r"^qemu-10.0: bookworm-backports has no "
                                           r"qemu-system-data 10.0.x \(qemu-system-data is not in"):
        builds.fetch(["qemu-10.0"], log=lambda m: None)


# ---------------------------------------------------------------- paths


def test_qemu_path_checks(tmp_path):
    with pytest.raises(ConfigError, match=r"^--qemu .*/nope: not a QEMU binary \(no such file\)$"):
        builds.resolve_qemu(str(tmp_path / "nope"))
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(ConfigError, match="not a QEMU binary .not an executable file"):
        builds.resolve_qemu(str(plain))
    other = _script(tmp_path / "other", "echo hello\n")
    with pytest.raises(ConfigError, match="not a QEMU binary .--version says 'hello'"):
        builds.resolve_qemu(str(other))
    failing = _script(tmp_path / "failing", "echo broken >&2; exit 1\n")
    with pytest.raises(ConfigError, match="not a QEMU binary .--version failed: broken"):
        builds.resolve_qemu(str(failing))
    fake = _script(tmp_path / "qemu", 'echo "QEMU emulator version 9.9.1 (test)"\n')
    b = builds.resolve_qemu(str(fake))
    assert (b.name, b.kind, b.version, b.qemu, b.source) == \
        (str(fake), "qemu", "9.9.1", fake, "path")


def test_qemu_env_variable(tmp_path, monkeypatch):
    fake = _script(tmp_path / "qemu", 'echo "QEMU emulator version 9.9.1"\n')
    monkeypatch.setenv("SMM_HARNESS_QEMU", str(fake))
    assert builds.resolve_qemu(None).qemu == fake


def test_ovmf_image_checks(tmp_path):
    assert builds.ovmf_image_problem(tmp_path / "none") == "no such file"
    assert builds.ovmf_image_problem(tmp_path) == "not a regular file"
    odd = tmp_path / "odd.fd"
    odd.write_bytes(b"\0" * 5000)
    assert "not a multiple of 4 KiB" in builds.ovmf_image_problem(odd)
    small = _ovmf_image(tmp_path / "small.fd", size=0x80000, fvh_block=0)
    assert "below 1024 KiB" in builds.ovmf_image_problem(small)
    assert builds.ovmf_image_problem(small, min_size=0x1000) is None
    blank = _ovmf_image(tmp_path / "blank.fd", fvh_block=None)
    assert "_FVH" in builds.ovmf_image_problem(blank)
    assert builds.ovmf_image_problem(_ovmf_image(tmp_path / "ok.fd")) is None


def test_firmware_path_and_vars_beside(tmp_path):
    code = _ovmf_image(tmp_path / "OVMF_CODE_4M.secboot.fd")
    with pytest.raises(ConfigError, match="vars template not found: .*OVMF_VARS_4M.fd"):
        builds.resolve_firmware(str(code))
    varsf = _ovmf_image(tmp_path / "OVMF_VARS_4M.fd", size=0x84000, fvh_block=0)
    b = builds.resolve_firmware(str(code))
    assert (b.kind, b.ovmf_code, b.ovmf_vars, b.source) == ("ovmf", code, varsf, "path")
    assert set(b.sha256) == {str(code), str(varsf)}
    mine = _ovmf_image(tmp_path / "my-vars.fd", size=0x84000, fvh_block=0)
    assert builds.resolve_firmware(str(code), vars_path=str(mine)).ovmf_vars == mine
    not_fw = tmp_path / "kernel"
    not_fw.write_bytes(b"\x7fELF" + b"\0" * 100)
    with pytest.raises(ConfigError, match=r"^--firmware .*kernel: not an OVMF image \(size"):
        builds.resolve_firmware(str(not_fw))
    with pytest.raises(ConfigError, match="no such file"):
        builds.resolve_firmware(str(tmp_path / "missing.fd"))


@pytest.mark.skipif(not os.path.exists("/usr/bin/qemu-system-x86_64"),
                    reason="no system QEMU")
def test_system_qemu(no_tools):
    b = builds.resolve_qemu(None)
    assert b.source == "system" and b.qemu is not None and b.version
    e = builds.catalog_entry("qemu-7.2")
    if b.name == "qemu-7.2":
        assert builds.fetch(["qemu-7.2"], log=lambda m: None)[0] == b
    assert e.files == ("/usr/bin/qemu-system-x86_64",)


# ---------------------------------------------------------------- CLI


def _parser():
    p = argparse.ArgumentParser()
    s = p.add_subparsers(dest="c")
    builds.register(s)
    return p


def test_cli_list(cache, capsys, no_tools):
    _fake_qemu_build(cache, "qemu-11.1", "11.1.3")
    a = _parser().parse_args(["builds", "list"])
    assert a.func(a) == 0
    out = capsys.readouterr().out.splitlines()
    assert [l.split()[0] for l in out] == builds.build_names()
    row = next(l for l in out if l.startswith("qemu-11.1"))
    assert row.split()[1:5] == ["qemu", "trixie-backports", "cached", "11.1.3"]
    assert row.endswith(str(cache / "qemu-11.1" / builds.WRAPPER))
    assert "(builds fetch ovmf-2025.02)" in next(l for l in out if l.startswith("ovmf-2025.02"))


def test_cli_fetch_names(capsys):
    a = _parser().parse_args(["builds", "fetch", "--force", "ovmf-2025.02", "qemu-11.1"])
    assert a.names == ["ovmf-2025.02", "qemu-11.1"] and a.force
    with pytest.raises(SystemExit):
        _parser().parse_args(["builds", "fetch", "qemu-9.9"])
    assert "invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------- a real fetch


@pytest.mark.net
@pytest.mark.skipif(not shutil.which("apt-get"), reason="needs apt-get (a Debian host)")
def test_fetch_ovmf_2025_02(cache, monkeypatch):
    """The real thing, on a small build: private apt, download, unpack, record; then
    the second fetch is one line and runs nothing."""
    said = []
    b, = builds.fetch(["ovmf-2025.02"], log=said.append)
    assert said[-1].startswith("builds: ovmf-2025.02: fetched OVMF 2025.02")
    assert (b.name, b.kind, b.source) == ("ovmf-2025.02", "ovmf", "fetched")
    assert b.version.startswith("2025.02-")
    assert b.ovmf_code == cache / "ovmf-2025.02/root/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
    assert b.ovmf_vars.name == "OVMF_VARS_4M.fd"
    assert builds.ovmf_image_problem(b.ovmf_code) is None
    assert b.sha256 == {str(b.ovmf_code): builds.sha256_file(b.ovmf_code),
                        str(b.ovmf_vars): builds.sha256_file(b.ovmf_vars)}
    record = json.loads(b.record.read_text())
    assert record["suite"] == "trixie" and record["kind"] == "ovmf"
    pkg, = record["packages"]
    assert pkg["name"] == "ovmf" and pkg["version"] == b.version
    assert len(pkg["sha256"]) == 64 and pkg["deb"].startswith("ovmf_2025.02")
    assert record["version"] == b.version and record["fetched_at"]
    assert record["paths"]["ovmf_code"] == str(b.ovmf_code)
    # nothing half made is left, and no .deb
    assert sorted(p.name for p in cache.iterdir()) == [".apt", ".locks", "ovmf-2025.02"]
    assert not list((cache / "ovmf-2025.02").rglob("*.deb"))

    def refuse(*a, **kw):
        raise AssertionError("a cached build ran a tool")
    monkeypatch.setattr(builds, "_run", refuse)
    said.clear()
    again = builds.resolve_firmware("ovmf-2025.02", log=said.append)
    assert again == b and len(said) == 1 and said[0].startswith("builds: ovmf-2025.02: cached")
