"""``python -m harness images build [--force]``: build or reuse the guest image and
print its paths.

Why a module: the command line is the image's only entry point outside the QEMU
backend; it stays apart from the build so that importing the build adds no CLI.
"""
from __future__ import annotations

import logging

from .build import build_image

_log = logging.getLogger(__name__)


def _cmd_build(args) -> int:
    paths = build_image(force=getattr(args, "force", False), log=lambda m: print(m, flush=True),
                        guest_kernel=getattr(args, "guest_kernel", None))
    if getattr(args, "quiet", False):
        return 0
    print(f"guest_kernel: {paths.guest_kernel}")
    print(f"kernel: {paths.kernel}")
    print(f"initrd: {paths.initrd}")
    print(f"kernel_version: {paths.kernel_version}")
    print(f"key: {paths.key}")
    print(f"cmdline: {paths.cmdline}")
    return 0


def register(subparsers) -> None:
    """Add ``images build [--force]`` to an argparse sub-parsers object."""
    p = subparsers.add_parser("images", help="guest kernel + initramfs with the console agent")
    sub = p.add_subparsers(dest="images_command", metavar="COMMAND")
    sub.required = True
    b = sub.add_parser("build", help="build (or reuse the cached) guest image; prints its paths")
    b.add_argument("--force", action="store_true", help="rebuild even if a cached image matches")
    b.add_argument("--quiet", action="store_true",
                   help="print only what a build does (progress lines), not the paths")
    from harness.cli import add_guest_kernel_option
    add_guest_kernel_option(b)
    b.set_defaults(func=_cmd_build)
