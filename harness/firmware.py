"""Firmware: profiles (what kind of firmware a scenario wants), images (which files run)
and identities (which edk2 generation an image is, and so where it puts SMBASE).

This is the one loader of ``firmware/*.json`` for the whole package: the QEMU backend
uses it to find image files, the model to know how the firmware behaves.

*Profiles* (``firmware/ovmf-smm.json``, ``ovmf-nosmm.json``) name a kind of firmware.
Which image files implement it is found the way libvirt does, through QEMU's firmware
descriptors (``/usr/share/qemu/firmware/*.json``, docs/interop/firmware.json), unless a
build is named (``--firmware ovmf-2025.02``, see :mod:`harness.builds`) or a path given.

*Identities* say what an image is: its edk2 release, and from that the SMBASE layout,
computed the way that edk2 generation computes it (see :class:`DxeRelocation` and
:class:`PeiRelocation`). An image is known by its sha256 (``firmware/images.json``,
measured), by the version of the package it came from, or, failing both, by what one
real boot showed (:func:`learn_identity`, cached by sha256).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import hw
from .errors import ConfigError
from .hostio import sha256_file

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PROFILE_DIR = REPO / "firmware"
KNOWN_IMAGES = PROFILE_DIR / "images.json"
DESCRIPTOR_DIRS = (Path("/etc/qemu/firmware"), Path("/usr/share/qemu/firmware"))


# --- SMBASE layouts: two edk2 algorithms --------------------------------------------

@dataclass(frozen=True)
class DxeRelocation:
    """edk2 <= stable202402: PiSmmCpuDxeSmm relocates in DXE (``SmmRelocateBases``).

    One buffer of ``SMI_ENTRY_OFFSET + tile·(max−1)`` bytes is allocated from the SMRAM
    pool and SMBASE[i] = buffer + i·tile − SMI_ENTRY_OFFSET. The SMM core allocates
    pages top-down, so the buffer ends ``smram_above`` bytes below the top of TSEG:
    what the SMM core and the drivers dispatched before PiSmmCpuDxeSmm took. That
    amount is a property of one build (its drivers and options; Debian's OVMF 2022.11:
    0x2d000 on QEMU 7.2.22 and 10.0.2 alike), so it is measured per image, never
    assumed for another.
    """
    smram_above: int
    tile: int = hw.EDK2_SMM_TILE_SIZE
    kind: str = "dxe"

    def smbase(self, slot, maxcpus, tseg_base, tseg_top):
        size = hw.SMI_ENTRY_OFFSET + self.tile * (maxcpus - 1)
        buffer = tseg_top - self.smram_above - size
        return buffer + slot * self.tile - hw.SMI_ENTRY_OFFSET

    def describe(self):
        return (f"DXE relocation: SMBASE[i] = TSEG top - {self.smram_above:#x} - "
                f"({hw.SMI_ENTRY_OFFSET:#x} + {self.tile:#x}*(maxcpus-1)) + "
                f"i*{self.tile:#x} - {hw.SMI_ENTRY_OFFSET:#x}")


@dataclass(frozen=True)
class PeiRelocation:
    """edk2 >= stable202405: ``SmmRelocationLib`` relocates in PEI.

    The tiles start at the CpuStart of the last SMRAM HOB descriptor, which OVMF's
    ``CreateSmmSmramMemoryHob`` puts one page above the TSEG base, so SMBASE[i] =
    TsegBase + 0x1000 + i·tile − SMI_ENTRY_OFFSET (= TsegBase − 0x7000 + i·0x2000):
    SMBASE itself lies below TSEG, the SMRAM it opens (SMBASE + 0x8000 ..) inside.
    No constant of a build enters it.
    """
    tile: int = hw.EDK2_SMM_TILE_SIZE
    kind: str = "pei"

    def smbase(self, slot, maxcpus, tseg_base, tseg_top):
        return (tseg_base + hw.EDK2_PEI_SMM_CPU_START_OFFSET + slot * self.tile
                - hw.SMI_ENTRY_OFFSET)

    def describe(self):
        return (f"PEI relocation: SMBASE[i] = TSEG base + "
                f"{hw.EDK2_PEI_SMM_CPU_START_OFFSET:#x} + i*{self.tile:#x} - "
                f"{hw.SMI_ENTRY_OFFSET:#x}")


def layout_from_dict(d):
    if not d:
        return None
    if d.get("kind") == "pei":
        return PeiRelocation(tile=int(d.get("tile", hw.EDK2_SMM_TILE_SIZE)))
    if d.get("kind") == "dxe":
        return DxeRelocation(smram_above=int(d["smram_above"]),
                             tile=int(d.get("tile", hw.EDK2_SMM_TILE_SIZE)))
    raise ValueError(f"unknown layout kind {d.get('kind')!r}")


# --- edk2 generations ----------------------------------------------------------------

# edk2 stable tags (YYYYMM) where a behaviour the harness sees changed
EDK2_PEI_RELOCATION = 202405   # "UefiCpuPkg: Add SmmRelocationLib" used by OVMF's PEI
EDK2_DELAY_SMM_EXIT = 202411   # "OvmfPkg/CpuHotplugSmm: delay SMM exit"


def edk2_release(version):
    """The edk2 stable tag (YYYYMM) of a Debian/edk2 version string: Debian's ovmf
    package versions are the edk2 tag's date (2022.11-6 is edk2-stable202211)."""
    m = re.search(r"(?:stable)?(20\d\d)[.-]?(0[1-9]|1[0-2])", version or "")
    return int(m.group(1) + m.group(2)) if m else None


@dataclass(frozen=True)
class FirmwareIdentity:
    """What an image is, as far as the model needs to know it, and how that is known."""
    sha256: str
    version: str | None = None          # package or build version, when known
    edk2: int | None = None             # edk2 stable tag, YYYYMM
    layout: DxeRelocation | PeiRelocation | None = None
    delay_smm_exit: bool | None = None
    min_tseg_mbytes: int | None = None  # measured: below it the firmware stops in DXE
    known_by: str = "unknown"           # "sha256 (firmware/images.json)", "version", "learned ..."

    def describe(self):
        v = self.version or "version unknown"
        tag = f"edk2-stable{self.edk2}" if self.edk2 else "edk2 release unknown"
        lay = self.layout.describe() if self.layout else "SMBASE layout unknown"
        return f"{v} ({tag}; {lay}; known by {self.known_by})"

    def to_dict(self):
        d = asdict(self)
        d["layout"] = asdict(self.layout) if self.layout else None
        return d

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["layout"] = layout_from_dict(d.get("layout"))
        keep = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**keep)


def _known_images():
    try:
        return json.loads(KNOWN_IMAGES.read_text()).get("images", [])
    except (OSError, ValueError) as e:
        raise ConfigError(f"{KNOWN_IMAGES}: {e}") from None


def known_identity(version) -> FirmwareIdentity:
    """The measured identity of a known image by its version (tests and benchmarks name
    the build they model, rather than whatever the machine has installed)."""
    for entry in _known_images():
        if entry.get("version") == version:
            return FirmwareIdentity.from_dict({**entry,
                                               "known_by": "sha256 (firmware/images.json)"})
    raise ConfigError(f"no known firmware image of version {version!r} in {KNOWN_IMAGES}")


def learned_dir():
    from .settings import cache_dir
    return cache_dir() / "firmware"


def identify(code, version=None) -> FirmwareIdentity:
    """Who an image is: by sha256 (measured table, then what earlier boots learned),
    else by its version (``version`` from the build record, e.g. ``2025.02-8``): that
    names the edk2 generation, which fixes the layout where no constant of the build
    enters it (PEI relocation). Anything else stays unknown until a boot shows it
    (:mod:`harness.qemu.learn`)."""
    digest = sha256_file(code)
    for entry in _known_images():
        if entry.get("sha256") == digest:
            return FirmwareIdentity.from_dict({**entry, "sha256": digest,
                                               "known_by": "sha256 (firmware/images.json)"})
    learned = learned_dir() / f"{digest}.json"
    if learned.is_file():
        try:
            return FirmwareIdentity.from_dict(json.loads(learned.read_text()))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable learned firmware identity %s", learned)
    edk2 = edk2_release(version)
    if edk2 is None:
        return FirmwareIdentity(sha256=digest, version=version)
    layout = PeiRelocation() if edk2 >= EDK2_PEI_RELOCATION else None
    return FirmwareIdentity(sha256=digest, version=version, edk2=edk2, layout=layout,
                            delay_smm_exit=edk2 >= EDK2_DELAY_SMM_EXIT,
                            known_by="version")


def fit_layout(smbases, maxcpus, tseg_base, tseg_top):
    """The layout that reproduces SMBASEs seen in one boot (``{slot: smbase}``), or None.
    PEI relocation is tried first (it has no free parameter); DXE relocation's one
    parameter is solved from slot 0 and must then hold for every slot."""
    if not smbases:
        return None
    pei = PeiRelocation()
    if all(pei.smbase(s, maxcpus, tseg_base, tseg_top) == b for s, b in smbases.items()):
        return pei
    slots = sorted(smbases)
    tile = hw.EDK2_SMM_TILE_SIZE
    if len(slots) > 1:
        tile = (smbases[slots[1]] - smbases[slots[0]]) // (slots[1] - slots[0])
    s0 = slots[0]
    size = hw.SMI_ENTRY_OFFSET + tile * (maxcpus - 1)
    above = tseg_top - size - (smbases[s0] - s0 * tile + hw.SMI_ENTRY_OFFSET)
    dxe = DxeRelocation(smram_above=above, tile=tile)
    if above >= 0 and all(dxe.smbase(s, maxcpus, tseg_base, tseg_top) == b
                          for s, b in smbases.items()):
        return dxe
    return None


def remember_identity(ident: FirmwareIdentity, how):
    """Cache what a boot showed about an image (by sha256) for later runs."""
    import os
    ident = replace(ident, known_by=how)
    d = learned_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{ident.sha256}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(ident.to_dict(), indent=2) + "\n")
    tmp.replace(d / f"{ident.sha256}.json")
    return ident


# --- profiles -------------------------------------------------------------------------

@dataclass
class FirmwareProfile:
    """A kind of firmware (``firmware/*.json``), its discovery rule, and, once an image
    is chosen, what that image does (``identity``). The model reads its behaviour from
    here; the knobs below the line are edk2 behaviour the model can be told to vary."""
    name: str
    smm: bool
    description: str = ""
    discover: dict = field(default_factory=dict)
    negotiates_smi_features: bool = False
    path: Path | None = None
    identity: FirmwareIdentity | None = None
    # edk2 behaviour not in the JSON profiles (defaults = real OVMF); knobs for tests
    skip_known_apic_ids: bool = True        # race fix 1 (bugzilla 2929)
    directed_smi_before_init: bool = True   # race fix 2 (bugzilla 2929)
    pen_address: int = hw.OVMF_POST_SMM_PEN
    tseg_mbytes_default: int = hw.OVMF_Q35_TSEG_MBYTES_DEFAULT
    smbase_stride: int | None = None        # override of the layout's tile (tests)

    @property
    def layout(self):
        lay = self.identity.layout if self.identity else None
        if lay is not None and self.smbase_stride is not None:
            lay = replace(lay, tile=self.smbase_stride)
        return lay

    @property
    def delay_smm_exit(self):
        return bool(self.identity and self.identity.delay_smm_exit)

    @property
    def min_tseg_mbytes(self):
        return self.identity.min_tseg_mbytes if self.identity else None

    def smbase(self, slot, maxcpus, tseg_base, tseg_top):
        lay = self.layout
        if lay is None:
            raise ConfigError(f"firmware {self.describe()}: its SMBASE layout is unknown; "
                              f"run it once on QEMU (--backend qemu or both) so the "
                              f"harness learns it")
        return lay.smbase(slot, maxcpus, tseg_base, tseg_top)

    def with_identity(self, identity):
        return replace(self, identity=identity)

    def with_overrides(self, **kw):
        unknown = set(kw) - set(self.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown firmware profile override(s): {sorted(unknown)}")
        return replace(self, **kw)

    def describe(self):
        return self.name + (f" {self.identity.describe()}" if self.identity else "")


@dataclass
class FirmwareImages:
    code: Path
    vars_template: Path
    descriptor: Path | None = None    # the QEMU firmware descriptor it came from
    secure_pflash: bool = True        # SMM builds need cfi.pflash01 secure=on
    version: str | None = None        # of the build it came from, when known


def profile_names(profile_dir=PROFILE_DIR):
    return sorted(p.stem for p in Path(profile_dir).glob("*.json") if p.stem != "images")


def load_profile(name, profile_dir=PROFILE_DIR) -> FirmwareProfile:
    path = Path(profile_dir) / f"{name}.json"
    if name not in profile_names(profile_dir):
        known = ", ".join(profile_names(profile_dir)) or "none"
        raise ConfigError(f"unknown firmware profile {name!r} (known: {known})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    try:
        hp = data.get("hotplug") or {}
        return FirmwareProfile(name=data["name"], smm=bool(data["smm"]),
                               description=data.get("description", ""),
                               discover=data.get("discover") or {},
                               negotiates_smi_features=bool(
                                   hp.get("negotiates_smi_features", data["smm"])),
                               path=path)
    except KeyError as e:
        raise ConfigError(f"{path}: missing key {e.args[0]!r}") from None


def _descriptor_files(dirs):
    """Descriptors by file name; an earlier dir overrides a later one (firmware.json rules)."""
    seen = {}
    for d in reversed(list(dirs)):
        if d.is_dir():
            for f in d.glob("*.json"):
                seen[f.name] = f
    return [seen[k] for k in sorted(seen)]


def _matches(desc, rule):
    feats = set(desc.get("features", []))
    if not set(rule.get("features_all", [])) <= feats:
        return False
    if feats & set(rule.get("features_none", [])):
        return False
    mapping = desc.get("mapping", {})
    if mapping.get("device") != "flash" or "uefi" not in desc.get("interface-types", []):
        return False
    arch, machine = rule.get("architecture", "x86_64"), rule.get("machine", "pc-q35-*")
    for t in desc.get("targets", []):
        if t.get("architecture") == arch and any(
                fnmatch.fnmatch(machine.replace("*", "7.2"), m) or m == machine
                for m in t.get("machines", [])):
            return True
    return False


def discover(profile: FirmwareProfile, dirs=DESCRIPTOR_DIRS) -> FirmwareImages:
    """Find the image files for ``profile`` through QEMU's firmware descriptors."""
    for f in _descriptor_files(dirs):
        try:
            desc = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not _matches(desc, profile.discover):
            continue
        m = desc["mapping"]
        code = Path(m["executable"]["filename"])
        tmpl = Path(m.get("nvram-template", {}).get("filename", ""))
        if code.is_file() and tmpl.is_file():
            return FirmwareImages(code=code, vars_template=tmpl, descriptor=f,
                                  secure_pflash="requires-smm" in desc.get("features", []))
    where = " or ".join(str(d) for d in dirs)
    raise ConfigError(f"no firmware descriptor in {where} matches profile {profile.name!r} "
                      f"(install Debian's 'ovmf' package, or pass --ovmf-code/--ovmf-vars)")


def vars_beside(code: Path) -> Path:
    """The vars template beside a code image, as OVMF builds lay them out."""
    return code.with_name(code.name.replace("CODE", "VARS").replace(".secboot", "")
                          .replace(".strictnx", "").replace(".ms", "")
                          .replace(".snakeoil", ""))


def nosmm_beside(code: Path) -> Path:
    """The non-SMM image of the same build (OVMF_CODE_4M.fd beside .secboot.fd)."""
    return code.with_name(code.name.replace(".secboot", "").replace(".strictnx", ""))


def resolve(profile_name="ovmf-smm", ovmf_code=None, ovmf_vars=None, dirs=DESCRIPTOR_DIRS,
            version=None):
    """The profile (with the image's identity) and the image files to run: explicit
    paths win over discovery. A user's SMM build replaces the SMM firmware only; for the
    non-SMM profile the build's non-SMM image beside it is taken."""
    profile = load_profile(profile_name)
    if ovmf_code:
        code = Path(ovmf_code)
        if not profile.smm:
            code = nosmm_beside(code)
            ovmf_vars = None
        if not code.is_file():
            raise ConfigError(f"firmware code file not found: {code}")
        tmpl = Path(ovmf_vars) if ovmf_vars else vars_beside(code)
        if not tmpl.is_file():
            raise ConfigError(f"firmware vars template not found: {tmpl} (pass --ovmf-vars)")
        images = FirmwareImages(code=code, vars_template=tmpl, secure_pflash=profile.smm,
                                version=version)
    else:
        if ovmf_vars:
            raise ConfigError("--ovmf-vars needs --ovmf-code")
        images = discover(profile, dirs)
        images.version = version or system_ovmf_version(images.code)
    return profile.with_identity(identify(images.code, images.version)), images


def system_ovmf_version(code):
    """The Debian package version that owns an image file, if dpkg knows it."""
    import subprocess
    try:
        out = subprocess.run(["dpkg-query", "-S", str(Path(code).resolve())],
                             capture_output=True, text=True, timeout=10)
        pkg = out.stdout.split(":")[0].strip() if out.returncode == 0 else ""
        if not pkg:
            return None
        v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg],
                           capture_output=True, text=True, timeout=10)
        return v.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
