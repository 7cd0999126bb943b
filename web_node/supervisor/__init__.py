"""The node supervisor: spawning groups, restart policy, shutdown, reload."""

from __future__ import annotations

from web_node.supervisor._restart_policy import RestartDecision, RestartTracker

__all__ = ["RestartDecision", "RestartTracker"]
