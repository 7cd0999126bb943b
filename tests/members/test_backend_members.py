"""The backend members' runs against a real SQLite store (and real UDP/TCP syslog listeners),
and the scheduler's pause switch through a real ``web-node scheduler --in-process`` process."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from web_node.config import parse_config
from web_node.errors import NotFound
from web_node.log import member_logger
from web_node.members import MemberContext, build_tracker, default_registry, gc, scheduler, syslog_drainer
from web_node.metrics import ProcessMetrics
from web_node.store import AsyncStore, Build, JobConfig, StepConfig, open_store

HOUR = 3600.0
DAY = 86400.0


def job(name: str, *, every: float | None = None, timeout: float = 600.0, run: str = "echo hi") -> JobConfig:
    return JobConfig(name=name, steps=(StepConfig(run),), trigger_every_s=every, timeout_s=timeout)


@pytest.fixture
async def store(data_dir: Path) -> AsyncIterator[AsyncStore]:
    s = AsyncStore(open_store(f"sqlite:///{data_dir}/node.db", str(data_dir)))
    try:
        yield s
    finally:
        await s.close()


MakeCtx = Callable[..., MemberContext]


@pytest.fixture
def make_ctx(store: AsyncStore, data_dir: Path) -> MakeCtx:
    def make(member_name: str, **options: Any) -> MemberContext:
        registry = default_registry()
        raw = {"node": {"data_dir": str(data_dir), "metrics_listen": ""}, "members": {member_name: options}}
        config = parse_config(raw, registry)
        return MemberContext(member=registry.get(member_name), config=config, group=member_name,
                             log=member_logger(member_name), store=store, metrics=ProcessMetrics())

    return make


async def started_build(store: AsyncStore, pipeline: str, job_name: str, worker: str, at: float) -> Build:
    await store.create_build(pipeline, job_name, "manual", at)
    build = await store.claim_pending_build(worker, at)
    assert build is not None and build.job == job_name
    return build


# ---------------------------------------------------------------- scheduler


async def test_scheduler_triggers_due_jobs_only(store: AsyncStore, make_ctx: MakeCtx) -> None:
    now = time.time()
    await store.set_pipeline("p", {}, [job("due", every=60), job("undue", every=HOUR), job("manual")])
    await store.mark_triggered("p", "undue", now - 60)
    ctx = make_ctx("scheduler")

    await scheduler.tick(ctx)

    builds = await store.list_builds()
    assert [(b.job, b.trigger, b.status) for b in builds] == [("due", "scheduler", "pending")]
    assert (await store.get_job("p", "due")).last_triggered_at == pytest.approx(time.time(), abs=5)
    assert (await store.get_job("p", "undue")).last_triggered_at == pytest.approx(now - 60)
    # Triggered just now: not due again on the next run.
    await scheduler.tick(ctx)
    assert len(await store.list_builds()) == 1


async def test_scheduler_does_not_queue_behind_a_pending_build(store: AsyncStore, make_ctx: MakeCtx) -> None:
    await store.set_pipeline("p", {}, [job("often", every=1)])
    ctx = make_ctx("scheduler")
    await scheduler.tick(ctx)
    due_since = time.time() - 10
    await store.mark_triggered("p", "often", due_since)  # due again, but its build still waits
    await scheduler.tick(ctx)
    assert len(await store.list_builds()) == 1
    assert (await store.get_job("p", "often")).last_triggered_at == due_since  # not marked: still due
    await store.claim_pending_build("w1", time.time())  # a worker took it: the next trigger queues a new one
    await scheduler.tick(ctx)
    assert [b.status for b in await store.list_builds()] == ["pending", "started"]


def test_paused_scheduler_triggers_nothing_until_unpaused(start_node: Any, data_dir: Path) -> None:
    config = (f'[node]\ndata_dir = "{data_dir}"\nmetrics_listen = ""\nshutdown_grace = "2s"\n'
              '[members.scheduler]\ninterval = "1s"\n')
    node = start_node(["scheduler", "--in-process"], config_text=config)
    sync = open_store(f"sqlite:///{data_dir}/node.db", str(data_dir))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sync.set_component_paused("scheduler", True)
                break
            except NotFound:
                assert node.proc.poll() is None, node.log()
                assert time.monotonic() < deadline, "scheduler never registered as a component:\n" + node.log()
                time.sleep(0.1)
        sync.set_pipeline("p", {}, [job("tick", every=1)])
        time.sleep(3.5)  # three runs of a 1s scheduler, all skipped
        assert sync.list_builds() == [], node.log()
        sync.set_component_paused("scheduler", False)
        deadline = time.monotonic() + 10
        while not sync.list_builds():
            assert time.monotonic() < deadline, "no build after unpausing:\n" + node.log()
            time.sleep(0.1)
        [build] = sync.list_builds()
        assert (build.job, build.trigger) == ("tick", "scheduler")
        assert "triggered build" in node.wait_log("triggered build", timeout=5)
    finally:
        sync.close()
    assert node.terminate() == 0


# ---------------------------------------------------------------- build-tracker


async def test_build_tracker_errors_builds_of_vanished_workers(store: AsyncStore, make_ctx: MakeCtx) -> None:
    now = time.time()
    await store.set_pipeline("p", {}, [job("a"), job("b"), job("c")])
    await store.register_worker("gone", "linux", [], now - 120)
    await store.register_worker("alive", "linux", [], now)
    lost = await started_build(store, "p", "a", "gone", now - 100)
    unknown = await started_build(store, "p", "b", "never-registered", now - 100)
    healthy = await started_build(store, "p", "c", "alive", now - 100)

    await build_tracker.tick(make_ctx("build-tracker", worker_timeout="30s"))

    assert (await store.get_build(lost.id)).status == "errored"
    assert (await store.get_build(unknown.id)).status == "errored"
    assert (await store.get_build(healthy.id)).status == "started"
    events = await store.list_events(lost.id)
    assert [e.type for e in events] == ["error", "finish"]
    assert "worker gone sent no heartbeat for 2m" in events[0].payload["message"]
    assert events[1].payload == {"status": "errored"}
    assert "no longer registered" in (await store.list_events(unknown.id))[0].payload["message"]


async def test_build_tracker_fails_timed_out_builds(store: AsyncStore, make_ctx: MakeCtx) -> None:
    now = time.time()
    await store.set_pipeline("p", {}, [job("slow", timeout=600), job("quick", timeout=600)])
    await store.register_worker("w", "linux", [], now)
    slow = await started_build(store, "p", "slow", "w", now - 601)
    quick = await started_build(store, "p", "quick", "w", now - 10)

    ctx = make_ctx("build-tracker")
    await build_tracker.tick(ctx)

    assert (await store.get_build(slow.id)).status == "failed"
    assert (await store.get_build(quick.id)).status == "started"
    events = await store.list_events(slow.id)
    assert [(e.type, e.payload) for e in events] == [
        ("error", {"message": "timed out after 10m"}), ("finish", {"status": "failed"})]
    # A finished build is left alone on later runs: no second set of events.
    await build_tracker.tick(ctx)
    assert len(await store.list_events(slow.id)) == 2


def test_short_durations_read_like_pipeline_configs() -> None:
    assert [build_tracker.short_duration(s) for s in (600, 90, 45, 3900, 0.5, 86400)] == [
        "10m", "1m30s", "45s", "1h5m", "500ms", "1d"]


# ---------------------------------------------------------------- gc


async def test_gc_deletes_builds_past_retention_and_prunes_stalled_workers(store: AsyncStore, make_ctx: MakeCtx) -> None:
    now = time.time()
    await store.set_pipeline("p", {}, [job("j")])
    old = await started_build(store, "p", "j", "w", now - 9 * DAY)
    await store.append_event(old.id, "log", {"output": "old\n", "step": 0}, now - 9 * DAY)
    await store.finish_build(old.id, "succeeded", now - 8 * DAY)
    recent = await started_build(store, "p", "j", "w", now - 2 * DAY)
    await store.finish_build(recent.id, "failed", now - 2 * DAY)
    running = await started_build(store, "p", "j", "w", now - 30 * DAY)
    await store.register_worker("stalled", "linux", [], now - HOUR)
    await store.register_worker("fresh", "linux", [], now)

    await gc.tick(make_ctx("gc", build_retention="7d", worker_retention="5m"))

    with pytest.raises(NotFound):
        await store.get_build(old.id)
    with pytest.raises(NotFound):
        await store.list_events(old.id)
    assert (await store.get_build(recent.id)).status == "failed"
    assert (await store.get_build(running.id)).status == "started"
    assert [w.name for w in await store.list_workers()] == ["fresh"]


async def test_gc_retention_comes_from_its_options(store: AsyncStore, make_ctx: MakeCtx) -> None:
    now = time.time()
    await store.set_pipeline("p", {}, [job("j")])
    build = await started_build(store, "p", "j", "w", now - 7200)
    await store.finish_build(build.id, "succeeded", now - 3600)
    await gc.tick(make_ctx("gc"))  # default 7d: kept
    assert (await store.get_build(build.id)).status == "succeeded"
    await gc.tick(make_ctx("gc", build_retention="30m"))
    with pytest.raises(NotFound):
        await store.get_build(build.id)


# ---------------------------------------------------------------- syslog-drainer


async def finished_build_with_log(store: AsyncStore) -> Build:
    now = time.time()
    await store.set_pipeline("p", {}, [job("unit")])
    build = await started_build(store, "p", "unit", "w1", now - 3)
    await store.append_event(build.id, "status", {"status": "started"}, now - 3)
    # Output arrives in chunks that cut lines anywhere.
    await store.append_event(build.id, "log", {"output": "hello\nwor", "step": 0}, now - 2)
    await store.append_event(build.id, "log", {"output": "ld\n", "step": 0}, now - 1)
    return await store.finish_build(build.id, "succeeded", now)  # with its finish event


def message_texts(messages: list[bytes]) -> list[str]:
    # The MSG part: after the structured data's closing bracket.
    return [m.split(b"] ", 1)[1].decode() for m in messages]


async def receive_datagrams(sock: trio.socket.SocketType, quiet_s: float = 0.5) -> list[bytes]:
    """Everything that arrives until nothing came for ``quiet_s``."""
    received = []
    while True:
        with trio.move_on_after(quiet_s):
            received.append(await sock.recv(65535))
            continue
        return received


async def test_syslog_drainer_ships_finished_build_logs_over_udp_once(store: AsyncStore, make_ctx: MakeCtx,
                                                                      data_dir: Path) -> None:
    build = await finished_build_with_log(store)
    await store.set_pipeline("q", {}, [job("busy")])
    running = await started_build(store, "q", "busy", "w1", time.time())  # not finished: not shipped
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        await listener.bind(("127.0.0.1", 0))
        address = f"udp://127.0.0.1:{listener.getsockname()[1]}"
        ctx = make_ctx("syslog-drainer", address=address, facility="local3")

        await syslog_drainer.tick(ctx)
        messages = await receive_datagrams(listener)

        assert message_texts(messages)[:2] == ["hello", "world"]
        assert message_texts(messages)[2].startswith(f"build {build.id} of p/unit succeeded in ")
        assert len(messages) == 3
        assert messages[0].startswith(b"<158>1 ")  # local3 (19) * 8 + info (6)
        assert f'[build@32473 id="{build.id}" pipeline="p" job="unit" step="0"]'.encode() in messages[0]
        assert b' finish [build@32473 ' in messages[2] and b'status="succeeded"' in messages[2]

        # Not twice: neither on the next run nor after a restart (a fresh context: the mark is in the store).
        await syslog_drainer.tick(ctx)
        await syslog_drainer.tick(make_ctx("syslog-drainer", address=address))
        assert await receive_datagrams(listener) == []
        assert await store.list_unshipped_builds(10) == []

        # The running build is shipped once it has finished.
        await store.append_event(running.id, "log", {"output": "done", "step": 0}, time.time())
        await store.finish_build(running.id, "failed", time.time())
        await syslog_drainer.tick(ctx)
        later = await receive_datagrams(listener)
        assert message_texts(later)[0] == "done"  # an unterminated last line is shipped too
        assert f'id="{running.id}"'.encode() in later[0]


async def test_syslog_drainer_ships_over_tcp_with_octet_counting(store: AsyncStore, make_ctx: MakeCtx) -> None:
    await finished_build_with_log(store)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    connections: list[bytes] = []

    async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            stream = await listeners[0].accept()
            data = bytearray()
            async with stream:
                while chunk := await stream.receive_some(65536):
                    data.extend(chunk)
            connections.append(bytes(data))

    ctx = make_ctx("syslog-drainer", address=f"tcp://127.0.0.1:{port}")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve)
            await syslog_drainer.tick(ctx)
            await syslog_drainer.tick(ctx)  # nothing new: does not even connect
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    await listeners[0].aclose()
    assert len(connections) == 1
    frames, rest = [], connections[0]
    while rest:
        length, _, rest = rest.partition(b" ")
        frames.append(rest[: int(length)])
        rest = rest[int(length):]
    assert message_texts(frames)[:2] == ["hello", "world"]
    assert len(frames) == 3


async def test_syslog_drainer_without_address_says_it_has_nothing_to_do(
        store: AsyncStore, make_ctx: MakeCtx, caplog: pytest.LogCaptureFixture) -> None:
    await finished_build_with_log(store)
    ctx = make_ctx("syslog-drainer")
    with caplog.at_level(logging.INFO, logger="web_node.syslog-drainer"):
        await syslog_drainer.tick(ctx)
        await syslog_drainer.tick(ctx)
    said = [r.getMessage() for r in caplog.records if "nothing to do" in r.getMessage()]
    assert len(said) == 1 and "[members.syslog-drainer] address" in said[0]


async def test_syslog_drainer_unreachable_receiver_fails_the_run_and_retries(store: AsyncStore, make_ctx: MakeCtx,
                                                                          data_dir: Path) -> None:
    build = await finished_build_with_log(store)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        ctx = make_ctx("syslog-drainer", address=f"tcp://127.0.0.1:{port}")
        with pytest.raises(Exception, match=f"tcp://127.0.0.1:{port}.*retried next run"):
            await syslog_drainer.tick(ctx)
    assert [b.id for b in await store.list_unshipped_builds(10)] == [build.id]  # nothing recorded as shipped


def test_bad_syslog_options_are_config_errors(data_dir: Path) -> None:
    from web_node.errors import ConfigError

    for options, key in (({"address": "syslog.example:514"}, "address"), ({"facility": "locl0"}, "facility")):
        with pytest.raises(ConfigError, match=f"members.syslog-drainer.{key}"):
            parse_config({"members": {"syslog-drainer": options}}, default_registry())
