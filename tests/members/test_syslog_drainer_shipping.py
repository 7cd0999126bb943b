"""syslog-drainer against real UDP and TCP receivers on 127.0.0.1, and gc beside it, on a real SQLite store:
UTF-8 structured data, one bad build skipped without stopping the others, a receiver that stops
reading timed out, and no build deleted before the drainer has shipped it."""

from __future__ import annotations

import logging
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from web_node.config import parse_config
from web_node.errors import MemberError, NotFound
from web_node.log import member_logger
from web_node.members import MemberContext, default_registry, gc, syslog_drainer
from web_node.metrics import ProcessMetrics
from web_node.store import AsyncStore, Build, JobConfig, StepConfig, open_store
from web_node.syslog import BOM

DAY = 86400.0

MakeCtx = Callable[..., MemberContext]


@pytest.fixture
async def store(data_dir: Path) -> AsyncIterator[AsyncStore]:
    s = AsyncStore(open_store(f"sqlite:///{data_dir}/node.db", str(data_dir)))
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def make_ctx(store: AsyncStore, data_dir: Path) -> MakeCtx:
    """``make_ctx(member, members={name: options})``: a context with the whole [members] table given."""

    def make(member_name: str, members: dict[str, dict[str, Any]]) -> MemberContext:
        registry = default_registry()
        raw = {"node": {"data_dir": str(data_dir), "metrics_listen": ""}, "members": members}
        config = parse_config(raw, registry)
        return MemberContext(member=registry.get(member_name), config=config, group=member_name,
                             log=member_logger(member_name), store=store, metrics=ProcessMetrics())

    return make


async def finished(store: AsyncStore, pipeline: str, job: str, outputs: list[str], *, ended: float | None = None) -> Build:
    await store.set_pipeline(pipeline, {}, [JobConfig(name=job, steps=(StepConfig("true"),))])
    now = time.time() if ended is None else ended
    await store.create_build(pipeline, job, "manual", now - 2)
    build = await store.claim_pending_build("w1", now - 2)
    assert build is not None
    for output in outputs:
        await store.append_event(build.id, "log", {"output": output, "step": 0}, now - 1)
    return await store.finish_build(build.id, "succeeded", now)


async def datagrams(sock: trio.socket.SocketType, quiet_s: float = 0.5) -> list[bytes]:
    received = []
    while True:
        with trio.move_on_after(quiet_s):
            received.append(await sock.recv(65535))
            continue
        return received


async def udp_receiver() -> tuple[trio.socket.SocketType, str]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock, f"udp://127.0.0.1:{sock.getsockname()[1]}"


async def test_structured_data_is_utf8(store: AsyncStore, make_ctx: MakeCtx) -> None:
    build = await finished(store, "café-ünïcode", 'job "quoted" \\ ]x', ["grüße ✓\n", "lone \ud800 surrogate\n"])
    sock, address = await udp_receiver()
    with sock:
        await syslog_drainer.tick(make_ctx("syslog-drainer", {"syslog-drainer": {"address": address}}))
        messages = await datagrams(sock)
    assert len(messages) == 3, messages
    first = messages[0]
    # PARAM-VALUEs are UTF-8 with '"', '\' and ']' escaped (RFC 5424 section 6.3.3); no BOM in SD.
    sd = f'[build@32473 id="{build.id}" pipeline="café-ünïcode" job="job \\"quoted\\" \\\\ \\]x" step="0"]'
    assert sd.encode("utf-8") in first
    assert first.endswith(b" " + BOM + "grüße ✓".encode())
    assert messages[1].endswith(BOM + "lone \ufffd\ufffd\ufffd surrogate".encode())  # replaced, not a failed run
    assert b"finish" in messages[2]
    assert await store.list_unshipped_builds(10) == []


async def test_one_bad_build_is_logged_and_skipped(store: AsyncStore, make_ctx: MakeCtx, data_dir: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    before = await finished(store, "p", "a", ["before\n"])
    bad = await finished(store, "p", "b", ["fine\n", "damaged\n"])
    after = await finished(store, "p", "c", ["after\n"])
    # A damaged record: the second event's payload is no longer JSON.
    with sqlite3.connect(data_dir / "node.db") as db:
        db.execute("UPDATE build_events SET payload = '{not json' WHERE build_id = ? AND seq = 2", (bad.id,))
    sock, address = await udp_receiver()
    with sock, caplog.at_level(logging.ERROR, logger="web_node.syslog-drainer"):
        ctx = make_ctx("syslog-drainer", {"syslog-drainer": {"address": address}})
        await syslog_drainer.tick(ctx)
        messages = await datagrams(sock)
        await syslog_drainer.tick(ctx)  # skipped for good: not retried, nothing shipped twice
        assert await datagrams(sock) == []
    texts = [m.decode("utf-8", "replace") for m in messages]
    assert any(t.endswith("] before") for t in texts) and any(t.endswith("] after") for t in texts)
    [notice] = [t for t in texts if " unshippable " in t]
    assert f"the log of build {bad.id} of p/b (succeeded) could not be shipped" in notice
    assert f'id="{after.id}"' in texts[-1] and " finish " in texts[-1]  # the builds after it shipped whole
    [logged] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"build {bad.id} of p/b cannot be shipped" in logged and f"/api/v1/builds/{bad.id}/events" in logged
    assert await store.list_unshipped_builds(10) == []
    assert before.id < bad.id < after.id


async def test_a_receiver_that_stops_reading_times_out(store: AsyncStore, make_ctx: MakeCtx) -> None:
    first = await finished(store, "p", "small", ["one line\n"])
    # More than the kernel buffers on both ends hold (sender up to 4 MiB, receiver pinned at a few KiB).
    big = await finished(store, "p", "big", [("x" * 3999 + "\n") * 25 for _ in range(80)])
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by the accepted connection
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    accepted: list[Any] = []

    async def accept_and_never_read() -> None:
        conn, _ = await listener.accept()
        accepted.append(conn)
        await trio.sleep_forever()

    ctx = make_ctx("syslog-drainer", {"syslog-drainer": {"address": address, "send_timeout": "1s"}})
    try:
        with trio.fail_after(30):  # a guard: without a send deadline the run would hang here for good
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept_and_never_read)
                with pytest.raises(MemberError) as failed:
                    await syslog_drainer.tick(ctx)
                nursery.cancel_scope.cancel()
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    message = str(failed.value)
    assert "did not take a message within 1 s" in message and "after 1 of 2 builds" in message
    assert "retried next run" in message
    assert [b.id for b in await store.list_unshipped_builds(10)] == [big.id]  # the first is marked, the big one not
    assert first.id < big.id


async def test_gc_keeps_builds_the_drainer_has_not_shipped(store: AsyncStore, make_ctx: MakeCtx,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    old = time.time() - 30 * DAY
    shipped = await finished(store, "p", "shipped", ["a\n"], ended=old)
    unshipped = await finished(store, "p", "unshipped", ["b\n"], ended=old)
    await store.mark_build_shipped(shipped.id, time.time())
    drainer = {"address": "udp://127.0.0.1:9"}

    with caplog.at_level(logging.WARNING, logger="web_node.gc"):
        await gc.tick(make_ctx("gc", {"gc": {"build_retention": "7d"}, "syslog-drainer": drainer}))
    with pytest.raises(NotFound):
        await store.get_build(shipped.id)
    assert (await store.get_build(unshipped.id)).status == "succeeded"
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"until syslog-drainer ships them, the oldest build {unshipped.id}" in warning

    # A drainer switched off, or without a receiver, ships nothing: retention applies to every build.
    await gc.tick(make_ctx("gc", {"syslog-drainer": {**drainer, "enabled": False}}))
    with pytest.raises(NotFound):
        await store.get_build(unshipped.id)
    another = await finished(store, "p", "another", ["c\n"], ended=old)
    await gc.tick(make_ctx("gc", {"syslog-drainer": {}}))
    with pytest.raises(NotFound):
        await store.get_build(another.id)
