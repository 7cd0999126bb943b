"""Metrics kept inside one group's process: member runs and HTTP requests.

One :class:`ProcessMetrics` per process, with its own registry (no
import-time globals). The node fetches and merges each child's page at
scrape time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


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

    def record_run(self, member: str, outcome: str, ended_at: float) -> None:
        self.member_runs.labels(member, outcome).inc()
        if outcome != "skipped_paused":
            self.member_last_run.labels(member).set(ended_at)
