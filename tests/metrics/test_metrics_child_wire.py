"""The wire between the node and its children: a child's metrics socket spoken to
byte by byte (keep-alive, HTTP/1.0, the compact form, stalled and surplus
connections), and NodePage's kept connections, restarted children and
children of another web-node version. Real unix sockets, real
ProcessMetrics.serve_socket threads, no mocks."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import trio
from metrics_helpers import Page, promtool_check_metrics

from web_node.members import Endpoint, Member
from web_node.metrics import NodePage, ProcessMetrics, _child_socket
from web_node.metrics._member_families import BLOCKS_CONTENT_TYPE, BLOCKS_HEADER, FAMILIES_FINGERPRINT, MEMBER_FAMILIES
from web_node.metrics._page import join_blocks, split_blocks
from web_node.supervisor import GroupSnapshot

PLAIN_TEXT = "text/plain; version=0.0.4; charset=utf-8"
GET = b"GET /metrics HTTP/1.1\r\nHost: child\r\n\r\n"
GET_BLOCKS = f"GET /metrics HTTP/1.1\r\nHost: child\r\n{BLOCKS_HEADER}: {FAMILIES_FINGERPRINT}\r\n\r\n".encode()

ENDPOINTS = (
    Endpoint("Quick", "GET", "/quick"),
    Endpoint("Store", "PUT", "/things/<name>"),
    Endpoint("Burn", "GET", "/burn"),
)


async def _no_app(ctx: Any) -> Any:
    raise AssertionError("not used")


WEB = Member(name="web", role="api", kind="http", description="test", listen="127.0.0.1:0", endpoints=ENDPOINTS,
             make_app=_no_app)


def snap(name: str, socket_path: str | None) -> GroupSnapshot:
    return GroupSnapshot(name=name, members=(name,), state="up", pid=os.getpid(), restarts=0,
                         start_time=time.time(), last_exit=None, cgroup=None, metrics_socket=socket_path)


def child_metrics(member: str, *, runs: int = 1, outcome: str = "ok") -> ProcessMetrics:
    m = ProcessMetrics(task_accounting=False)
    m.set_member_enabled(member)
    for _ in range(runs):
        m.record_run(member, outcome, time.time(), 0.01)
    return m


def burn(seconds: float) -> None:
    """Busy CPU in this thread for ``seconds`` of thread CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


# ---------------------------------------------------------------- a raw HTTP client on a unix socket


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


class RawClient:
    """One connection to a socket; reads answers by their Content-Length, so several can follow on it."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def connect(cls, path: str) -> RawClient:
        return cls(await trio.open_unix_socket(path))

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stream.aclose()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _more(self) -> None:
        chunk = await self.stream.receive_some()
        if not chunk:
            raise EOFError(f"the peer closed the connection; {len(self.buf)} bytes of an answer were in")
        self.buf += chunk

    async def answer(self, timeout_s: float = 5.0) -> Answer:
        with trio.fail_after(timeout_s):
            while b"\r\n\r\n" not in self.buf:
                await self._more()
            head, _, _ = self.buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            end = len(head) + 4 + int(headers["content-length"])
            while len(self.buf) < end:
                await self._more()
        body = self.buf[len(head) + 4:end]
        self.buf = self.buf[end:]
        return Answer(status, headers, body)

    async def ask(self, request: bytes = GET) -> Answer:
        await self.send(request)
        return await self.answer()

    async def wait_closed(self, timeout_s: float) -> bytes:
        """Read until the peer closes the connection (fails after ``timeout_s``); what came before the EOF."""
        got = self.buf
        self.buf = b""
        with trio.fail_after(timeout_s):
            while chunk := await self.stream.receive_some():
                got += chunk
        return got


def page_of(answer: Answer) -> Page:
    assert answer.status == 200, answer
    return Page.parse(answer.body.decode())


def accepted_inodes(path: str) -> set[int]:
    """The inodes of the connections a listening unix socket at ``path`` accepted and still holds.

    In /proc/net/unix an accepted socket shows its listener's path; the
    listener's state is 01 (unconnected), an accepted one's 03 (connected).
    """
    out = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and fields[5] == "03":
                out.add(int(fields[6]))
    return out


def client_inode(page: NodePage, path: str) -> int:
    """The inode of the connection the node keeps to the child at ``path``."""
    sock = page.connections.take(path)
    assert sock is not None, f"the node keeps no connection to {path}"
    try:
        return os.fstat(sock.fileno()).st_ino
    finally:
        page.connections.give_back(path, sock)


# ---------------------------------------------------------------- the child's socket, byte by byte


async def test_child_socket_keeps_http_1_1_connections_open_and_closes_http_1_0_ones(tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")
    metrics = child_metrics("api")
    async with trio.open_nursery() as nursery:
        await nursery.start(metrics.serve_socket, path)
        async with await RawClient.connect(path) as client:
            first = await client.ask()
            metrics.record_run("api", "ok", time.time(), 0.01)
            second = await client.ask()  # the same connection
            # Two requests sent at once are answered in turn, each whole.
            await client.send(GET + GET)
            third, fourth = await client.answer(), await client.answer()
            assert client.buf == b"", "nothing past the announced Content-Lengths"
            assert len(accepted_inodes(path)) == 1

        async with await RawClient.connect(path) as old:
            await old.send(b"GET /metrics HTTP/1.0\r\n\r\n")
            closing = await old.answer()
            after = await old.wait_closed(2.0)
        nursery.cancel_scope.cancel()

    for answer in (first, second, third, fourth):
        assert answer.status == 200
        assert answer.headers["content-type"] == PLAIN_TEXT
        assert "connection" not in answer.headers, "an HTTP/1.1 answer keeps the connection"
        assert int(answer.headers["content-length"]) == len(answer.body)
    assert page_of(first).value("web_node_member_runs_total", member="api", outcome="ok") == 1
    assert page_of(second).value("web_node_member_runs_total", member="api", outcome="ok") == 2
    assert page_of(fourth).value("web_node_member_runs_total", member="api", outcome="ok") == 2
    assert third.body == fourth.body

    assert closing.headers["connection"].lower() == "close"
    assert page_of(closing).value("web_node_member_enabled", member="api") == 1
    assert after == b"", "the child closes an HTTP/1.0 connection right after its answer"


async def test_child_answers_the_compact_form_only_for_the_node_s_fingerprint(tmp_path: Path) -> None:
    path = str(tmp_path / "web.sock")
    metrics = child_metrics("web", runs=2)
    metrics.record_run("web", "error", time.time(), 0.5)
    await request(metrics.wrap_app(asgi_app, WEB), "GET", "/quick")
    await request(metrics.wrap_app(asgi_app, WEB), "PUT", "/things/x")
    async with trio.open_nursery() as nursery:
        await nursery.start(metrics.serve_socket, path)
        async with await RawClient.connect(path) as client:
            compact = await client.ask(GET_BLOCKS)
            wrong = await client.ask(f"GET /metrics HTTP/1.1\r\n{BLOCKS_HEADER}: 0123456789abcdef\r\n\r\n".encode())
            plain = await client.ask()
        nursery.cancel_scope.cancel()

    assert compact.status == 200 and compact.headers["content-type"] == BLOCKS_CONTENT_TYPE
    assert int(compact.headers["content-length"]) == len(compact.body)
    parts = split_blocks(compact.body)
    assert parts is not None and len(parts) == len(MEMBER_FAMILIES) + 1
    assert parts[-1] == b"", "no other collectors in this process"
    names = [family[0] for family in MEMBER_FAMILIES]
    for (name, kind, _, _), lines in zip(MEMBER_FAMILIES, parts, strict=False):
        allowed = {name, f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else {name}
        for line in lines.decode().splitlines():
            assert not line.startswith("#"), f"metadata in the block of {name}: {line!r}"
            sample = re.split(r"[{ ]", line, maxsplit=1)[0]
            assert sample in allowed, f"{line!r} in the block of {name}"

    def block(name: str) -> str:
        return parts[names.index(name)].decode()

    assert block("web_node_member_enabled") == 'web_node_member_enabled{member="web"} 1\n'
    assert block("web_node_member_cpu_seconds_total") == ""  # task accounting off
    assert block("web_node_endpoint_cpu_seconds_total") == ""
    assert 'web_node_member_runs_total{member="web",outcome="ok"} 2\n' in block("web_node_member_runs_total")
    assert 'web_node_member_runs_total{member="web",outcome="error"} 1\n' in block("web_node_member_runs_total")
    assert 'web_node_member_run_duration_seconds_count{member="web"} 3\n' in block("web_node_member_run_duration_seconds")
    requests_block = block("web_node_http_requests_total")
    assert 'endpoint="Quick",method="GET",code="200"} 1\n' in requests_block
    assert 'endpoint="Store",method="PUT",code="409"} 1\n' in requests_block
    assert 'web_node_http_request_duration_seconds_count{member="web",endpoint="Quick"} 1\n' in block(
        "web_node_http_request_duration_seconds")
    assert 'web_node_http_requests_in_flight{member="web",endpoint="Burn"} 0\n' in block("web_node_http_requests_in_flight")
    assert 'endpoint="other"' not in block("web_node_http_endpoint_enabled")  # declared endpoints only

    # The blocks under the node's HELP/TYPE lines read as the child's own plain page.
    joined = Page.parse(join_blocks([parts], openmetrics=False).decode())
    assert plain.headers["content-type"] == PLAIN_TEXT
    assert joined.samples == page_of(plain).samples

    # A node built from another table of families gets the plain page.
    assert wrong.status == 200 and wrong.headers["content-type"] == PLAIN_TEXT
    assert wrong.body == plain.body
    assert "\n#\n" not in wrong.body.decode()


# ---------------------------------------------------------------- the node's kept connections


async def test_node_page_keeps_one_connection_per_child_and_follows_a_restarted_child(tmp_path: Path) -> None:
    api_sock, backend_sock = str(tmp_path / "api.sock"), str(tmp_path / "backend.sock")
    snaps = [snap("api", api_sock), snap("backend", backend_sock)]
    page = NodePage(lambda: snaps, child_timeout_s=2.0)
    backend = child_metrics("scheduler")
    try:
        async with trio.open_nursery() as outer:
            await outer.start(backend.serve_socket, backend_sock)
            api = child_metrics("api")
            async with trio.open_nursery() as first_api:
                await first_api.start(api.serve_socket, api_sock)
                server_side: dict[str, set[int]] = {api_sock: set(), backend_sock: set()}
                client_side: dict[str, set[int]] = {api_sock: set(), backend_sock: set()}
                for i in range(5):
                    body, _ = await page.render()
                    scraped = Page.parse(body.decode())
                    assert scraped.value("web_node_member_runs_total", member="api", outcome="ok") == 1 + i
                    assert scraped.value("web_node_member_enabled", member="scheduler") == 1
                    assert len(page.connections) == 2, "one kept connection per child"
                    for path in (api_sock, backend_sock):
                        server_side[path] |= accepted_inodes(path)
                        client_side[path].add(client_inode(page, path))
                    api.record_run("api", "ok", time.time(), 0.01)
                first_api.cancel_scope.cancel()  # the group's process stops...
            for path in (api_sock, backend_sock):
                assert len(client_side[path]) == 1, f"the node connected to {path} more than once: {client_side[path]}"
                assert len(server_side[path]) == 1, f"{path} accepted more than one connection: {server_side[path]}"
            old_connection = client_side[api_sock].pop()

            restarted = child_metrics("api", runs=3, outcome="error")  # ...and the supervisor starts it again
            async with trio.open_nursery() as second_api:
                await second_api.start(restarted.serve_socket, api_sock)
                body, _ = await page.render()
                again, _ = await page.render()
                new_connection = client_inode(page, api_sock)
                second_api.cancel_scope.cancel()
            outer.cancel_scope.cancel()
    finally:
        page.connections.close()

    scraped = Page.parse(body.decode())
    assert scraped.value("web_node_member_runs_total", member="api", outcome="error") == 3
    assert scraped.get("web_node_member_runs_total", member="api", outcome="ok") is None, "the old child's counters are gone"
    assert scraped.value("web_node_member_enabled", member="scheduler") == 1
    assert page.errors.get("api", 0) == 0 and page.errors.get("backend", 0) == 0, page.errors
    assert scraped.value("web_node_scrape_errors_total", group="api") == 0
    assert Page.parse(again.decode()).value("web_node_scrape_errors_total", group="api") == 0
    assert new_connection != old_connection


async def test_node_page_asks_again_when_the_child_closed_its_kept_connection(tmp_path: Path) -> None:
    """A child closes its longest idle connection when it has too many: that may be the node's kept one."""
    path = str(tmp_path / "api.sock")
    metrics = child_metrics("api")
    page = NodePage(lambda: [snap("api", path)], child_timeout_s=2.0)
    try:
        async with trio.open_nursery() as nursery, AsyncExitStack() as others:
            await nursery.start(metrics.serve_socket, path)
            await page.render()
            kept = client_inode(page, path)
            for _ in range(_child_socket.MAX_CONNECTIONS):  # newer connections push the node's one out
                client = await others.enter_async_context(await RawClient.connect(path))
                assert (await client.ask()).status == 200
            metrics.record_run("api", "ok", time.time(), 0.01)
            body, _ = await page.render()
            renewed = client_inode(page, path)
            nursery.cancel_scope.cancel()
    finally:
        page.connections.close()
    scraped = Page.parse(body.decode())
    assert scraped.value("web_node_member_runs_total", member="api", outcome="ok") == 2
    assert scraped.value("web_node_scrape_errors_total", group="api") == 0
    assert page.errors == {}
    assert renewed != kept, "the node connected anew"


# ---------------------------------------------------------------- a child of another web-node version


OLD_PAGE = (
    b"# HELP web_node_member_enabled Older help text of the same family\n"
    b"# TYPE web_node_member_enabled gauge\n"
    b'web_node_member_enabled{member="old"} 1\n'
    b"# HELP web_node_member_legacy_total A family this node's table does not have\n"
    b"# TYPE web_node_member_legacy_total counter\n"
    b'web_node_member_legacy_total{member="old"} 7\n'
)


async def old_child(path: str, heads: list[bytes], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A child of an older web-node: plain text to every request, whatever it names; keep-alive."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(8)
    answer = (f"HTTP/1.1 200 OK\r\nContent-Type: {PLAIN_TEXT}\r\nContent-Length: {len(OLD_PAGE)}\r\n\r\n".encode()
              + OLD_PAGE)

    async def handle(stream: trio.SocketStream) -> None:
        buf = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some()
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                heads.append(head)
                await stream.send_all(answer)

    async with trio.open_nursery() as nursery:
        task_status.started()
        try:
            while True:
                conn, _ = await sock.accept()
                nursery.start_soon(handle, trio.SocketStream(conn))
        finally:
            sock.close()


async def test_node_page_merges_a_plain_text_child_of_another_version(tmp_path: Path) -> None:
    api_sock, old_sock = str(tmp_path / "api.sock"), str(tmp_path / "old.sock")
    snaps = [snap("api", api_sock), snap("old", old_sock)]
    page = NodePage(lambda: snaps, child_timeout_s=2.0)
    heads: list[bytes] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(child_metrics("api").serve_socket, api_sock)
            await nursery.start(old_child, old_sock, heads)
            body, content_type = await page.render()
            second, _ = await page.render()
            old_connections = accepted_inodes(old_sock)
            nursery.cancel_scope.cancel()
    finally:
        page.connections.close()

    assert content_type == PLAIN_TEXT
    text = body.decode()
    scraped = Page.parse(text)  # fails on a series that is there twice
    types = re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE)
    assert types and len(types) == len(set(types)), f"families declared twice: {sorted(t for t in types if types.count(t) > 1)}"
    helps = re.findall(r"^# HELP (\S+) ", text, flags=re.MULTILINE)
    assert sorted(helps) == sorted(types)
    assert {s["member"] for s in scraped.series("web_node_member_enabled")} == {"api", "old"}
    assert scraped.value("web_node_member_runs_total", member="api", outcome="ok") == 1
    assert scraped.value("web_node_member_legacy_total", member="old") == 7
    assert scraped.value("web_node_scrape_errors_total", group="old") == 0
    assert scraped.value("web_node_scrape_errors_total", group="api") == 0
    assert page.errors == {}
    # The node asked the old child for the compact form (it did not know better) on one kept connection.
    assert len(old_connections) == 1
    assert len(heads) == 2 and all(f"{BLOCKS_HEADER}: {FAMILIES_FINGERPRINT}".encode() in h for h in heads)
    assert Page.parse(second.decode()).samples == scraped.samples
    promtool_check_metrics(text)


# ---------------------------------------------------------------- lines kept between scrapes


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["path"] == "/burn":
        for _ in range(10):
            burn(0.003)
            await trio.sleep(0)  # each step is charged to the request's endpoint
    status = 409 if scope["method"] == "PUT" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def request(app: Any, method: str, path: str) -> list[Any]:
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)
        await trio.lowlevel.checkpoint()

    await app({"type": "http", "method": method, "path": path}, receive, send)
    return sent


async def test_each_scrape_shows_what_changed_since_the_last_one(tmp_path: Path) -> None:
    path = str(tmp_path / "web.sock")
    metrics = ProcessMetrics(task_accounting=True)
    metrics.set_member_enabled("web")
    metrics.set_member_enabled("ticker")
    snaps = [snap("web", path)]
    node = NodePage(lambda: snaps, child_timeout_s=2.0)
    web = {"member": "web"}
    quick = {"member": "web", "endpoint": "Quick"}
    metrics.install_instrument()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(metrics.serve_socket, path)

            async def scrape() -> Page:
                body, _ = await node.render()
                return Page.parse(body.decode())

            async def web_task() -> None:
                metrics.enter_member("web")  # the member's task: its request tasks are its own
                app = metrics.wrap_app(asgi_app, WEB)
                for _ in range(3):
                    await request(app, "GET", "/quick")
                await request(app, "PUT", "/things/a")
                before = await scrape()
                await request(app, "GET", "/quick")
                after = await scrape()
                steady = await scrape()  # nothing happened: the same lines
                await request(app, "GET", "/burn")
                burned = await scrape()
                results.extend([before, after, steady, burned])

            results: list[Page] = []
            async with trio.open_nursery() as member_tasks:
                member_tasks.start_soon(web_task)
            before, after, steady, burned = results

            metrics.record_run("ticker", "ok", 1_700_000_000.0, 0.2)
            one_run = await scrape()
            metrics.record_run("ticker", "ok", 1_700_000_060.0, 0.3)
            metrics.record_run("ticker", "skipped_paused", 1_700_000_120.0)
            two_runs = await scrape()

            async def ticker_task() -> None:
                metrics.enter_member("ticker")
                for _ in range(10):
                    burn(0.003)
                    await trio.sleep(0)

            async with trio.open_nursery() as member_tasks:
                member_tasks.start_soon(ticker_task)
            cpu_before = (await scrape()).value("web_node_member_cpu_seconds_total", member="ticker")
            async with trio.open_nursery() as member_tasks:
                member_tasks.start_soon(ticker_task)
            charged = await scrape()
            direct = Page.parse(metrics.render()[0].decode())
            nursery.cancel_scope.cancel()
    finally:
        metrics.uninstall_instrument()
        node.connections.close()

    def requests(page: Page, endpoint: str = "Quick", method: str = "GET", code: str = "200") -> float:
        return page.value("web_node_http_requests_total", member="web", endpoint=endpoint, method=method, code=code)

    assert requests(before) == 3
    assert requests(after) == requests(before) + 1
    assert page_count(after, **quick) == page_count(before, **quick) + 1
    assert after.value("web_node_http_request_duration_seconds_bucket", le="+Inf", **quick) == 4
    assert requests(after, "Store", "PUT", "409") == requests(before, "Store", "PUT", "409") == 1
    assert page_count(after, member="web", endpoint="Store") == 1
    assert _only_cpu_differs(steady, after)
    assert requests(burned, "Burn") == 1 and requests(burned) == 4

    burn_cpu = burned.value("web_node_endpoint_cpu_seconds_total", member="web", endpoint="Burn")
    assert burn_cpu >= 0.025, burn_cpu  # 10 steps of 3 ms
    assert after.value("web_node_endpoint_cpu_seconds_total", member="web", endpoint="Burn") == 0
    assert burned.value("web_node_member_cpu_seconds_total", **web) >= burn_cpu
    assert burned.value("web_node_member_cpu_seconds_total", **web) > after.value("web_node_member_cpu_seconds_total", **web)

    assert one_run.value("web_node_member_runs_total", member="ticker", outcome="ok") == 1
    assert one_run.value("web_node_member_last_run_timestamp_seconds", member="ticker") == 1_700_000_000.0
    assert one_run.value("web_node_member_run_duration_seconds_count", member="ticker") == 1
    assert two_runs.value("web_node_member_runs_total", member="ticker", outcome="ok") == 2
    assert two_runs.value("web_node_member_runs_total", member="ticker", outcome="skipped_paused") == 1
    assert two_runs.value("web_node_member_last_run_timestamp_seconds", member="ticker") == 1_700_000_060.0
    assert two_runs.value("web_node_member_run_duration_seconds_count", member="ticker") == 2  # a skipped run has no duration
    assert two_runs.value("web_node_member_run_duration_seconds_sum", member="ticker") == pytest.approx(0.5)

    assert two_runs.get("web_node_member_cpu_seconds_total", member="ticker") is None  # no task of its own yet
    cpu_after = charged.value("web_node_member_cpu_seconds_total", member="ticker")
    assert cpu_before >= 0.025, cpu_before
    assert cpu_after >= cpu_before + 0.025, (cpu_before, cpu_after)
    assert requests(charged) == 4  # kept lines, still right
    assert direct.value("web_node_member_cpu_seconds_total", member="ticker") == cpu_after
    assert direct.value("web_node_http_requests_total", member="web", endpoint="Quick", method="GET", code="200") == 4
    assert node.errors == {}


def page_count(page: Page, **labels: str) -> float:
    return page.value("web_node_http_request_duration_seconds_count", **labels)


def _only_cpu_differs(a: Page, b: Page) -> bool:
    """Two pages whose samples differ in CPU counters only (the scraping task's own steps may be charged)."""
    keys = set(a.samples) | set(b.samples)
    differ = sorted(k[0] for k in keys if a.samples.get(k) != b.samples.get(k))
    assert all("cpu_seconds" in name for name in differ), differ
    return True


# ---------------------------------------------------------------- stalled and surplus connections


@pytest.fixture
def short_request_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    monkeypatch.setattr(_child_socket, "CHILD_REQUEST_TIMEOUT_S", 0.3)
    yield 0.3


async def test_child_drops_a_half_sent_request_after_the_timeout_and_answers_others_meanwhile(
        tmp_path: Path, short_request_timeout: float) -> None:
    path = str(tmp_path / "api.sock")
    metrics = child_metrics("api")
    async with trio.open_nursery() as nursery, AsyncExitStack() as clients:
        await nursery.start(metrics.serve_socket, path)
        idle = await clients.enter_async_context(await RawClient.connect(path))
        assert (await idle.ask()).status == 200  # a kept connection between requests: not stalled
        stalled = await clients.enter_async_context(await RawClient.connect(path))
        await stalled.send(b"GET /metrics HTTP/1.1\r\nHost: chi")
        began = time.monotonic()
        slow = await clients.enter_async_context(await RawClient.connect(path))
        await slow.send(b"GET /metrics HTTP/1.1\r\n")  # completed within the timeout: answered

        busy = await clients.enter_async_context(await RawClient.connect(path))
        latencies = []
        while time.monotonic() - began < short_request_timeout * 0.6:
            asked = time.monotonic()
            assert page_of(await busy.ask()).value("web_node_member_enabled", member="api") == 1
            latencies.append(time.monotonic() - asked)
            await trio.sleep(0.03)
        await slow.send(b"Host: child\r\n\r\n")
        assert (await slow.answer()).status == 200

        leftover = await stalled.wait_closed(short_request_timeout + 2.0)
        dropped_after = time.monotonic() - began

        await trio.sleep(short_request_timeout + 0.1)  # past the timeout again: whole requests reset the clock
        assert (await slow.ask()).status == 200
        assert (await idle.ask()).status == 200
        assert (await busy.ask()).status == 200
        fresh = await clients.enter_async_context(await RawClient.connect(path))
        assert (await fresh.ask()).status == 200
        nursery.cancel_scope.cancel()

    assert leftover == b"", "a half-sent request gets no answer"
    assert short_request_timeout - 0.05 <= dropped_after < short_request_timeout + 1.0, dropped_after
    assert len(latencies) >= 3 and max(latencies) < short_request_timeout / 2, latencies


async def test_child_closes_its_longest_idle_connection_past_max_connections(tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")
    metrics = child_metrics("api")
    limit = _child_socket.MAX_CONNECTIONS
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        await nursery.start(metrics.serve_socket, path)
        conns = []
        for _ in range(limit):  # in turn: each used later than the one before
            conn = await stack.enter_async_context(await RawClient.connect(path))
            assert (await conn.ask()).status == 200
            conns.append(conn)
        assert len(accepted_inodes(path)) == limit
        assert (await conns[0].ask()).status == 200  # the first is used again: the second is now the longest idle
        newest = await stack.enter_async_context(await RawClient.connect(path))
        assert (await newest.ask()).status == 200
        assert await conns[1].wait_closed(2.0) == b""
        assert len(accepted_inodes(path)) == limit
        for conn in [conns[0], *conns[2:], newest]:
            assert (await conn.ask()).status == 200
        nursery.cancel_scope.cancel()


async def test_child_times_a_pipelined_half_request_from_its_own_start(tmp_path: Path, short_request_timeout: float) -> None:
    """The deadline of an unfinished request runs from when that request began (``_Connection.partial_since``).

    The first request arrives in two reads; the read that completes it also
    carries the start of the second. The second is completed well within the
    timeout of its own start, and must be answered.
    """
    path = str(tmp_path / "api.sock")
    metrics = child_metrics("api")
    async with trio.open_nursery() as nursery, AsyncExitStack() as clients:
        await nursery.start(metrics.serve_socket, path)
        client = await clients.enter_async_context(await RawClient.connect(path))
        await client.send(b"GET /metrics HTTP/1.1\r\n")
        await trio.sleep(short_request_timeout * 0.8)
        await client.send(b"Host: child\r\n\r\nGET /metrics HTTP/1.1\r\n")  # the first one whole, the second begun
        first = await client.answer()
        await trio.sleep(short_request_timeout * 0.4)  # the second began this long ago: well within its timeout
        try:
            await client.send(b"Host: child\r\n\r\n")
            second: Answer | None = await client.answer()
        except (trio.BrokenResourceError, EOFError):
            second = None
        nursery.cancel_scope.cancel()
    assert first.status == 200
    assert second is not None and second.status == 200, (
        f"the child dropped a request begun {short_request_timeout * 0.4:.2f} s earlier, "
        f"with a timeout of {short_request_timeout} s")


async def test_an_idle_child_answers_with_its_last_page_until_a_task_step_or_a_change() -> None:
    metrics = ProcessMetrics(task_accounting=True)
    metrics.install_instrument()
    try:
        metrics.enter_member("gc")
        metrics.set_member_enabled("gc")
        metrics.record_run("gc", "ok", 1_700_000_000.0, 0.02)
        await trio.lowlevel.checkpoint()
        first = metrics.render_blocks()
        assert metrics.render_blocks() is first, "no task step ran: the same pieces are sent again"
        await trio.lowlevel.checkpoint()  # a task step: its CPU is charged to gc, the page is made again
        second = metrics.render_blocks()
        assert second is not first
        metrics.record_run("gc", "error", 1_700_000_060.0, 0.5)  # a change outside a task step
        third = b"".join(metrics.render_blocks())
        assert b'web_node_member_runs_total{member="gc",outcome="error"} 1\n' in third
        assert b'web_node_member_last_run_timestamp_seconds{member="gc"} 1700000060.0\n' in third
    finally:
        metrics.uninstall_instrument()
    without = ProcessMetrics(task_accounting=False)
    without.set_member_enabled("gc")
    assert without.render_blocks() is not without.render_blocks(), "without task accounting every page is made anew"
