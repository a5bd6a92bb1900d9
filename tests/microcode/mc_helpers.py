"""Shared helpers for the microcode tests: byte patching, the CLI driver, the oracle path."""

import argparse
import shutil
import struct

from harness.microcode.cli import register

IUCODE = shutil.which("iucode_tool") or (
    "/usr/sbin/iucode_tool" if shutil.which("/usr/sbin/iucode_tool") else None)


def put_u32(buf, off, value):
    """Return ``buf`` with the u32 at ``off`` replaced."""
    b = bytearray(buf)
    struct.pack_into("<I", b, off, value & 0xFFFFFFFF)
    return bytes(b)


def get_u32(buf, off):
    return struct.unpack_from("<I", buf, off)[0]


def run_cli(*argv):
    """Tiny stand-in for the main harness CLI: returns the handler's exit status."""
    parser = argparse.ArgumentParser(prog="smm-harness")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["microcode", *map(str, argv)])
    return args.func(args)


