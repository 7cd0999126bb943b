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

State lives in plain objects (counters are ints and floats, histograms
bisect into lists) and is written out only when a page is asked for, so the
per-request and per-task-step paths stay cheap. Every family of a child
carries a ``member`` label: member names are unique in a node, so the node can
merge children's pages without relabelling.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Collection
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Gauge

from web_node.members import Member
from web_node.metrics._accounting import Account, CpuInstrument, task_accounting_wanted
from web_node.metrics._exposition import PageWriter, is_openmetrics, labels, negotiate
from web_node.metrics._groups import IN_PROCESS_GROUP, own_cgroup, read_stats, write_group_families, write_scrape_errors
from web_node.metrics._histogram import RUN_BUCKETS, Histogram
from web_node.metrics._http import EndpointStats, MeteredApp, endpoint_table
from web_node.metrics._server import Request, Response, open_tcp, open_unix, serve, serve_unix
from web_node.supervisor import GroupSnapshot, detect_host_layout

log = logging.getLogger("web_node.metrics")


class _RunStats:
    __slots__ = ("duration", "last_run", "outcomes")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.last_run: float | None = None
        self.duration = Histogram(RUN_BUCKETS)


class ProcessMetrics:
    """The metrics of the members running in this process.

    ``task_accounting`` (default: env ``WEB_NODE_TASK_ACCOUNTING``, on unless
    ``0``) switches the per-task CPU instrument; without it the member and
    endpoint CPU families are left out of the page.

    ``registry`` holds ``member_enabled`` (set by the runner); other
    collectors registered there appear on the page too, after the families
    kept here.
    """

    def __init__(self, *, task_accounting: bool | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.member_enabled = Gauge(
            "web_node_member_enabled", "1 when the member is enabled and running in this node",
            ["member"], registry=self.registry)
        self.task_accounting = task_accounting_wanted() if task_accounting is None else task_accounting
        self.started_at = time.time()
        self._account: contextvars.ContextVar[Account | None] = contextvars.ContextVar("web_node_account", default=None)
        self._instrument = CpuInstrument(self._account)
        self._installed = False
        self._members: dict[str, Account] = {}
        self._endpoints: dict[str, dict[str, EndpointStats]] = {}  # member -> endpoint -> stats
        self._runs: dict[str, _RunStats] = {}
        self._member_labels: dict[str, str] = {}

    # ------------------------------------------------------------ runner hooks

    def install_instrument(self) -> None:
        """Start charging task CPU time to members and endpoints (call inside trio.run)."""
        if self.task_accounting and not self._installed:
            trio.lowlevel.add_instrument(self._instrument)
            self._installed = True

    def uninstall_instrument(self) -> None:
        if self._installed:
            self._installed = False
            try:
                trio.lowlevel.remove_instrument(self._instrument)
            except (KeyError, RuntimeError):  # already gone, or called outside the run
                pass

    def enter_member(self, member: str) -> None:
        """Mark the current task (and its future children) as the member's."""
        self._account.set(self._member_account(member))

    def wrap_app(self, app: Any, member: Member, disabled_endpoints: Collection[str] = ()) -> Any:
        """``app`` with per-endpoint request counts, latency, in-flight and CPU.

        ``disabled_endpoints``: the member's endpoints switched off by
        configuration (``web_node_http_endpoint_enabled`` 0).
        """
        self._member_account(member.name)
        table = self._endpoints.get(member.name)
        if table is None:
            table = self._endpoints[member.name] = endpoint_table(member, disabled_endpoints)
        else:  # a member restarted in-process keeps its counters; the switches may have changed
            for name, stats in table.items():
                stats.enabled = not stats.declared or name not in disabled_endpoints
        return MeteredApp(app, member, table, self._account)

    def record_run(self, member: str, outcome: str, ended_at: float, duration_s: float = 0.0) -> None:
        """One periodic run ended: ``outcome`` ok, error or skipped_paused."""
        stats = self._runs.get(member)
        if stats is None:
            stats = self._runs[member] = _RunStats()
        stats.outcomes[outcome] = stats.outcomes.get(outcome, 0) + 1
        if outcome != "skipped_paused":
            stats.last_run = ended_at
            stats.duration.observe(duration_s)

    # ------------------------------------------------------------ pages

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """This process's page in the format ``accept`` asks for: (body, content type)."""
        content_type = negotiate(accept)
        writer = PageWriter(openmetrics=is_openmetrics(content_type))
        self.write(writer)
        return writer.finish(), content_type

    async def serve_socket(self, path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve this process's page on a unix socket for the node (mode 0600; see _server for the protocol)."""
        listener = await open_unix(path)
        try:
            await serve_unix(listener, self._handle_child_request, task_status=task_status)
        finally:
            listener.close()
            try:
                os.unlink(path)
            except OSError:
                pass

    def _handle_child_request(self, request: Request) -> Response:
        if request.path != "/metrics":
            return Response(404, b"this socket serves /metrics only\n")
        body, content_type = self.render(request.headers.get("accept", ""))
        return Response(200, body, content_type)

    async def serve_page(self, listen: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """--in-process: serve the full page on ``listen``, with the cgroup
        metrics of this process's own cgroup under ``group="in-process"``."""
        layout = await trio.to_thread.run_sync(detect_host_layout)
        cgroup = own_cgroup(layout)
        if cgroup is None:
            log.warning("metrics: this host has no cgroup filesystem (%s); the page has no memory or CPU metrics "
                        "for group %s", "; ".join(layout.problems) or layout.kind, IN_PROCESS_GROUP)
        errors: dict[str, int] = {}

        async def handle(request: Request) -> Response:
            if request.path == "/":
                return Response(200, _INDEX, "text/html; charset=utf-8")
            if request.path != "/metrics":
                return Response(404, b"not found: the metrics page is /metrics\n")
            content_type = negotiate(request.headers.get("accept", ""))
            snapshot = GroupSnapshot(
                name=IN_PROCESS_GROUP, members=tuple(self._members), state="up", pid=os.getpid(), restarts=0,
                start_time=self.started_at, last_exit=None, cgroup=cgroup, metrics_socket=None)
            writer = PageWriter(openmetrics=is_openmetrics(content_type))
            write_group_families(writer, read_stats([snapshot], errors))
            write_scrape_errors(writer, [IN_PROCESS_GROUP], errors)
            self.write(writer)
            return Response(200, writer.finish(), content_type)

        listeners = await open_tcp(listen)
        await serve(listeners, handle, task_status=_Started(task_status, log_as="metrics page (in-process)"))

    # ------------------------------------------------------------ writing

    def _member_account(self, member: str) -> Account:
        account = self._members.get(member)
        if account is None:
            account = self._members[member] = Account(member)
            self._member_labels[member] = labels(member=member)
        return account

    def _labels_of(self, member: str) -> str:
        text = self._member_labels.get(member)
        if text is None:
            text = self._member_labels[member] = labels(member=member)
        return text

    def write(self, w: PageWriter) -> None:
        """Every family of this process, in a fixed order.

        Called from the metrics socket's thread while the trio thread goes on
        updating the state: every dict is copied (``list(d.items())``, one C
        call under the GIL) before it is walked, so that a member, endpoint or
        status code added meanwhile cannot break the iteration.
        """
        for metric in self.registry.collect():
            w.metric(metric)

        if self.task_accounting:
            name = "web_node_member_cpu_seconds_total"
            w.family(name, "counter", "CPU time spent running the member's own trio tasks (its endpoints' included), "
                                      "told apart also when members share a process")
            for member, account in list(self._members.items()):
                seconds = account.seconds + sum(s.account.seconds for s in list(self._endpoints.get(member, {}).values()))
                w.sample(name, self._labels_of(member), seconds)

        runs_of = list(self._runs.items())
        name = "web_node_member_runs_total"
        w.family(name, "counter", "Runs of a periodic member by outcome (ok, error, skipped_paused)")
        for member, runs in runs_of:
            m = self._labels_of(member)
            for outcome, n in list(runs.outcomes.items()):
                w.sample(name, f'{m},outcome="{outcome}"', n)
        name = "web_node_member_last_run_timestamp_seconds"
        w.family(name, "gauge", "UNIX time the member's last run ended")
        for member, runs in runs_of:
            if runs.last_run is not None:
                w.sample(name, self._labels_of(member), runs.last_run)
        name = "web_node_member_run_duration_seconds"
        w.family(name, "histogram", "How long each run of a periodic member took")
        for member, runs in runs_of:
            w.histogram(name, self._labels_of(member), runs.duration.les, runs.duration.cumulative(), runs.duration.sum)

        tables = [stats for table in list(self._endpoints.values()) for stats in list(table.values())]
        name = "web_node_http_requests_total"
        w.family(name, "counter", "HTTP requests answered, by endpoint, method and status code")
        for ep in tables:
            for (method, code), n in list(ep.requests.items()):
                w.sample(name, f'{ep.labels},method="{method}",code="{code}"', n)
        name = "web_node_http_request_duration_seconds"
        w.family(name, "histogram", "Time from a request's arrival at the app to the end of its answer")
        for ep in tables:
            w.histogram(name, ep.labels, ep.latency.les, ep.latency.cumulative(), ep.latency.sum)
        name = "web_node_http_requests_in_flight"
        w.family(name, "gauge", "Requests being answered right now")
        for ep in tables:
            w.sample(name, ep.labels, ep.in_flight)
        name = "web_node_http_endpoint_enabled"
        w.family(name, "gauge", "1 for each declared endpoint that is on, 0 when disabled by configuration")
        for ep in tables:
            if ep.declared:
                w.sample(name, ep.labels, 1 if ep.enabled else 0)
        if self.task_accounting:
            name = "web_node_endpoint_cpu_seconds_total"
            w.family(name, "counter", "CPU time spent running the tasks that answer the endpoint's requests")
            for ep in tables:
                w.sample(name, ep.labels, ep.account.seconds)


class _Started:
    """Adapts serve()'s started(addresses) to a started() that logs where the page is."""

    def __init__(self, inner: trio.TaskStatus[None], log_as: str | None = None) -> None:
        self._inner = inner
        self._log_as = log_as

    def started(self, addresses: list[str] | None = None) -> None:
        if self._log_as:
            log.info("%s on %s", self._log_as, ", ".join(f"http://{a}/metrics" for a in addresses or []))
        self._inner.started()


_INDEX = b"<html><head><title>web-node metrics</title></head><body><a href=\"/metrics\">/metrics</a></body></html>\n"

__all__ = ["ProcessMetrics"]
