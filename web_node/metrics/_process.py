"""Metrics kept inside one group's process: member runs, CPU per member and
endpoint, and HTTP requests.

One :class:`ProcessMetrics` per process, with its own registry (no
import-time globals). The node fetches and merges each child's page at
scrape time over a unix socket (``serve_socket``).

The runner calls these hooks (keep their names and signatures):
``install_instrument``/``uninstall_instrument`` around the run,
``enter_member(name)`` at the start of each member's task (child tasks inherit
it), ``wrap_app(app, member)`` around each http member's ASGI app,
``record_run(...)`` after each periodic run, ``serve_socket(path)`` in a group
child, ``serve_page(listen, ...)`` in ``--in-process`` mode.
"""

from __future__ import annotations

from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from web_node.members import Member


class ProcessMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.member_enabled = Gauge(
            "web_node_member_enabled", "1 when the member is enabled and running in this node",
            ["member"], registry=self.registry)
        self.member_runs = Counter(
            "web_node_member_runs", "Runs of a periodic member by outcome (ok, error, skipped_paused)",
            ["member", "outcome"], registry=self.registry)
        self.member_last_run = Gauge(
            "web_node_member_last_run_timestamp_seconds", "UNIX time the member's last run ended",
            ["member"], registry=self.registry)

    def install_instrument(self) -> None:
        """Start charging task CPU time to members and endpoints (TODO metrics issue)."""

    def uninstall_instrument(self) -> None:
        pass

    def enter_member(self, member: str) -> None:
        """Mark the current task (and its future children) as the member's."""

    def wrap_app(self, app: Any, member: Member) -> Any:
        return app

    def record_run(self, member: str, outcome: str, ended_at: float, duration_s: float = 0.0) -> None:
        self.member_runs.labels(member, outcome).inc()
        if outcome != "skipped_paused":
            self.member_last_run.labels(member).set(ended_at)

    async def serve_socket(self, path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve this process's page on a unix socket for the node (TODO metrics issue)."""
        task_status.started()

    async def serve_page(self, listen: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """--in-process: serve the full page, cgroup metrics of this process included (TODO metrics issue)."""
        task_status.started()
