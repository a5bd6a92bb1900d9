import sys

if sys.argv[1:2] == ["microcode"]:
    # the microcode toolkit alone: no scenario, QEMU or model modules to import
    from .microcode.cli import main as microcode_main
    raise SystemExit(microcode_main(sys.argv[1:]))

from .cli import main  # noqa: E402

raise SystemExit(main())
