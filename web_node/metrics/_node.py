"""The node's /metrics page, built at scrape time (no background polling).

On each GET /metrics:

1. the supervisor's snapshot of every group;
2. each up child is asked for its members' families over its unix socket
   (a connection kept open from scrape to scrape), all at once, with a
   short timeout (a dead or slow child is left out of this scrape, counted
   in ``web_node_scrape_errors_total{group}`` and logged);
3. while the children render, each group's cgroup files are read;
4. the node's group families and the children's blocks are joined into one
   page, in the format the scraper asked for (``Accept``): the children
   answer in a compact form (see _member_families) and the node writes each
   family's HELP/TYPE lines once; a child that answers plain text (another
   web-node version) is merged family by family.

Steps 2-4 run in one worker thread: the node's trio loop (supervision,
signals) never waits for a scrape.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from web_node.metrics._child_fetch import ChildConnections, FetchError, ParallelFetch
from web_node.metrics._exposition import PageWriter, is_openmetrics, negotiate
from web_node.metrics._groups import read_stats, write_group_families, write_scrape_errors
from web_node.metrics._member_families import BLOCKS_CONTENT_TYPE, BLOCKS_HEADER, FAMILIES_FINGERPRINT, MEMBER_FAMILIES
from web_node.metrics._page import join_blocks, merge_pages, split_blocks
from web_node.metrics._server import Request, Response, open_tcp, serve

if TYPE_CHECKING:
    from web_node.supervisor import GroupSnapshot

#: How long a scrape waits for one child's page. Scrapers time out after 10 s by default; children answer in milliseconds.
CHILD_TIMEOUT_S = 2.0

log = logging.getLogger("web_node.metrics")

_EOF = b"# EOF\n"
_INDEX = b"<html><head><title>web-node</title></head><body><a href=\"/metrics\">/metrics</a></body></html>\n"


class NodePage:
    """Builds the node's page from ``snapshots()`` on demand."""

    def __init__(self, snapshots: Callable[[], list[GroupSnapshot]], *, child_timeout_s: float = CHILD_TIMEOUT_S) -> None:
        self._snapshots = snapshots
        self.child_timeout_s = child_timeout_s
        self.errors: dict[str, int] = {}  # group -> scrapes that missed part of its metrics
        self._lock = threading.Lock()
        self.connections = ChildConnections()  # one kept open to each child, from scrape to scrape

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """The whole page: (body, content type)."""
        snaps = self._snapshots()  # live state: read in the trio thread
        # The blocking part (sockets, cgroup files, text) in one worker thread, so the node's
        # loop (supervision, signals) never waits for a scrape.
        return await trio.to_thread.run_sync(self._build, snaps, accept, abandon_on_cancel=True)

    def _build(self, snaps: list[GroupSnapshot], accept: str) -> tuple[bytes, str]:
        content_type = negotiate(accept)
        openmetrics = is_openmetrics(content_type)
        children = {s.name: s.metrics_socket for s in snaps if s.up and s.metrics_socket}
        self.connections.keep_only(children.values())
        # Every child is asked now, for the compact form, and renders meanwhile.
        fetch = ParallelFetch(children, accept, self.connections, {BLOCKS_HEADER: FAMILIES_FINGERPRINT})
        with self._lock:
            readings = read_stats(snaps, self.errors)
        fetch.finish(self.child_timeout_s)
        blocks: list[list[bytes]] = []  # per child, in snapshot order: the page is stable from scrape to scrape
        texts: list[bytes] = []  # plain text answers (a child of another version): merged family by family
        for snap in snaps:
            if snap.name not in children:
                continue
            page = fetch.pages.get(snap.name)
            error = fetch.errors.get(snap.name)
            if page is not None and error is None:
                if page[0] == BLOCKS_CONTENT_TYPE:
                    parts = split_blocks(page[1])
                    if parts is not None:
                        blocks.append(parts)
                        continue
                    error = FetchError("protocol", f"{children[snap.name]} answered {BLOCKS_CONTENT_TYPE} without its "
                                                   f"{len(MEMBER_FAMILIES)} family blocks and nothing after them")
                elif page[0] == content_type:  # a child of another web-node version: its plain page
                    texts.append(page[1])
                    continue
                else:
                    error = FetchError("protocol", f"{children[snap.name]} answered {page[0]!r} where {content_type!r} "
                                                   f"was asked for")
            reason = error.reason if error else "protocol"
            with self._lock:
                self.errors[snap.name] = self.errors.get(snap.name, 0) + 1
            log.warning("metrics: group %s (pid %s): its member metrics are left out of this scrape (%s: %s); "
                        "the group's cgroup metrics are still exported. Counted in web_node_scrape_errors_total; "
                        "if it lasts, look at the group's own log lines and `web-node status`",
                        snap.name, snap.pid, reason, error)
        writer = PageWriter(openmetrics=openmetrics)
        write_group_families(writer, readings)
        with self._lock:
            write_scrape_errors(writer, [s.name for s in snaps], self.errors)
        if texts:  # merged family by family (slower, rare): a child of another version answered plain text
            body = join_blocks(blocks, openmetrics=openmetrics, before=writer.text().encode())
            return merge_pages([body, *texts], openmetrics=openmetrics), content_type
        return join_blocks(blocks, openmetrics=openmetrics, before=writer.text().encode(),
                           after=_EOF if openmetrics else b""), content_type

    async def handle(self, request: Request) -> Response:
        if request.path == "/":
            return Response(200, _INDEX, "text/html; charset=utf-8")
        if request.path != "/metrics":
            return Response(404, b"not found: the metrics page is /metrics\n")
        body, content_type = await self.render(request.headers.get("accept", ""))
        return Response(200, body, content_type)


async def serve_node_metrics(
    listen: str,
    snapshots: Callable[[], list[GroupSnapshot]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the node's /metrics on ``listen`` (HOST:PORT) until cancelled; started() once bound."""
    page = NodePage(snapshots)
    listeners = await open_tcp(listen)

    class _Started:
        def started(self, addresses: list[str] | None = None) -> None:
            log.info("metrics page on %s", ", ".join(f"http://{a}/metrics" for a in addresses or []))
            task_status.started()

    try:
        await serve(listeners, page.handle, task_status=_Started())
    finally:
        page.connections.close()
