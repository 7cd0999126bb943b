"""The node's page from group snapshots: children's pages fetched over real
unix sockets and merged, dead and slow children left out without breaking
the scrape, content negotiation, and the tiny HTTP server itself."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio
from metrics_helpers import CGROUP_FIXTURES, Page, promtool_check_metrics
from node_helpers import free_port
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

import cgroups
from web_node.metrics import NodePage, ProcessMetrics, serve_node_metrics
from web_node.metrics._child_fetch import fetch_unix
from web_node.supervisor import GroupSnapshot, GroupState

OPENMETRICS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                      "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")  # what Prometheus 2.42 sends


def v2_leaf(tmp_path: Path, name: str) -> cgroups.Cgroup:
    base = tmp_path / "v2"
    if not base.exists():
        shutil.copytree(CGROUP_FIXTURES / "v2", base, symlinks=True)
    layout = cgroups.detect_layout(sys_root=str(base / "sys" / "fs" / "cgroup"), proc_root=str(base / "proc"))
    return cgroups.CgroupTree(layout, "web-node").leaf(name)


def snap(name: str, cgroup: cgroups.Cgroup | None, socket_path: str | None, state: GroupState = "up") -> GroupSnapshot:
    return GroupSnapshot(name=name, members=(name,), state=state, pid=os.getpid(), restarts=0,
                         start_time=time.time(), last_exit=None, cgroup=cgroup, metrics_socket=socket_path)


def child_metrics(member: str) -> ProcessMetrics:
    m = ProcessMetrics(task_accounting=False)
    m.set_member_enabled(member)
    m.record_run(member, "ok", time.time(), 0.01)
    return m


async def silent_server(path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A child that accepts and never answers (stopped, or stuck in a long step)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(8)
    task_status.started()
    held = []
    while True:
        conn, _ = await sock.accept()
        held.append(conn)


async def test_child_socket_is_private_and_speaks_http_1_0(tmp_path: Path) -> None:
    path = str(tmp_path / "api.metrics.sock")
    metrics = child_metrics("api")
    async with trio.open_nursery() as nursery:
        await nursery.start(metrics.serve_socket, path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        content_type, body = await fetch_unix(path, "", 2.0)
        assert content_type.startswith("text/plain; version=0.0.4")
        assert Page.parse(body.decode()).value("web_node_member_enabled", member="api") == 1
        # What an operator does by hand: curl --unix-socket PATH http://child/metrics
        stream = await trio.open_unix_socket(path)
        await stream.send_all(b"GET /nothing HTTP/1.0\r\n\r\n")
        answer = b""
        while data := await stream.receive_some():
            answer += data
        assert answer.startswith(b"HTTP/1.1 404 ")
        nursery.cancel_scope.cancel()
    assert not os.path.exists(path), "the socket file is removed when the child stops serving"


async def test_child_socket_thread_drops_a_silent_peer_and_stops_at_once(tmp_path: Path) -> None:
    from web_node.metrics import _child_socket

    path = str(tmp_path / "api.metrics.sock")
    metrics = child_metrics("api")
    async with trio.open_nursery() as nursery:
        await nursery.start(metrics.serve_socket, path)
        silent = await trio.open_unix_socket(path)  # connects and never sends its request
        began = time.monotonic()
        _, body = await fetch_unix(path, "", 2.0 + _child_socket.CHILD_REQUEST_TIMEOUT_S)
        waited = time.monotonic() - began
        assert Page.parse(body.decode()).value("web_node_member_enabled", member="api") == 1
        assert waited < _child_socket.CHILD_REQUEST_TIMEOUT_S + 1.0, f"the silent peer held the socket {waited:.2f} s"
        # The socket's thread now waits for a second silent peer: cancelling must not wait its timeout out.
        silent2 = await trio.open_unix_socket(path)
        await trio.sleep(0.05)
        began = time.monotonic()
        nursery.cancel_scope.cancel()
    assert time.monotonic() - began < 0.5, "stopping waited for a silent peer"
    await silent.aclose()
    await silent2.aclose()
    assert not os.path.exists(path)


async def test_child_page_stays_whole_while_the_trio_thread_adds_state(tmp_path: Path) -> None:
    """The socket's thread renders while the trio thread adds members, runs and status codes."""
    path = str(tmp_path / "api.metrics.sock")
    metrics = child_metrics("api")
    async with trio.open_nursery() as nursery:
        await nursery.start(metrics.serve_socket, path)

        async def churn() -> None:
            for i in range(20_000):
                metrics.record_run(f"m{i % 500}", "ok" if i % 3 else "error", time.time(), 0.001 * (i % 50))
                if i % 100 == 0:
                    await trio.lowlevel.checkpoint()

        nursery.start_soon(churn)
        for _ in range(20):
            _, body = await fetch_unix(path, "", 2.0)
            page = Page.parse(body.decode())  # a broken render would answer 500 and raise here
            assert page.value("web_node_member_enabled", member="api") == 1
        nursery.cancel_scope.cancel()


async def test_node_page_merges_children_and_survives_dead_and_slow_ones(tmp_path: Path) -> None:
    api_sock, backend_sock = str(tmp_path / "api.sock"), str(tmp_path / "backend.sock")
    slow_sock, dead_sock = str(tmp_path / "slow.sock"), str(tmp_path / "dead.sock")
    snaps = [
        snap("api", v2_leaf(tmp_path, "api"), api_sock),
        snap("backend", v2_leaf(tmp_path, "ui"), backend_sock),
        snap("slow", None, slow_sock),
        snap("dead", None, dead_sock),  # says up, but nothing listens: died between snapshot and scrape
        snap("gc", None, None, state="gave-up"),
    ]
    page_builder = NodePage(lambda: snaps, child_timeout_s=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(child_metrics("api").serve_socket, api_sock)
        backend = child_metrics("scheduler")
        backend.set_member_enabled("build-tracker")
        await nursery.start(backend.serve_socket, backend_sock)
        await nursery.start(silent_server, slow_sock)
        began = time.monotonic()
        body, content_type = await page_builder.render()
        took = time.monotonic() - began
        body2, _ = await page_builder.render()
        nursery.cancel_scope.cancel()

    assert took < 0.5 + 0.4, f"a slow child must cost at most the child timeout, took {took:.2f} s"
    assert content_type.startswith("text/plain; version=0.0.4")
    page = Page.parse(body.decode())
    assert page.text.count("# TYPE web_node_member_enabled gauge") == 1
    assert {s["member"] for s in page.series("web_node_member_enabled")} == {"api", "scheduler", "build-tracker"}
    assert page.value("web_node_member_runs_total", member="api", outcome="ok") == 1
    assert page.value("web_node_group_memory_usage_bytes", group="api") == 150994944
    assert page.value("web_node_group_memory_usage_bytes", group="backend") == 52428800
    for group in ("api", "backend", "slow", "dead"):
        assert page.value("web_node_group_up", group=group) == 1
    assert page.value("web_node_group_up", group="gc") == 0
    assert page.value("web_node_scrape_errors_total", group="slow") == 1
    assert page.value("web_node_scrape_errors_total", group="dead") == 1
    assert page.value("web_node_scrape_errors_total", group="api") == 0
    assert Page.parse(body2.decode()).value("web_node_scrape_errors_total", group="slow") == 2
    promtool_check_metrics(page.text)


async def test_node_page_speaks_openmetrics_when_asked(tmp_path: Path) -> None:
    api_sock = str(tmp_path / "api.sock")
    snaps = [snap("api", v2_leaf(tmp_path, "api"), api_sock)]
    async with trio.open_nursery() as nursery:
        await nursery.start(child_metrics("api").serve_socket, api_sock)
        body, content_type = await NodePage(lambda: snaps).render(OPENMETRICS_ACCEPT)
        nursery.cancel_scope.cancel()
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.count("# EOF") == 1 and text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}  # strict: fails on a repeated family or a misplaced EOF
    assert families["web_node_group_oom_kills"].type == "counter"
    assert [s.labels for s in families["web_node_member_enabled"].samples] == [{"member": "api"}]
    assert families["web_node_member_runs"].samples[0].value == 1


# ---------------------------------------------------------------- the HTTP server of the page


async def serving(nursery: trio.Nursery, snapshots: Callable[[], list[GroupSnapshot]]) -> str:
    port = free_port()
    await nursery.start(serve_node_metrics, f"127.0.0.1:{port}", snapshots)
    return f"http://127.0.0.1:{port}"


async def raw_request(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                answer += chunk
    return answer


async def test_page_server_get_head_keepalive_and_errors(tmp_path: Path) -> None:
    snaps = [snap("api", v2_leaf(tmp_path, "api"), None)]
    async with trio.open_nursery() as nursery:
        url = await serving(nursery, lambda: snaps)
        port = int(url.rsplit(":", 1)[1])
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            first = await client.get("/metrics")
            second = await client.get("/metrics", headers={"Accept": OPENMETRICS_ACCEPT})  # same connection
            head = await client.head("/metrics")
            missing = await client.get("/nope")
            post = await client.post("/metrics", content=b"x")
            index = await client.get("/")
        bad = await raw_request(port, b"NONSENSE\r\n\r\n")
        too_big = await raw_request(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
        http10 = await raw_request(port, b"GET /metrics HTTP/1.0\r\n\r\n")
        nursery.cancel_scope.cancel()
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert Page.parse(first.text).value("web_node_group_up", group="api") == 1
    assert second.headers["content-type"].startswith("application/openmetrics-text")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    assert missing.status_code == 404
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
    assert index.status_code == 200 and b'href="/metrics"' in index.content
    assert bad.startswith(b"HTTP/1.1 400 ")
    assert too_big.startswith(b"HTTP/1.1 431 ")
    assert http10.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in http10


async def test_page_server_answers_500_and_keeps_serving(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def flaky() -> list[GroupSnapshot]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("supervisor state unreadable")
        return [snap("api", None, None)]

    async with trio.open_nursery() as nursery:
        url = await serving(nursery, flaky)
        async with httpx.AsyncClient(timeout=5) as client:
            broken = await client.get(f"{url}/metrics")
            fine = await client.get(f"{url}/metrics")
        nursery.cancel_scope.cancel()
    assert broken.status_code == 500 and "supervisor state unreadable" in broken.text
    assert fine.status_code == 200
    assert "metrics page: GET /metrics failed" in caplog.text


async def test_page_server_refuses_a_busy_address_naming_the_key() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1:\d+ .*set \[node\] metrics_listen"):
            await serve_node_metrics(f"127.0.0.1:{port}", list)
