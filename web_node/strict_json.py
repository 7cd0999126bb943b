"""JSON request bodies, read strictly: what Python's ``json`` lets through, refused with a 4xx-worthy message.

``json.loads`` accepts ``NaN`` and ``Infinity`` (not JSON), turns ``1e999``
into ``inf`` (which goes back out as ``Infinity``), parses integers of 4,000
digits, fails with RecursionError on deep nesting and keeps lone UTF-16
surrogates (``"\\ud800"``), which no UTF-8 database column or log line can
hold. :func:`loads` refuses all of these with :class:`JsonBodyError`, a
ValueError whose message names the problem and where it is. Numbers are
bounded to what a 64-bit integer column and a finite double hold.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_INT = 2**63 - 1
_MAX_INT_CHARS = 20  # "-9223372036854775808"


class JsonBodyError(ValueError):
    """A request body that is not strict JSON; ``str(e)`` says why, for the client."""


def _int(text: str) -> int:
    value = int(text) if len(text) <= _MAX_INT_CHARS else MAX_INT + 1
    if not -MAX_INT - 1 <= value <= MAX_INT:
        shown = text if len(text) <= 30 else f"{text[:20]}... ({len(text)} digits)"
        raise JsonBodyError(f"the number {shown} is out of range: whole numbers are at most {MAX_INT} in magnitude")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 30 else f"{text[:20]}... ({len(text)} characters)"
        raise JsonBodyError(f"the number {shown} is too large to be a number (it would be infinite)")
    return value


def _constant(name: str) -> Any:
    raise JsonBodyError(f"{name} is not JSON; send numbers as finite decimal numbers")


def loads(body: bytes | str) -> Any:
    """The parsed body; raises :class:`JsonBodyError` (the body is empty, not UTF-8, not JSON, or holds
    out-of-range numbers, NaN, Infinity or lone surrogates)."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise JsonBodyError(f"the body is not UTF-8 text (byte {e.start}); send JSON") from None
    else:
        text = body
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except JsonBodyError:
        raise
    except json.JSONDecodeError as e:
        raise JsonBodyError(f"the body is not valid JSON: line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise JsonBodyError("the JSON body is nested too deeply") from None
    check_strings(value)
    return value


def check_strings(value: Any) -> None:
    """Raise :class:`JsonBodyError` when a string (key or value) anywhere in ``value`` is not valid Unicode text."""
    # Iterative: a document nested as deeply as its parser allows needs no Python stack here. Each
    # container is walked once: YAML aliases share one list many times, or make it contain itself.
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, (dict, list)):
            if id(item) in seen:
                continue
            seen.add(id(item))
            if isinstance(item, dict):
                for key in item:
                    if isinstance(key, str):
                        _check_text(key)
                stack.extend(item.values())
            else:
                stack.extend(item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise JsonBodyError(f"a string holds a lone UTF-16 surrogate ({text[e.start]!r} at character {e.start}), "
                            "which is not text; escape characters outside the BMP as a surrogate pair") from None
