"""Unit helpers: bytes for humans, and the kernel's time units to seconds."""

from __future__ import annotations

import os

_BINARY_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))

#: v1 cpuacct.stat counts USER_HZ clock ticks (sysconf SC_CLK_TCK, 100 on Linux).
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

USEC_PER_S = 1_000_000
NSEC_PER_S = 1_000_000_000


def format_bytes(n: int | None) -> str:
    """``268435456`` -> ``"256 MiB"``, ``1610612736`` -> ``"1.5 GiB"``, ``None`` -> ``"unlimited"``."""
    if n is None:
        return "unlimited"
    sign = "-" if n < 0 else ""
    n = abs(n)
    for name, size in _BINARY_UNITS:
        if n >= size:
            if n % size == 0:
                return f"{sign}{n // size} {name}"
            return f"{sign}{n / size:.1f} {name}"
    return f"{sign}{n} B"
