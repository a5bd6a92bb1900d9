#!/usr/bin/env bash
# Install whatever is missing for smm-hotplug-harness on Debian 12, idempotently:
#   1. Debian packages: QEMU, OVMF, busybox-static, cpio, iucode-tool
#   2. the Python virtualenv .venv/ with the package and its test dependencies
#   3. the guest image (kernel + initramfs, cached under images/build/)
# Quick when everything is there: each part checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*" >&2; }

APT_PACKAGES=(qemu-system-x86 ovmf busybox-static cpio iucode-tool)
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
ls /usr/share/qemu/firmware/*.json >/dev/null 2>&1 && [ -e /usr/share/OVMF/OVMF_CODE_4M.secboot.fd ] || missing+=(ovmf)
command -v cpio >/dev/null || missing+=(cpio)
command -v iucode_tool >/dev/null || [ -x /usr/sbin/iucode_tool ] || missing+=(iucode-tool)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    say "installing Debian packages: ${missing[*]}"
    # another setup (a second checkout, a CI run) may hold dpkg's lock: wait for it
    lock=(-o DPkg::Lock::Timeout=600)
    $SUDO apt-get "${lock[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
    say "creating .venv and installing the harness (pip)"
    [ -x .venv/bin/python ] || python3 -m venv .venv
    log=$(mktemp)
    if ! { .venv/bin/python -m pip install -q --upgrade pip &&
           .venv/bin/python -m pip install -q -e '.[test]'; } >"$log" 2>&1; then
        grep -v '^WARNING: Location' "$log" | tail -n 20 >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# the guest images, one per guest kernel (the tests boot both); the first build of the
# harness kernel says what it does (about 7 min on 2 idle cores; pytest's 300 s per-test
# timeout would not wait for it inside a test)
.venv/bin/python -m harness images build --quiet --guest-kernel debian
.venv/bin/python -m harness images build --quiet --guest-kernel harness
