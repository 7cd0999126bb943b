from __future__ import annotations

from web_node.cli import entry_point

entry_point()
