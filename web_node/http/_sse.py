"""Server-sent events: the wire format, the response, and a build's live event stream.

:func:`follow_build_events` is how a client watches a build: replay what the
store holds, then poll it for newer events (they may be written by another
process: the gateway), and end after the ``finish`` event. Polling the store
rather than waiting on an in-process signal is what lets the api and the
gateway live in different processes, or on different hosts with PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import trio
from quart import Response, request

from web_node.errors import NotFound, StoreError
from web_node.store import FINISHED_STATUSES, AsyncStore

MEDIA_TYPE = "text/event-stream"


@dataclass(frozen=True)
class FollowTiming:
    """How a stream follows a build.

    ``poll_s``: how often the store is asked for new events.
    ``keepalive_s``: an SSE comment after this much silence, so that proxies keep the stream open.
    ``finish_grace_s``: a build found finished without its ``finish`` event is given this long for
    the event to arrive (whoever finished it writes the event right after) before one is made up.
    ``retry_ms``: what a browser waits before reconnecting a dropped stream.
    ``page``: events read per store query. A stream holds at most one page while its client reads
    slowly (or not at all), so this bounds what each open stream can pin in memory.
    """

    poll_s: float = 0.2
    keepalive_s: float = 15.0
    finish_grace_s: float = 1.0
    retry_ms: int = 2000
    page: int = 2


def sse_event(data: dict[str, Any], *, event_id: int | None = None) -> bytes:
    """One event: ``id:`` (when given) and a single ``data:`` line holding ``data`` as JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    # json.dumps escapes newlines, so the JSON is always one data: line.
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def sse_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def sse_response(body: AsyncIterator[bytes]) -> Response:
    """A streaming ``text/event-stream`` response, never cut short by quart's response timeout."""
    response = Response(body, mimetype=MEDIA_TYPE)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    # quart ends a response after RESPONSE_TIMEOUT (60 s); a build may run for hours.
    response.timeout = None
    return response


def resume_after() -> int:
    """Where a stream starts: after ``Last-Event-ID`` (a client reconnecting) or ``?after=SEQ``; else 0."""
    raw = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
    try:
        return min(max(0, int(raw)), 2**63 - 1)  # sequence numbers are 64-bit in the store
    except ValueError:
        return 0


def made_event(type_: str, payload: dict[str, Any]) -> dict[str, Any]:
    """An event made by the stream rather than read from the store (it has no ``seq``)."""
    return {"seq": None, "type": type_, "payload": payload, "time": time.time()}


async def follow_build_events(
    store: AsyncStore,
    build_id: int,
    after_seq: int = 0,
    *,
    timing: FollowTiming = FollowTiming(),
    stop: trio.Event | None = None,
    log: logging.LoggerAdapter[logging.Logger] | None = None,
) -> AsyncIterator[bytes]:
    """The build's events after ``after_seq`` as SSE, live, until the build has finished.

    Each event is ``id: SEQ`` and ``data: {"seq", "type", "payload", "time", "build_id"}``.
    Ends after the ``finish`` event. Two events are made here rather than read:
    ``finish`` (with the build's status) for a build that finished without
    writing one, and ``deleted`` when the build disappears while watched.
    ``stop`` ends the stream early (the server is shutting down: the client
    reconnects elsewhere with ``Last-Event-ID``). A store failure ends the
    stream without a finish event, so the client knows to reconnect.
    """
    yield f"retry: {timing.retry_ms}\n\n".encode()
    seq = after_seq
    quiet_since = trio.current_time()
    finished_seen_at: float | None = None
    try:
        while stop is None or not stop.is_set():
            events = await store.list_events(build_id, seq, timing.page)
            for event in events:
                yield sse_event({**event.to_json(), "build_id": build_id}, event_id=event.seq)
                seq = event.seq
                if event.type == "finish":
                    return
            if len(events) == timing.page:
                continue  # a full page: more are waiting (replay), read on without the poll's pause
            now = trio.current_time()
            if events:
                quiet_since = now
            elif finished_seen_at is not None or (await store.get_build(build_id)).status in FINISHED_STATUSES:
                # Finished, but its finish event is not (yet) there: whoever finished it writes
                # the event just after; wait a little for it before making one up.
                finished_seen_at = now if finished_seen_at is None else finished_seen_at
                if now - finished_seen_at >= timing.finish_grace_s:
                    build = await store.get_build(build_id)
                    yield sse_event({**made_event("finish", {"status": build.status}), "build_id": build_id})
                    return
            elif now - quiet_since >= timing.keepalive_s:
                yield sse_comment("keep-alive")
                quiet_since = now
            if stop is None:
                await trio.sleep(timing.poll_s)
            else:
                with trio.move_on_after(timing.poll_s):
                    await stop.wait()
    except NotFound:
        yield sse_event({**made_event("deleted", {"message": f"build {build_id} was deleted while it was watched "
                                                             "(its pipeline was removed, or the gc member expired it)"}),
                         "build_id": build_id})
    except StoreError as e:
        # No finish event: the client reconnects with Last-Event-ID and continues after `seq`.
        if log is not None:
            log.warning("event stream of build %d stopped after event %d: the store failed: %s; "
                        "the client may reconnect with Last-Event-ID", build_id, seq, e)
