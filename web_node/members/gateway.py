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

Two kinds of bearer token. The shared ``worker_token`` admits registration
only (when ``[members.gateway] worker_token`` is unset the gateway generates
one into ``data_dir/worker-token``, mode 0600, on first start). RegisterWorker
answers a new worker with its own ``credential``, a random secret handed out
once (the store keeps its SHA-256); every other call but GatewayInfo needs
``Authorization: Bearer <credential>``, and a worker may heartbeat, claim,
log to and finish only as itself and only the builds it claimed. A worker
keeps its credential in ``worker-credential`` (mode 0600) in its work dir and
presents it when it registers again after a restart; a name held by another
credential is refused (409) until gc prunes that worker.

Event batches carry a number (``seq``: 1, 2, 3 ... per build); the store
keeps the last one per build, so a batch the worker re-sends after a lost
answer or a gateway restart is stored once.

Heartbeats and event posts answer which of the worker's builds it must stop
(aborted through the API, or failed by the build-tracker), so a worker kills
an aborted build's processes within one heartbeat.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from quart import g, request
from quart_trio import QuartTrio

from web_node import strict_json
from web_node.errors import NotFound, StoreError
from web_node.http import (
    ApiError,
    check_before_body,
    endpoint,
    error_response,
    limit_body,
    log_disabled,
    new_app,
    parse_token,
    require_bearer,
    resolve_token,
)
from web_node.http import load_or_create_token as load_or_create_token  # re-exported: quickstart reads the token file
from web_node.members._build_output import DEFAULT_MAX_OUTPUT, TRUNCATED, OutputBudget
from web_node.members._context import MemberContext
from web_node.members._member import Endpoint, Member, Option
from web_node.members.build_tracker import end_build
from web_node.store import FINISHED_STATUSES, Build, BuildStatus
from web_node.units import parse_size

TOKEN_FILE = "worker-token"
WORKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
EVENT_TYPE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# Event types only the gateway (or build-tracker) writes: the end of a build is decided here.
RESERVED_EVENT_TYPES = frozenset({"finish", TRUNCATED})
#: A batch of events (SendBuildEvents): the worker sends output as it comes, in batches far below this.
EVENTS_BODY_LIMIT = 8 * 1024 * 1024
WORKER_STATUSES: tuple[BuildStatus, ...] = ("succeeded", "failed", "errored")
MAX_EVENTS_PER_POST = 1000
# Endpoints a worker calls as itself, with its own credential (not the shared worker token).
WORKER_ENDPOINTS = frozenset({"WorkerHeartbeat", "ClaimBuild", "SendBuildEvents", "FinishBuild"})
#: How the endpoints of WORKER_ENDPOINTS are declared (docs/http-api.md shows it).
WORKER_AUTH = "worker credential"

ENDPOINTS = (
    Endpoint("GatewayInfo", "GET", "/gateway/v1/info", "what this gateway is; no token needed", auth="none",
             responses=((200, "member, group, pid and the heartbeat interval"),)),
    Endpoint("RegisterWorker", "POST", "/gateway/v1/workers", "a worker announces itself",
             responses=((201, "registered: the worker's own credential and the heartbeat interval"),
                        (400, "bad name, tags or builds"), (409, "the name is held by another worker's credential"))),
    Endpoint("WorkerHeartbeat", "PUT", "/gateway/v1/workers/<worker>/heartbeat", "a worker is alive", auth=WORKER_AUTH,
             responses=((200, "the builds the worker must stop"), (400, "bad worker name or body"),
                        (403, "the credential is another worker's"),
                        (404, "the worker is not registered: register again"))),
    Endpoint("ClaimBuild", "POST", "/gateway/v1/workers/<worker>/claim", "hand the oldest pending build to a worker",
             auth=WORKER_AUTH,
             responses=((200, "{build: ...} or {build: null} when none is pending"), (400, "bad worker name or body"),
                        (403, "the credential is another worker's"), (404, "the worker is not registered"))),
    Endpoint("SendBuildEvents", "POST", "/gateway/v1/builds/<int:build_id>/events", "a build's output and status",
             auth=WORKER_AUTH,
             responses=((200, "how many events were kept (duplicate: true for a batch number stored before); "
                              "abort: true when the worker must stop"),
                        (400, "bad events or seq"), (403, "the credential is another worker's"), (404, "no such build"),
                        (409, "the build is run by another worker"))),
    Endpoint("FinishBuild", "PUT", "/gateway/v1/builds/<int:build_id>/finish", "a build's result", auth=WORKER_AUTH,
             responses=((200, "the build; accepted: false when it had already ended"), (400, "bad status or message"),
                        (403, "the credential is another worker's"), (404, "no such build"),
                        (409, "the build is run by another worker"))),
)


# ---------------------------------------------------------------- request helpers


async def _json_object() -> dict[str, Any]:
    """The body as a JSON object (``{}`` when empty); 400 when it is not strict JSON (see web_node.strict_json)."""
    data = await request.get_data(as_text=False)
    if not data.strip():
        return {}
    try:
        body = strict_json.loads(data)
    except strict_json.JsonBodyError as e:
        raise ApiError(400, str(e)) from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _label(value: Any, field: str, default: str) -> str:
    """A short printable string a worker describes itself with (platform, a tag); 400 naming the field otherwise."""
    if value is None or value == "":
        return default
    if not isinstance(value, str) or not value.isprintable() or len(value) > 100:
        raise ApiError(400, f"{field} must be printable text of at most 100 characters (no control characters), "
                            f"got {value!r:.60}")
    return value


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
    require_bearer(app, ctx, token, exempt=WORKER_ENDPOINTS,
                   hint=f"gateway's worker token ([members.gateway] worker_token, or data_dir/{TOKEN_FILE} when that is unset)")
    _require_worker_credential(app, ctx, token)
    limit_body(app, "SendBuildEvents", EVENTS_BODY_LIMIT)
    check_before_body(app, WORKER_ENDPOINTS, partial(_holds_a_credential, ctx), realm="web-node gateway worker")
    output = OutputBudget(ctx.option("max_build_output"))

    @endpoint(app, ctx, "GatewayInfo")
    async def info() -> Any:
        return {"member": ctx.member.name, "group": ctx.group, "pid": os.getpid(),
                "heartbeat_interval_s": heartbeat_interval_s(ctx)}

    @endpoint(app, ctx, "RegisterWorker")
    async def register_worker() -> Any:
        body = await _json_object()
        name = _worker_name(body.get("name"))
        platform = _label(body.get("platform"), "platform", "unknown")
        tags = body.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ApiError(400, "tags must be a list of strings")
        tags = [_label(t, f"tags[{i}]", "") for i, t in enumerate(tags)]
        still_running = set(_int_list(body, "builds"))
        presented = body.get("credential")
        if presented is not None and not isinstance(presented, str):
            raise ApiError(400, "credential must be the string RegisterWorker returned to this worker")
        now = time.time()
        credential = secrets.token_urlsafe(32)
        # Conflict (409, saying what to do) when the name is held by another credential.
        worker, issued = await ctx.store.register_worker_credential(
            name, platform, tags, now, new_hash=credential_hash(credential),
            presented_hash=credential_hash(presented) if presented else None)
        # A worker that registers again under the same name after a restart has lost whatever it ran before.
        for build in await ctx.store.list_running_builds():
            if build.worker == name and build.id not in still_running:
                message = (f"worker {name} registered again (it restarted) and no longer runs this build: build errored")
                if await end_build(ctx, build, "errored", message, now):
                    ctx.log.warning("build %d of %s/%s errored: %s", build.id, build.pipeline, build.job, message)
        ctx.log.info("worker %s registered (platform %s, tags: %s)%s", name, platform, ", ".join(tags) or "-",
                     " with a new credential" if issued else " again with its credential")
        answer: dict[str, Any] = {"worker": worker.to_json(), "heartbeat_interval_s": heartbeat_interval_s(ctx)}
        if issued:
            answer["credential"] = credential  # the only time it is ever shown
        return answer, 201

    @endpoint(app, ctx, "WorkerHeartbeat")
    async def worker_heartbeat(worker: str) -> Any:
        name = _as_itself(worker)
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
        name = _as_itself(worker)
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
        name = _as_itself(body.get("worker"))
        seq = body.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= 2**62:
            raise ApiError(400, f"seq {seq!r} must be the batch's number: 1 for the build's first batch, then one "
                                "more per batch; a re-sent batch keeps its number")
        events = body.get("events", [])
        if not isinstance(events, list) or len(events) > MAX_EVENTS_PER_POST:
            raise ApiError(400, f"events must be a list of at most {MAX_EVENTS_PER_POST} objects")
        checked = await output.admit(ctx.store, build_id, [_check_event(e) for e in events])
        # One transaction: stored once per seq, only while the build runs on this worker (409 otherwise).
        # Aborted or failed meanwhile: nothing kept, and the answer tells the worker to stop.
        stored = await ctx.store.append_worker_events(build_id, name, seq, checked, time.time())
        output.settle(build_id, stored.accepted > 0)
        return {"accepted": stored.accepted, "duplicate": stored.duplicate, "status": stored.status,
                "abort": stored.status in FINISHED_STATUSES}

    @endpoint(app, ctx, "FinishBuild")
    async def finish_build(build_id: int) -> Any:
        body = await _json_object()
        name = _as_itself(body.get("worker"))
        status = body.get("status")
        if status not in WORKER_STATUSES:
            raise ApiError(400, f"status {status!r} is not one a worker reports; valid: {', '.join(WORKER_STATUSES)}")
        message = body.get("message")
        if message is not None and not isinstance(message, str):
            raise ApiError(400, "message must be a string")
        build = await _own_build(ctx, build_id, name)
        accepted = await end_build(ctx, build, status, message, time.time(), worker=name)
        build = await ctx.store.get_build(build_id)
        if accepted:
            took = f" in {build.end_time - build.start_time:.1f} s" if build.end_time and build.start_time else ""
            ctx.log.info("build %d of %s/%s %s%s on worker %s", build.id, build.pipeline, build.job, status, took, name)
        return {"build": build.to_json(), "accepted": accepted}

    return app


def credential_hash(credential: str) -> str:
    """What the store keeps of a worker's credential. The credential is 256 random bits, so one
    SHA-256 is enough: there is nothing to guess that a slow hash would protect."""
    return hashlib.sha256(credential.encode("utf-8", "surrogatepass")).hexdigest()


def _require_worker_credential(app: QuartTrio, ctx: MemberContext, shared_token: str) -> None:
    """Answer 401, before the body is read, to a worker endpoint called without a worker's own credential.

    The authenticated worker's name is left in ``g.worker`` for :func:`_as_itself`.
    """

    def refuse(message: str) -> Any:
        response = error_response(401, message)
        response.headers["WWW-Authenticate"] = 'Bearer realm="web-node gateway worker"'
        return response

    @app.before_request
    async def authenticate_worker() -> Any:
        rule = request.url_rule
        if rule is None or rule.endpoint not in WORKER_ENDPOINTS:
            return None
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return refuse(f"{rule.endpoint} needs 'Authorization: Bearer <credential>' with this worker's own "
                          "credential, which RegisterWorker returned to it")
        if hmac.compare_digest(given.encode(), shared_token.encode()):
            return refuse(f"the shared worker token only admits registration; {rule.endpoint} needs this worker's "
                          "own credential, which RegisterWorker returned to it")
        try:
            worker = await ctx.store.worker_for_credential(credential_hash(given))
        except NotFound:
            return refuse("no registered worker holds this credential (removed after missing heartbeats, or "
                          "never issued here): register again with the shared worker token")
        g.worker = worker.name
        return None


async def _holds_a_credential(ctx: MemberContext, headers: Mapping[str, str]) -> str | None:
    """From the request head, before its body is read: a worker endpoint's caller must present a
    credential that a registered worker holds (which worker, and the rest, is judged afterwards)."""
    scheme, _, given = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return ("this call needs 'Authorization: Bearer <credential>' with this worker's own credential, which "
                "RegisterWorker returned to it")
    try:
        await ctx.store.worker_for_credential(credential_hash(given.strip()))
    except NotFound:
        return ("no registered worker holds this credential (removed after missing heartbeats, or never issued "
                "here; the shared worker token only admits registration): register again with the shared worker token")
    except StoreError:
        return None  # the app's own check answers 503 "store unavailable"
    return None


def _parse_output_cap(value: object) -> int:
    return parse_size(value)  # type: ignore[arg-type]  # parse_size refuses what is not a size


def _as_itself(claimed: Any) -> str:
    """The authenticated worker's name; a name in the path or body must be the same."""
    name: str = g.worker
    if claimed is not None and claimed != name:
        shown = _worker_name(claimed, "worker")
        raise ApiError(403, f"this credential belongs to worker {name}, not to {shown}; each worker calls as itself")
    return name


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
        raise ApiError(409, f"build {build_id} is run by worker {build.worker or '(none: still pending)'}, not by "
                            f"{worker}; a worker may only log to and finish the builds it claimed")
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
               "the shared token workers register with, at least 16 characters; unset: generated into "
               "data_dir/worker-token (mode 0600)", "string"),
        Option("max_build_output", _parse_output_cap, DEFAULT_MAX_OUTPUT,
               "the most output one build may store; then one truncated event, the rest is dropped", "size"),
    ),
    make_app=make_app,
)
