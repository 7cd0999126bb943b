"""Strict parsing of the durations and sizes operators write in config files.

Durations: ``500ms``, ``10s``, ``1m30s``, ``2h``, ``1d`` (units ms, s, m, h, d;
parts in decreasing order; a bare number is refused because "10" could mean
seconds or minutes). Sizes: ``256M``, ``1G``, ``512MiB``, ``4096`` (plain bytes);
K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024 as in the kernel's cgroup files,
``KB``/``MB``/``GB`` are powers of 1000.

Both have a documented ceiling, so that no config value or request body can
turn into ``Infinity`` in JSON or overflow a 64-bit field: durations at most
:data:`MAX_DURATION` (366 days; callers may pass a tighter ``max_s``), sizes
at most :data:`MAX_SIZE` (1024T: 1 PiB). Beyond it :class:`OutOfRange` (a ValueError)
says the value and the maximum; callers add the key.
"""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", re.ASCII)  # ASCII: no "１s" lookalikes
_DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_ORDER = ["d", "h", "m", "s", "ms"]

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B?|[KMGT]B|B)?", re.IGNORECASE | re.ASCII)
_SIZE_FACTORS = {
    "": 1, "b": 1,
    "k": 1024, "ki": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mi": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gi": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "ti": 1024**4, "tib": 1024**4, "tb": 1000**4,
}

DURATION_HELP = "a duration such as 500ms, 10s, 1m30s or 2h"
SIZE_HELP = "a size such as 256M, 1G, 512MiB or a plain number of bytes"

MAX_DURATION = "366d"
MAX_DURATION_S = 366 * 86400.0
MAX_SIZE = "1024T"
MAX_SIZE_BYTES = 1024**5
# Digits beyond these cannot be under the maximum; refusing them first keeps int()/float() cheap and finite.
_MAX_NUMBER_CHARS = 40


class OutOfRange(ValueError):
    """A well-formed duration or size above its maximum; ``.maximum`` is the limit as the operator writes it."""

    def __init__(self, message: str, *, maximum: str) -> None:
        super().__init__(message)
        self.maximum = maximum


def parse_duration(text: str, *, max_s: float = MAX_DURATION_S) -> float:
    """Seconds in ``text``; raises ValueError with the accepted forms, :class:`OutOfRange` above ``max_s``."""
    if not isinstance(text, str):
        raise ValueError(f"expected {DURATION_HELP}, got {text!r}")
    s = text.strip()
    pos = 0
    total = 0.0
    last_rank = -1
    for match in _DURATION_PART.finditer(s):
        if match.start() != pos:
            break
        unit = match.group(2)
        rank = _DURATION_ORDER.index(unit)
        if rank <= last_rank:
            raise ValueError(f"{text!r}: units must go from largest to smallest, each once; expected {DURATION_HELP}")
        last_rank = rank
        if len(match.group(1)) > _MAX_NUMBER_CHARS:
            total = float("inf")
        else:
            total += float(match.group(1)) * _DURATION_UNITS_S[unit]
        pos = match.end()
    if pos != len(s) or not s:
        raise ValueError(f"{text!r} is not {DURATION_HELP}")
    if total > max_s:
        maximum = format_duration_exact(max_s)
        raise OutOfRange(f"{_shown(text)} is longer than the maximum of {maximum}", maximum=maximum)
    return total


def parse_size(text: str | int) -> int:
    """Bytes in ``text``; raises ValueError with the accepted forms."""
    if isinstance(text, bool):
        raise ValueError(f"expected {SIZE_HELP}, got {text!r}")
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"{_shown(text)}: a size must be positive")
        if text > MAX_SIZE_BYTES:
            raise OutOfRange(f"{_shown(text)} is more than the maximum of {MAX_SIZE}", maximum=MAX_SIZE)
        return text
    if not isinstance(text, str):
        raise ValueError(f"expected {SIZE_HELP}, got {text!r}")
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not {SIZE_HELP}")
    number, unit = match.group(1), (match.group(2) or "").lower()
    if unit not in _SIZE_FACTORS:
        raise ValueError(f"{text!r}: unknown unit {match.group(2)!r}; expected {SIZE_HELP}")
    if _SIZE_FACTORS[unit] == 1 and "." in number:
        raise ValueError(f"{text!r}: a number of bytes must be whole; expected {SIZE_HELP}")
    if len(number) > _MAX_NUMBER_CHARS:
        raise OutOfRange(f"{_shown(text)} is more than the maximum of {MAX_SIZE}", maximum=MAX_SIZE)
    value = float(number) * _SIZE_FACTORS[unit]
    if value > MAX_SIZE_BYTES:
        raise OutOfRange(f"{_shown(text)} is more than the maximum of {MAX_SIZE}", maximum=MAX_SIZE)
    if int(value) <= 0:
        raise ValueError(f"{text!r}: a size must be positive")
    return int(value)


def _shown(value: object) -> str:
    """``repr(value)``, shortened: a message quotes the value, not all 10,000 digits of it."""
    if isinstance(value, int) and not -(10**40) < value < 10**40:
        return f"a number of {len(str(abs(value))) if value.bit_length() < 14000 else 'thousands of'} digits"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...{text[-10:]} ({len(text)} characters)"


def format_duration_exact(seconds: float) -> str:
    """``366d``, ``7d``, ``1h30m``, ``500ms``: the largest units that add up exactly, as config files write it."""
    ms = round(seconds * 1000)
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        amount, ms = divmod(ms, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def format_duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3m20s``: short and unambiguous for log lines."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 120:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_size(n: int | None) -> str:
    """``256 MiB``; ``unlimited`` for None."""
    if n is None:
        return "unlimited"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" or value == int(value) else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
