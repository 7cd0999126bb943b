"""Logging: every line names its member (or group, or "node").

Text for terminals, JSON lines (``--log-format json``) for log shippers.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        who = _who(record)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} [{who}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
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
        return json.dumps(doc)


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
