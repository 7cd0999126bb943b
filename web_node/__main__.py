from __future__ import annotations

from web_node._signals import block_signals

# First, before the imports that take most of a second: a SIGTERM from now on
# waits for the loop's receiver instead of killing a half-started process.
block_signals()

from web_node.cli import entry_point  # noqa: E402

entry_point()
