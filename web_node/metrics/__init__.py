"""Metrics: cgroup, member and http collectors and the /metrics page.

- :func:`serve_node_metrics`: the node's page; per group, the supervisor's
  state and the group's cgroup files, merged with each child's own page;
- :class:`ProcessMetrics`: the metrics inside one process (member CPU per
  task step, periodic runs, HTTP per endpoint), served to the node on a unix
  socket, or as the whole page with ``--in-process``.

Every metric name is in SPEC.md; the Grafana dashboard and the Prometheus
alert rules ship next to this file (``grafana-dashboard.json``, ``alerts.yml``).
"""

from __future__ import annotations

from web_node.metrics._accounting import ENV_TASK_ACCOUNTING
from web_node.metrics._groups import IN_PROCESS_GROUP, own_cgroup
from web_node.metrics._node import CHILD_TIMEOUT_S, NodePage, serve_node_metrics
from web_node.metrics._process import ProcessMetrics

__all__ = [
    "CHILD_TIMEOUT_S", "ENV_TASK_ACCOUNTING", "IN_PROCESS_GROUP",
    "NodePage", "ProcessMetrics", "own_cgroup", "serve_node_metrics",
]
