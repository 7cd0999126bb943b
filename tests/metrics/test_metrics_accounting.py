"""CPU finer than a process: the trio instrument charges each task step to the
member (and, for a request, the endpoint) that owns the task. Real trio
runs, a real hypercorn server, real HTTP."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import httpx
import hypercorn.config
import hypercorn.trio
import pytest
import trio
from metrics_helpers import Page, promtool_check_metrics
from node_helpers import free_port
from quart import jsonify
from quart_trio import QuartTrio

from web_node.members import Endpoint, Member
from web_node.metrics import ProcessMetrics


def burn(seconds: float) -> None:
    """Busy CPU in this thread for ``seconds`` of thread CPU time."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        x += 1


def page_of(metrics: ProcessMetrics) -> Page:
    body, _ = metrics.render()
    return Page.parse(body.decode())


async def test_two_members_in_one_process_the_burner_carries_the_cpu() -> None:
    metrics = ProcessMetrics(task_accounting=True)
    metrics.install_instrument()
    try:
        async def burner() -> None:
            metrics.enter_member("burner")

            async def helper() -> None:  # a child task: inherits the member
                for _ in range(50):
                    burn(0.002)
                    await trio.sleep(0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(helper)
                for _ in range(100):
                    burn(0.002)  # small steps, interleaved with the idle member
                    await trio.sleep(0)

        async def idle() -> None:
            metrics.enter_member("idle")
            for _ in range(30):
                await trio.sleep(0.01)

        before = time.thread_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(burner)
            nursery.start_soon(idle)
        used = time.thread_time() - before
    finally:
        metrics.uninstall_instrument()

    page = page_of(metrics)
    burner_s = page.value("web_node_member_cpu_seconds_total", member="burner")
    idle_s = page.value("web_node_member_cpu_seconds_total", member="idle")
    assert burner_s >= 0.29, (burner_s, idle_s, used)  # 150 steps of 2 ms
    assert burner_s <= used + 0.001
    assert idle_s < burner_s / 20, (burner_s, idle_s)
    promtool_check_metrics(page.text)


async def test_switched_off_accounting_charges_nothing_and_says_so_by_absence() -> None:
    metrics = ProcessMetrics(task_accounting=False)
    metrics.install_instrument()
    try:
        metrics.enter_member("burner")
        burn(0.01)
        await trio.sleep(0)
    finally:
        metrics.uninstall_instrument()
    page = page_of(metrics)
    assert not page.declares("web_node_member_cpu_seconds_total")
    assert not page.declares("web_node_endpoint_cpu_seconds_total")


def test_env_switch_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_NODE_TASK_ACCOUNTING", "0")
    assert ProcessMetrics().task_accounting is False
    monkeypatch.setenv("WEB_NODE_TASK_ACCOUNTING", "1")
    assert ProcessMetrics().task_accounting is True


def test_periodic_runs_by_outcome_last_run_and_duration() -> None:
    metrics = ProcessMetrics(task_accounting=False)
    metrics.record_run("gc", "ok", 1000.0, 0.2)
    metrics.record_run("gc", "error", 1010.0, 1.5)
    metrics.record_run("gc", "skipped_paused", 1020.0)
    page = page_of(metrics)
    assert page.value("web_node_member_runs_total", member="gc", outcome="ok") == 1
    assert page.value("web_node_member_runs_total", member="gc", outcome="error") == 1
    assert page.value("web_node_member_runs_total", member="gc", outcome="skipped_paused") == 1
    assert page.value("web_node_member_last_run_timestamp_seconds", member="gc") == 1010.0  # a skipped run is not a run
    assert page.value("web_node_member_run_duration_seconds_count", member="gc") == 2
    assert page.value("web_node_member_run_duration_seconds_sum", member="gc") == pytest.approx(1.7)
    assert page.value("web_node_member_run_duration_seconds_bucket", member="gc", le="1.0") == 1
    promtool_check_metrics(page.text)


# ---------------------------------------------------------------- endpoints of one server


ENDPOINTS = (
    Endpoint("Burn", "GET", "/burn/<int:ms>"),
    Endpoint("Quick", "GET", "/quick"),
    Endpoint("Store", "PUT", "/things/<name>"),
    Endpoint("Off", "GET", "/off"),
)


async def _no_app(ctx: Any) -> Any:
    raise AssertionError("not used")


MEMBER = Member(name="testapi", role="api", kind="http", description="test", listen="127.0.0.1:0",
                endpoints=ENDPOINTS, make_app=_no_app)


def quart_app() -> QuartTrio:
    app = QuartTrio("testapi")

    async def burn_view(ms: int) -> Any:
        # Work spread over several steps and a child task, as a real handler's awaits would.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.to_thread.run_sync, lambda: None))
            for _ in range(ms // 5):
                burn(0.005)
                await trio.sleep(0)
        return jsonify({"burned_ms": ms})

    async def quick() -> Any:
        return jsonify({"ok": True})

    async def store(name: str) -> Any:
        return jsonify({"error": f"no {name}"}), 409

    async def off() -> Any:
        return jsonify({"error": "endpoint Off is disabled by configuration"}), 404

    async def healthz() -> Any:
        return jsonify({"status": "ok"})

    app.add_url_rule("/burn/<int:ms>", endpoint="Burn", view_func=burn_view, methods=["GET"])
    app.add_url_rule("/quick", endpoint="Quick", view_func=quick, methods=["GET"])
    app.add_url_rule("/things/<name>", endpoint="Store", view_func=store, methods=["PUT"])
    app.add_url_rule("/off", endpoint="Off", view_func=off, methods=["GET"])
    app.add_url_rule("/healthz", endpoint="healthz", view_func=healthz, methods=["GET"])
    return app


async def test_endpoints_of_one_server_are_told_apart() -> None:
    metrics = ProcessMetrics(task_accounting=True)
    metrics.install_instrument()
    port = free_port()
    try:
        async with trio.open_nursery() as nursery:
            # The member's task: the server and every connection task it spawns belong to testapi.
            async def member_task(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
                metrics.enter_member("testapi")
                cfg = hypercorn.config.Config()
                cfg.bind = [f"127.0.0.1:{port}"]
                cfg.accesslog = None
                app = metrics.wrap_app(quart_app(), MEMBER, frozenset({"Off"}))
                await hypercorn.trio.serve(app, cfg, shutdown_trigger=trio.sleep_forever, task_status=task_status)

            await nursery.start(member_task)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                for _ in range(4):
                    assert (await client.get("/burn/60")).status_code == 200
                for _ in range(40):
                    assert (await client.get("/quick")).status_code == 200
                assert (await client.put("/things/x")).status_code == 409
                assert (await client.get("/off")).status_code == 404
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/no/such/path")).status_code == 404
                assert (await client.post("/quick")).status_code == 405
                await trio.sleep(0.05)  # the server's task notes the last answer right after sending it
                page = page_of(metrics)
            nursery.cancel_scope.cancel()
    finally:
        metrics.uninstall_instrument()

    ep = {"member": "testapi"}
    burn_s = page.value("web_node_endpoint_cpu_seconds_total", endpoint="Burn", **ep)
    quick_s = page.value("web_node_endpoint_cpu_seconds_total", endpoint="Quick", **ep)
    assert burn_s >= 0.2, burn_s  # 4 x 60 ms
    assert quick_s < burn_s / 3, (burn_s, quick_s)  # 40 tiny requests
    member_s = page.value("web_node_member_cpu_seconds_total", **ep)
    assert member_s >= burn_s + quick_s  # the member's total holds its endpoints and its connection handling

    assert page.value("web_node_http_requests_total", endpoint="Burn", method="GET", code="200", **ep) == 4
    assert page.value("web_node_http_requests_total", endpoint="Quick", method="GET", code="200", **ep) == 40
    assert page.value("web_node_http_requests_total", endpoint="Store", method="PUT", code="409", **ep) == 1
    assert page.value("web_node_http_requests_total", endpoint="Off", method="GET", code="404", **ep) == 1
    # Undeclared routes and unknown paths share one bounded label value.
    assert page.value("web_node_http_requests_total", endpoint="other", method="GET", code="200", **ep) == 1
    assert page.value("web_node_http_requests_total", endpoint="other", method="GET", code="404", **ep) == 1
    assert page.value("web_node_http_requests_total", endpoint="other", method="POST", code="405", **ep) == 1

    assert page.value("web_node_http_request_duration_seconds_count", endpoint="Burn", **ep) == 4
    assert page.value("web_node_http_request_duration_seconds_sum", endpoint="Burn", **ep) >= 0.2
    assert page.value("web_node_http_request_duration_seconds_bucket", endpoint="Burn", le="0.01", **ep) == 0
    assert page.value("web_node_http_request_duration_seconds_bucket", endpoint="Burn", le="+Inf", **ep) == 4
    assert page.value("web_node_http_requests_in_flight", endpoint="Burn", **ep) == 0

    assert page.value("web_node_http_endpoint_enabled", endpoint="Burn", **ep) == 1
    assert page.value("web_node_http_endpoint_enabled", endpoint="Off", **ep) == 0
    assert page.get("web_node_http_endpoint_enabled", endpoint="other", **ep) is None  # only declared endpoints
    promtool_check_metrics(page.text)


async def test_in_flight_counts_a_request_being_answered() -> None:
    metrics = ProcessMetrics(task_accounting=False)
    entered, release = trio.Event(), trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = metrics.wrap_app(app, MEMBER)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wrapped, {"type": "http", "method": "GET", "path": "/quick"}, receive, send)
        await entered.wait()
        assert page_of(metrics).value("web_node_http_requests_in_flight", member="testapi", endpoint="Quick") == 1
        release.set()
    page = page_of(metrics)
    assert page.value("web_node_http_requests_in_flight", member="testapi", endpoint="Quick") == 0
    assert page.value("web_node_http_requests_total", member="testapi", endpoint="Quick", method="GET", code="204") == 1


async def test_an_app_that_raises_is_counted_as_500() -> None:
    metrics = ProcessMetrics(task_accounting=False)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    wrapped = metrics.wrap_app(app, MEMBER)

    async def noop(*_: Any) -> Any:
        return {"type": "http.disconnect"}

    with pytest.raises(RuntimeError):
        await wrapped({"type": "http", "method": "GET", "path": "/quick"}, noop, noop)
    page = page_of(metrics)
    assert page.value("web_node_http_requests_total", member="testapi", endpoint="Quick", method="GET", code="500") == 1
    assert page.value("web_node_http_requests_in_flight", member="testapi", endpoint="Quick") == 0


async def test_lifespan_and_websocket_scopes_pass_through_untouched() -> None:
    metrics = ProcessMetrics(task_accounting=False)
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    wrapped = metrics.wrap_app(app, MEMBER)

    async def noop(*_: Any) -> Any:
        return {}

    await wrapped({"type": "lifespan"}, noop, noop)
    assert seen == ["lifespan"]
    assert page_of(metrics).series("web_node_http_requests_total") == []
