"""Metrics kept inside one group's process: member runs, CPU per member and
endpoint, and HTTP requests.

One :class:`ProcessMetrics` per process, with its own state (no
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

from web_node.members import Member
from web_node.metrics._accounting import Account, CpuInstrument, task_accounting_wanted
from web_node.metrics._child_socket import open_unix, serve_unix
from web_node.metrics._exposition import PageWriter, format_value, histogram_lines, is_openmetrics, labels, negotiate, sample_line
from web_node.metrics._groups import IN_PROCESS_GROUP, own_cgroup, read_stats, write_group_families, write_scrape_errors
from web_node.metrics._histogram import RUN_BUCKETS, Histogram
from web_node.metrics._http import EndpointStats, MeteredApp, endpoint_table
from web_node.metrics._member_families import BLOCK_END, BLOCKS_CONTENT_TYPE, BLOCKS_HEADER, FAMILIES_FINGERPRINT, MEMBER_FAMILIES
from web_node.metrics._server import Request, Response, open_tcp, serve
from web_node.supervisor import GroupSnapshot, detect_host_layout

log = logging.getLogger("web_node.metrics")


class _RunStats:
    """The runs of one periodic member; ``version`` grows after each recorded run (see EndpointStats)."""

    __slots__ = ("duration", "last_run", "outcomes", "rendered", "version")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.last_run: float | None = None
        self.duration = Histogram(RUN_BUCKETS)
        self.version = 0
        self.rendered: tuple[int, bytes, bytes, bytes] | None = None  # (version, runs, last run, duration lines)


class ProcessMetrics:
    """The metrics of the members running in this process.

    ``task_accounting`` (default: env ``WEB_NODE_TASK_ACCOUNTING``, on unless
    ``0``) switches the per-task CPU instrument; without it the member and
    endpoint CPU families are left out of the page.

    A scrape renders only what changed since the previous one: each
    endpoint's and each periodic member's lines are kept with the
    ``version`` they were rendered at, so a child whose endpoints were idle
    answers with little more than its CPU counters (measured in
    bench/bench_metrics.py, where that is the case for most of them).
    """

    def __init__(self, *, task_accounting: bool | None = None) -> None:
        self._enabled: dict[str, int] = {}  # member -> 1 when enabled and running here
        self.task_accounting = task_accounting_wanted() if task_accounting is None else task_accounting
        self.started_at = time.time()
        self._account: contextvars.ContextVar[Account | None] = contextvars.ContextVar("web_node_account", default=None)
        self._instrument = CpuInstrument(self._account)
        self._installed = False
        self._members: dict[str, Account] = {}
        self._endpoints: dict[str, dict[str, EndpointStats]] = {}  # member -> endpoint -> stats
        self._runs: dict[str, _RunStats] = {}
        self._member_labels: dict[str, str] = {}
        self._cpu_lines: dict[str, tuple[float, bytes]] = {}  # member -> (CPU seconds, its line)
        self._last_page: tuple[int, list[bytes]] | None = None  # (task steps when made, pieces): see render_blocks

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

    def set_member_enabled(self, member: str, enabled: bool = True) -> None:
        """``web_node_member_enabled`` of a member running in this process (the runner sets it)."""
        self._enabled[member] = 1 if enabled else 0
        self._last_page = None  # may be called outside a task step (the runner, before members start)

    def enter_member(self, member: str) -> None:
        """Mark the current task (and its future children) as the member's."""
        self._account.set(self._member_account(member))

    def wrap_app(self, app: Any, member: Member, disabled_endpoints: Collection[str] = ()) -> Any:
        """``app`` with per-endpoint request counts, latency, in-flight and CPU.

        ``disabled_endpoints``: the member's endpoints switched off by
        configuration (``web_node_http_endpoint_enabled`` 0).
        """
        self._member_account(member.name)
        self._last_page = None
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
        stats.version += 1  # last, as in EndpointStats
        self._last_page = None  # may be called outside a task step

    # ------------------------------------------------------------ pages

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """This process's page in the format ``accept`` asks for: (body, content type)."""
        content_type = negotiate(accept)
        writer = PageWriter(openmetrics=is_openmetrics(content_type))
        self.write(writer)
        return writer.finish(), content_type

    async def serve_socket(self, path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve this process's page on a unix socket for the node (mode 0600; see _child_socket for the protocol)."""
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
        if request.headers.get(BLOCKS_HEADER) == FAMILIES_FINGERPRINT:
            return Response(200, self.render_blocks(), BLOCKS_CONTENT_TYPE)
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

    def blocks(self) -> list[list[bytes]]:
        """The sample lines of each family of MEMBER_FAMILIES, in its order, as pieces to send as they are.

        Called from the metrics socket's thread while the trio thread goes on
        updating the state: every dict is copied (``list(d.items())``, one C
        call under the GIL) before it is walked, so that a member, endpoint or
        status code added meanwhile cannot break the iteration. A ``version``
        is read before the state it stands for, so kept lines are never
        older than their version.

        Lines are kept from scrape to scrape and made again only for what
        changed; they go out as pieces with one ``sendmsg``, never joined.
        With 50 children scraped in turn their caches are cold, and every
        line made or copied costs several times what it costs warm
        (measured in bench/bench_metrics.py).
        """
        labels_of = self._labels_of
        enabled = "".join([f"web_node_member_enabled{{{labels_of(m)}}} {on:d}\n" for m, on in list(self._enabled.items())])
        tables = [(member, list(table.values())) for member, table in list(self._endpoints.items())]
        http = [_endpoint_lines(ep, self.task_accounting) for _, eps in tables for ep in eps]
        member_cpu: list[bytes] = []
        if self.task_accounting:
            own = {member: sum([ep.account.seconds for ep in eps]) for member, eps in tables}
            member_cpu = [self._member_cpu_line(member, account.seconds + own.get(member, 0.0))
                          for member, account in list(self._members.items())]
        runs = [self._run_lines(member, stats) for member, stats in list(self._runs.items())]
        _, counts, latency, in_flight, endpoint_on, endpoint_cpu = zip(*http, strict=True) if http else ((),) * 6
        return [
            [enabled.encode()],
            member_cpu,
            [r[1] for r in runs],
            [r[2] for r in runs],
            [r[3] for r in runs],
            list(counts),
            list(latency),
            list(in_flight),
            list(endpoint_on),
            list(endpoint_cpu),
        ]

    def write(self, w: PageWriter) -> None:
        """Every family of this process, in MEMBER_FAMILIES' order."""
        for (name, kind, help_text, optional), pieces in zip(MEMBER_FAMILIES, self.blocks(), strict=True):
            if optional and not self.task_accounting:
                continue  # no task accounting: no CPU families at all, rather than empty ones
            w.family(name, kind, help_text)
            w.lines(b"".join(pieces).decode("utf-8"))

    def render_blocks(self) -> list[bytes]:
        """The compact form the node fetches (see _member_families), as pieces.

        A process whose trio loop ran no task step since the previous scrape
        (an idle group: a periodic member between two runs, an http member
        nobody calls) answers with the same pieces again: every change to
        the state it shows happens in a task step, and the CPU instrument
        counts them. Without task accounting the page is made every time.
        """
        steps = self._instrument.steps if self._installed else None
        kept = self._last_page
        if steps is not None and kept is not None and kept[0] == steps:
            return kept[1]
        out: list[bytes] = []
        for pieces in self.blocks():
            out.extend(pieces)
            out.append(_BLOCK_END)
        if steps is not None:
            self._last_page = (steps, out)
        return out

    def _member_cpu_line(self, member: str, seconds: float) -> bytes:
        kept = self._cpu_lines.get(member)
        if kept is not None and kept[0] == seconds:
            return kept[1]
        line = f"web_node_member_cpu_seconds_total{{{self._labels_of(member)}}} {format_value(seconds)}\n".encode()
        self._cpu_lines[member] = (seconds, line)
        return line

    def _run_lines(self, member: str, runs: _RunStats) -> tuple[int, bytes, bytes, bytes]:
        """The sample lines of one periodic member's run families, rendered again only when a run was recorded."""
        version = runs.version
        kept = runs.rendered
        if kept is not None and kept[0] == version:
            return kept
        m = self._labels_of(member)
        outcomes = "".join(sample_line("web_node_member_runs_total", f'{m},outcome="{outcome}"', n)
                           for outcome, n in list(runs.outcomes.items()))
        last = "" if runs.last_run is None else sample_line("web_node_member_last_run_timestamp_seconds", m, runs.last_run)
        d = runs.duration
        duration = histogram_lines("web_node_member_run_duration_seconds", m, d.les, d.cumulative(), d.sum)
        runs.rendered = kept = (version, outcomes.encode(), last.encode(), duration.encode())
        return kept


_BLOCK_END = BLOCK_END.encode()


def _endpoint_lines(ep: EndpointStats, task_accounting: bool) -> tuple[tuple[int, int, bool, float], bytes, bytes, bytes, bytes, bytes]:
    """One endpoint's lines of each http family: (key, counts, latency, in flight, enabled, CPU), made again only
    when the key (request version, in flight, enabled, CPU seconds) changed."""
    key = (ep.version, ep.in_flight, ep.enabled, ep.account.seconds)
    kept = ep.rendered
    if kept is not None and kept[0] == key:
        return kept
    old = kept if kept is not None and kept[0][0] == key[0] else None
    if old is not None:  # no request since: the counts and the histogram are as they were
        counts, latency = old[1], old[2]
    else:
        counts = "".join(sample_line("web_node_http_requests_total", f'{ep.labels},method="{method}",code="{code}"', n)
                         for (method, code), n in list(ep.requests.items())).encode()
        lat = ep.latency
        latency = histogram_lines("web_node_http_request_duration_seconds", ep.labels, lat.les, lat.cumulative(),
                                  lat.sum).encode()
    in_flight = f"web_node_http_requests_in_flight{{{ep.labels}}} {key[1]:d}\n".encode()
    endpoint_on = f"web_node_http_endpoint_enabled{{{ep.labels}}} {1 if key[2] else 0}\n".encode() if ep.declared else b""
    cpu = f"web_node_endpoint_cpu_seconds_total{{{ep.labels}}} {format_value(key[3])}\n".encode() if task_accounting else b""
    ep.rendered = kept = (key, counts, latency, in_flight, endpoint_on, cpu)
    return kept


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
