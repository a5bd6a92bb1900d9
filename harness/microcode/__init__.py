"""x86 microcode toolkit: parse, validate, select and pack Intel/AMD microcode.

Why this exists: the harness boots guests with an early-microcode initrd and checks what
revision hot-added CPUs report, so it must know exactly which update Linux would pick and
must be able to build the byte layout Linux (and ``iucode_tool``) expects. Format facts
and their sources are in ``shared/design/microcode-facts.md``; each module cites the
section it implements.

Modules, one job each:

- ``checksum``  fast exact u32 word sums (the Intel checksum rule), no numpy;
- ``cpuid``     encode and decode CPUID(1).EAX, MSR 0x17, firmware file names;
- ``defects``   the error object every parser reports (offset, field, expected, found);
- ``intel``     Intel update headers, extended tables, concatenations; ``build_update``;
- ``amd``       AMD containers, equivalence tables, patch headers; ``build_container``;
- ``select``    what a CPU matches; iucode_tool's selection; packing like ``iucode_tool -w``;
- ``linux``     which update Linux loads, per kernel generation (6.1, 6.7+), early and late;
- ``iucode``    iucode_tool 2.3.1's selection (filters, dates, downgrade), rule for rule;
- ``corpus``    Debian's intel-microcode fetched into the cache (tests and benchmarks);
- ``cpio``      newc early-microcode archive, combined initrd, ``find_cpio_data``;
- ``cli``       ``register(subparsers)`` adding the ``microcode`` subcommand; ``main`` runs it
  alone (``python -m harness microcode`` imports only what the command uses).
"""
