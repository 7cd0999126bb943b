"""Metrics: cgroup, member and http collectors and the /metrics page."""

from __future__ import annotations

from web_node.metrics._process import ProcessMetrics

__all__ = ["ProcessMetrics"]
