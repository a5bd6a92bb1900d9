"""Firmware profiles (``firmware/*.json``) and discovery through QEMU's firmware descriptors.

A profile names a kind of firmware (the SMM build, the non-SMM build) and carries what the
model needs to know about it (SMBASE tile layout). Which image files implement it is found
the way libvirt does: by reading ``/usr/share/qemu/firmware/*.json`` (QEMU's
docs/interop/firmware.json) and taking the first descriptor, in file-name order, whose
features match the profile. A user's own build is passed by path instead.
"""
from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

PROFILE_DIR = Path(__file__).resolve().parent.parent / "firmware"
DESCRIPTOR_DIRS = (Path("/etc/qemu/firmware"), Path("/usr/share/qemu/firmware"))


@dataclass
class FirmwareProfile:
    name: str
    smm: bool
    description: str = ""
    discover: dict = field(default_factory=dict)
    layout: dict | None = None
    hotplug: dict = field(default_factory=dict)
    path: Path | None = None

    def smbase_for_slot(self, slot, maxcpus, tseg_top):
        """OVMF's SMBASE for a CPU slot (CPU_HOT_PLUG_DATA index), from the profile layout."""
        if not self.smm or not self.layout:
            return None
        stride = self.layout["smbase_stride"]
        return tseg_top - self.layout["smbase_top_gap"] - maxcpus * stride + slot * stride


@dataclass
class FirmwareImages:
    code: Path
    vars_template: Path
    descriptor: Path | None = None    # the QEMU firmware descriptor it came from
    secure_pflash: bool = True        # SMM builds need cfi.pflash01 secure=on


def profile_names(profile_dir=PROFILE_DIR):
    return sorted(p.stem for p in Path(profile_dir).glob("*.json"))


def load_profile(name, profile_dir=PROFILE_DIR) -> FirmwareProfile:
    path = Path(profile_dir) / f"{name}.json"
    if not path.is_file():
        known = ", ".join(profile_names(profile_dir)) or "none"
        raise ConfigError(f"unknown firmware profile {name!r} (known: {known})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    try:
        return FirmwareProfile(name=data["name"], smm=bool(data["smm"]),
                               description=data.get("description", ""),
                               discover=data.get("discover") or {},
                               layout=data.get("layout"), hotplug=data.get("hotplug") or {},
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


def resolve(profile_name="ovmf-smm", ovmf_code=None, ovmf_vars=None, dirs=DESCRIPTOR_DIRS):
    """The profile and the image files to run: explicit paths win over discovery."""
    profile = load_profile(profile_name)
    if ovmf_code:
        code = Path(ovmf_code)
        if not code.is_file():
            raise ConfigError(f"firmware code file not found: {code}")
        if ovmf_vars:
            tmpl = Path(ovmf_vars)
        else:
            # the vars template beside the code, as OVMF builds lay them out
            guess = code.with_name(code.name.replace("CODE", "VARS").replace(".secboot", "")
                                   .replace(".ms", "").replace(".snakeoil", ""))
            tmpl = guess
        if not tmpl.is_file():
            raise ConfigError(f"firmware vars template not found: {tmpl} (pass --ovmf-vars)")
        return profile, FirmwareImages(code=code, vars_template=tmpl, secure_pflash=profile.smm)
    if ovmf_vars:
        raise ConfigError("--ovmf-vars needs --ovmf-code")
    return profile, discover(profile, dirs)


def env_defaults():
    """Firmware paths from the environment, for CI jobs that test their own builds."""
    return os.environ.get("SMM_HARNESS_OVMF_CODE"), os.environ.get("SMM_HARNESS_OVMF_VARS")
