r"""Logging: every line names its member (or group, or "node").

Text for terminals, JSON lines (``--log-format json``) for log shippers.

Invariant: each record starts one line at its first column, and only a record
does (a traceback's lines follow it, indented). Messages carry
names and text from requests (a pipeline name, a worker's platform, a
build's message), so the text format escapes control characters
(:func:`escape_control`: ``\n`` becomes the two characters ``\`` ``n``, ESC
``\x1b``) and indents a traceback's lines; a name holding ``\n2026-... ERROR
[api]`` or a terminal escape cannot forge or hide a line. The JSON format
gets the same from ``json.dumps``, which escapes every control character.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: each can end a line early or
# steer a terminal. Tab stays: it ends no line.
_ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})
del _ESCAPES[ord("\t")]
TRACEBACK_INDENT = "    "


def escape_control(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``), tabs kept."""
    return text.translate(_ESCAPES)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        who = escape_control(_who(record))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} [{who}] {escape_control(record.getMessage())}"
        if record.exc_info:
            # A traceback keeps its lines, each indented and escaped: its last line quotes the exception's
            # message, which may hold a newline from a request.
            lines = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n{TRACEBACK_INDENT}{escape_control(text)}" for text in lines)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": record.created,
            "level": record.levelname.lower(),
            "member": _who(record),
            "message": record.getMessage(),
        }
        for key in ("group", "pid"):
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)  # ensure_ascii (the default): every control character escaped


def _who(record: logging.LogRecord) -> str:
    who = getattr(record, "member", None) or getattr(record, "who", None)
    if who:
        return str(who)
    if record.name.startswith("hypercorn."):
        return record.name.split(".", 1)[1]  # the member whose server logged it
    return "node"


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # hypercorn and quart log through their own loggers; keep them quiet but visible on errors.
    for noisy in ("hypercorn.access", "quart.serving"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def member_logger(member: str, **extra: Any) -> logging.LoggerAdapter[logging.Logger]:
    return logging.LoggerAdapter(logging.getLogger(f"web_node.{member}"), {"member": member, **extra})


def node_logger(who: str = "node") -> logging.LoggerAdapter[logging.Logger]:
    return logging.LoggerAdapter(logging.getLogger("web_node.node"), {"who": who})
