"""gateway: worker registration, heartbeats, work hand-out.

The HTTP side of ``web-node worker``. A worker registers, then heartbeats
every ``heartbeat_interval_s`` (the gateway tells it how often, from the
build-tracker's ``worker_timeout``), claims pending builds, streams each
build's output as events and finally reports the result:

=================  ======  ==========================================
RegisterWorker     POST    /gateway/v1/workers
WorkerHeartbeat    PUT     /gateway/v1/workers/<worker>/heartbeat
ClaimBuild         POST    /gateway/v1/workers/<worker>/claim
SendBuildEvents    POST    /gateway/v1/builds/<build_id>/events
FinishBuild        PUT     /gateway/v1/builds/<build_id>/finish
GatewayInfo        GET     /gateway/v1/info (no token needed)
=================  ======  ==========================================

Every call but GatewayInfo needs ``Authorization: Bearer <worker_token>``.
When ``[members.gateway] worker_token`` is unset the gateway generates one
into ``data_dir/worker-token`` (mode 0600) on first start.

Heartbeats and event posts answer which of the worker's builds it must stop
(aborted through the API, or failed by the build-tracker), so a worker kills
an aborted build's processes within one heartbeat.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from quart import request

from web_node.errors import NotFound
from web_node.http import ApiError, endpoint, log_disabled, new_app, parse_token, require_bearer, resolve_token
from web_node.http import load_or_create_token as load_or_create_token  # re-exported: quickstart reads the token file
from web_node.members._context import MemberContext
from web_node.members._member import Endpoint, Member, Option
from web_node.members.build_tracker import end_build
from web_node.store import FINISHED_STATUSES, Build, BuildStatus

TOKEN_FILE = "worker-token"
WORKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
EVENT_TYPE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# Event types only the gateway (or build-tracker) writes: the end of a build is decided here.
RESERVED_EVENT_TYPES = frozenset({"finish"})
WORKER_STATUSES: tuple[BuildStatus, ...] = ("succeeded", "failed", "errored")
MAX_EVENTS_PER_POST = 1000

ENDPOINTS = (
    Endpoint("GatewayInfo", "GET", "/gateway/v1/info", "what this gateway is; no token needed"),
    Endpoint("RegisterWorker", "POST", "/gateway/v1/workers", "a worker announces itself"),
    Endpoint("WorkerHeartbeat", "PUT", "/gateway/v1/workers/<worker>/heartbeat", "a worker is alive"),
    Endpoint("ClaimBuild", "POST", "/gateway/v1/workers/<worker>/claim", "hand the oldest pending build to a worker"),
    Endpoint("SendBuildEvents", "POST", "/gateway/v1/builds/<int:build_id>/events", "a build's output and status"),
    Endpoint("FinishBuild", "PUT", "/gateway/v1/builds/<int:build_id>/finish", "a build's result"),
)


# ---------------------------------------------------------------- request helpers


async def _json_object() -> dict[str, Any]:
    body = await request.get_json(force=True, silent=True)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _worker_name(value: Any, where: str = "name") -> str:
    if not isinstance(value, str) or not WORKER_NAME.fullmatch(value):
        raise ApiError(400, f"{where} {value!r} is not a worker name: 1 to 63 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit")
    return value


def _int_list(body: dict[str, Any], key: str) -> list[int]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise ApiError(400, f"{key} must be a list of build ids")
    return value


def _count(body: dict[str, Any], key: str) -> int:
    value = body.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ApiError(400, f"{key} must be a whole number of at least 0")
    return value


def claimed_build_json(build: Build) -> dict[str, Any]:
    """A build as a worker needs it: the public fields plus what to run and for how long."""
    return {**build.to_json(), "timeout_s": build.timeout_s, "steps": [{"run": s.run} for s in build.steps]}


def heartbeat_interval_s(ctx: MemberContext) -> float:
    """A quarter of the build-tracker's worker_timeout (within 0.5..10 s): three lost heartbeats are survivable."""
    tracker = ctx.config.members.get("build-tracker")
    timeout_s = float(tracker.options.get("worker_timeout", 30.0)) if tracker else 30.0
    return max(0.5, min(10.0, timeout_s / 4))


# ---------------------------------------------------------------- the app


async def make_app(ctx: MemberContext) -> Any:
    app = new_app(ctx)
    log_disabled(ctx)
    token = resolve_token(ctx, option="worker_token", filename=TOKEN_FILE)
    require_bearer(app, ctx, token, exempt={"GatewayInfo"},
                   hint=f"gateway's worker token ([members.gateway] worker_token, or data_dir/{TOKEN_FILE} when that is unset)")

    @endpoint(app, ctx, "GatewayInfo")
    async def info() -> Any:
        return {"member": ctx.member.name, "group": ctx.group, "pid": os.getpid(),
                "heartbeat_interval_s": heartbeat_interval_s(ctx)}

    @endpoint(app, ctx, "RegisterWorker")
    async def register_worker() -> Any:
        body = await _json_object()
        name = _worker_name(body.get("name"))
        platform = str(body.get("platform") or "unknown")[:100]
        tags = body.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ApiError(400, "tags must be a list of strings")
        still_running = set(_int_list(body, "builds"))
        now = time.time()
        worker = await ctx.store.register_worker(name, platform, tags, now)
        # A worker that registers again under the same name after a restart has lost whatever it ran before.
        for build in await ctx.store.list_running_builds():
            if build.worker == name and build.id not in still_running:
                message = (f"worker {name} registered again (it restarted) and no longer runs this build: build errored")
                if await end_build(ctx, build, "errored", message, now):
                    ctx.log.warning("build %d of %s/%s errored: %s", build.id, build.pipeline, build.job, message)
        ctx.log.info("worker %s registered (platform %s, tags: %s)", name, platform, ", ".join(tags) or "-")
        return {"worker": worker.to_json(), "heartbeat_interval_s": heartbeat_interval_s(ctx)}, 201

    @endpoint(app, ctx, "WorkerHeartbeat")
    async def worker_heartbeat(worker: str) -> Any:
        name = _worker_name(worker, "worker")
        body = await _json_object()
        builds = _int_list(body, "builds")
        try:
            record = await ctx.store.heartbeat_worker(name, time.time(), _count(body, "active_builds"))
        except NotFound:
            raise ApiError(404, f"worker {name} is not registered (removed after missing heartbeats?): register again") from None
        return {"worker": record.to_json(), "abort": await _builds_to_stop(ctx, name, builds),
                "heartbeat_interval_s": heartbeat_interval_s(ctx)}

    @endpoint(app, ctx, "ClaimBuild")
    async def claim_build(worker: str) -> Any:
        name = _worker_name(worker, "worker")
        body = await _json_object()
        now = time.time()
        try:
            await ctx.store.heartbeat_worker(name, now, _count(body, "active_builds"))
        except NotFound:
            raise ApiError(404, f"worker {name} is not registered: register before claiming builds") from None
        build = await ctx.store.claim_pending_build(name, now)
        if build is None:
            return {"build": None}
        ctx.log.info("build %d of %s/%s handed to worker %s", build.id, build.pipeline, build.job, name)
        return {"build": claimed_build_json(build)}

    @endpoint(app, ctx, "SendBuildEvents")
    async def send_build_events(build_id: int) -> Any:
        body = await _json_object()
        name = _worker_name(body.get("worker"), "worker")
        events = body.get("events", [])
        if not isinstance(events, list) or len(events) > MAX_EVENTS_PER_POST:
            raise ApiError(400, f"events must be a list of at most {MAX_EVENTS_PER_POST} objects")
        checked = [_check_event(e) for e in events]
        build = await _own_build(ctx, build_id, name)
        if build.status in FINISHED_STATUSES:
            # Aborted or failed meanwhile: the worker must stop; output after the end is not kept.
            return {"accepted": 0, "status": build.status, "abort": True}
        now = time.time()
        for type_, payload in checked:
            await ctx.store.append_event(build_id, type_, payload, now)
        build = await ctx.store.get_build(build_id)
        return {"accepted": len(checked), "status": build.status, "abort": build.status in FINISHED_STATUSES}

    @endpoint(app, ctx, "FinishBuild")
    async def finish_build(build_id: int) -> Any:
        body = await _json_object()
        name = _worker_name(body.get("worker"), "worker")
        status = body.get("status")
        if status not in WORKER_STATUSES:
            raise ApiError(400, f"status {status!r} is not one a worker reports; valid: {', '.join(WORKER_STATUSES)}")
        message = body.get("message")
        if message is not None and not isinstance(message, str):
            raise ApiError(400, "message must be a string")
        build = await _own_build(ctx, build_id, name)
        accepted = await end_build(ctx, build, status, message, time.time())
        build = await ctx.store.get_build(build_id)
        if accepted:
            took = f" in {build.end_time - build.start_time:.1f} s" if build.end_time and build.start_time else ""
            ctx.log.info("build %d of %s/%s %s%s on worker %s", build.id, build.pipeline, build.job, status, took, name)
        return {"build": build.to_json(), "accepted": accepted}

    return app


def _check_event(event: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(event, dict):
        raise ApiError(400, "each event must be an object with type and payload")
    type_, payload = event.get("type"), event.get("payload", {})
    if not isinstance(type_, str) or not EVENT_TYPE.fullmatch(type_) or type_ in RESERVED_EVENT_TYPES:
        raise ApiError(400, f"event type {type_!r} is not one a worker may send (lower-case word; not "
                            f"{', '.join(sorted(RESERVED_EVENT_TYPES))}: use FinishBuild)")
    if not isinstance(payload, dict):
        raise ApiError(400, f"the payload of a {type_} event must be an object")
    return type_, payload


async def _own_build(ctx: MemberContext, build_id: int, worker: str) -> Build:
    build = await ctx.store.get_build(build_id)  # NotFound answers 404
    if build.worker != worker:
        raise ApiError(409, f"build {build_id} is run by worker {build.worker or '(none: still pending)'}, not {worker}")
    return build


async def _builds_to_stop(ctx: MemberContext, worker: str, build_ids: list[int]) -> list[dict[str, Any]]:
    """Which of the builds a worker says it runs it must stop, each with the status it has here."""
    stop: list[dict[str, Any]] = []
    for build_id in build_ids:
        try:
            build = await ctx.store.get_build(build_id)
        except NotFound:
            stop.append({"id": build_id, "status": "deleted"})
            continue
        if build.status in FINISHED_STATUSES or build.worker != worker:
            stop.append({"id": build_id, "status": build.status if build.worker == worker else "claimed by another worker"})
    return stop


MEMBER = Member(
    name="gateway",
    role="gateway",
    kind="http",
    description="worker registration, heartbeats, work hand-out",
    listen="127.0.0.1:2222",
    endpoints=ENDPOINTS,
    options=(
        Option("worker_token", parse_token, None,
               "the bearer token workers present; unset: generated into data_dir/worker-token (mode 0600)"),
    ),
    make_app=make_app,
)
