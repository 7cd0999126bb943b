"""docs/metrics.md: every metric family, read off pages the metrics code renders.

Nothing is listed by hand: the node's group families and a group process's
member families are written by the same functions that write the real
pages, for one made-up group whose cgroup reports every value and one
process that served one request and ran once, and the page is parsed back
(prometheus_client's parser). Name, type and help are the code's; the
labels are those the samples carry. A family that gets no sample here is
listed with its help and "labels: none seen": give it a sample in
:func:`sample_pages` when you add one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

import cgroups
from web_node.members import Endpoint, Member
from web_node.metrics import ENV_TASK_ACCOUNTING, ProcessMetrics
from web_node.metrics._exposition import PageWriter
from web_node.metrics._groups import GroupReading, write_group_families, write_scrape_errors
from web_node.reference._markdown import code, header, table
from web_node.supervisor import GroupSnapshot

_ENDPOINT = Endpoint("Example", "GET", "/example")


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _make_app(ctx: Any) -> Any:
    return _no_app


def _member() -> Member:
    return Member(name="example", role="api", kind="http", description="example", listen="127.0.0.1:0",
                  endpoints=(_ENDPOINT,), make_app=_make_app)


def sample_pages() -> tuple[str, str]:
    """(the node's own families, a group process's families) as the exposition text the page shows."""
    stats = cgroups.Stats(**{f.name: 1 for f in dataclasses.fields(cgroups.Stats)})
    snapshot = GroupSnapshot(name="example", members=("example",), state="up", pid=1, restarts=0, start_time=1.0,
                             last_exit=None, cgroup=None, metrics_socket=None)
    node = PageWriter(openmetrics=False)
    write_group_families(node, [GroupReading(snapshot, stats)])
    write_scrape_errors(node, ["example"], {})

    process = ProcessMetrics(task_accounting=True)
    process.set_member_enabled("example")
    process.record_run("example", "ok", 1.0, 0.1)
    app = process.wrap_app(_no_app, _member())

    async def one_request() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            pass

        await app({"type": "http", "method": "GET", "path": "/example"}, receive, send)

    trio.run(one_request)
    member, _ = process.render()
    return node.finish().decode(), member.decode()


def _rows(text: str) -> list[list[str]]:
    """One row per family, in page order: names, types and help from the TYPE and HELP lines as written."""
    labels: dict[str, list[str]] = {}
    for family in text_string_to_metric_families(text):
        seen = labels.setdefault(family.name, [])
        for sample in family.samples:
            seen += [k for k in sample.labels if k != "le" and k not in seen]
    helps: dict[str, str] = {}
    rows = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line.removeprefix("# HELP ").partition(" ")
            helps[name] = help_text.replace("\\n", "\n").replace("\\\\", "\\")
        elif line.startswith("# TYPE "):
            name, _, kind = line.removeprefix("# TYPE ").partition(" ")
            # prometheus_client names a counter's family without its _total.
            found = labels.get(name.removesuffix("_total") if kind == "counter" else name) or labels.get(name) or []
            shown = kind + (" (_bucket{le}, _sum, _count)" if kind == "histogram" else "")
            rows.append([code(name), shown, ", ".join(found) or "none seen", helps.get(name, "")])
    return rows


def render() -> str:
    node, member = sample_pages()
    headers = ["metric", "type", "labels", "meaning"]
    out = [header("Metrics", "the metrics code (web_node/metrics/: the families, their types and help), "
                             "by rendering a page and parsing it back")]
    out.append(
        "The node serves one page, Prometheus text format (OpenMetrics when the scraper asks for it), on "
        "`[node] metrics_listen` (default `127.0.0.1:9391`) at `GET /metrics`. At each scrape it reads every "
        "group's cgroup files and fetches every group process's own families over a unix socket, and merges them. "
        "`web-node NAME --in-process` serves the same page for its one process, with the group "
        "`in-process`.\n\n")
    out.append("## Per group (from the supervisor and the group's cgroup)\n\n")
    out.append("A value the kernel does not give on this host (a file missing in this cgroup layout or kernel) is "
               "left out rather than exported as 0; limits are left out when unlimited.\n\n")
    out.append(table(headers, _rows(node)))
    out.append("\n## Per member and endpoint (from each group's process)\n\n")
    out.append(f"The CPU families count the time spent in each member's and endpoint's own trio tasks, also when "
               f"members share a process; `{ENV_TASK_ACCOUNTING}=0` switches that accounting off and leaves them out. "
               "Requests that match no declared endpoint (`/healthz`, unknown paths) are counted under "
               "`endpoint=\"other\"`.\n\n")
    out.append(table(headers, _rows(member)))
    return "".join(out)
