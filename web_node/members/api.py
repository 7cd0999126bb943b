"""api: the JSON API (docs/http-api.md; its OpenAPI document at GET /api/v1/openapi.json).

Every call but GetInfo needs ``Authorization: Bearer <token>``: the token is
``[members.api] token``, or, when that is unset, the one generated on first
start into ``data_dir/api-token`` (mode 0600; the start logs its path).
Answers are JSON; errors are ``{"error": "..."}`` with a 4xx code (503 when
the database is down), never a traceback.

Lists are objects holding the list (``{"builds": [...]}``), so that fields
can be added later without breaking clients. Builds are ``Build.to_json()``.
BuildEvents is a server-sent event stream: each event's ``data:`` is
``{"seq", "type", "payload", "time", "build_id"}``; it replays the build's
events, follows new ones, and ends after the ``finish`` event. A client that
lost the stream resumes with ``Last-Event-ID`` (or ``?after=SEQ``).

ListAllJobs (every job of every pipeline with its latest build) is the heavy
one; switch it off by name where that matters
(``disabled_endpoints = ["ListAllJobs"]``, ``--disable-endpoint``, or
``WEB_NODE_DISABLE_ENDPOINTS``).
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import time
from typing import Any

from quart import request
from werkzeug.exceptions import MethodNotAllowed, RequestEntityTooLarge
from werkzeug.exceptions import NotFound as NoRoute

from web_node.errors import NotFound
from web_node.http import (
    ApiError,
    FollowTiming,
    count_streams,
    endpoint,
    error_response,
    follow_build_events,
    limit_body,
    log_disabled,
    new_app,
    openapi_document,
    parse_token,
    require_bearer,
    resolve_token,
    resume_after,
    sse_response,
)
from web_node.members._context import MemberContext
from web_node.members._member import Endpoint, Member, Option
from web_node.pipeline_config import PipelineConfigError, check_name, parse_pipeline
from web_node.store import FINISHED_STATUSES, Build, Job, Pipeline

TOKEN_FILE = "api-token"
MAX_BODY_BYTES = 1024 * 1024  # a pipeline config; a bigger one answers 413
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
EVENTS_TIMING = FollowTiming(poll_s=0.2)

ENDPOINTS = (
    Endpoint("GetInfo", "GET", "/api/v1/info", "what this api is: version, member, group, host, pid; no token needed",
             auth="none", responses=((200, "the info, with every endpoint and whether it is enabled"),)),
    Endpoint("GetOpenAPI", "GET", "/api/v1/openapi.json", "this API described as an OpenAPI 3 document; no token needed",
             auth="none", responses=((200, "the OpenAPI document"),)),
    Endpoint("ListAllJobs", "GET", "/api/v1/jobs", "every job of every pipeline with its latest build (heavy)",
             responses=((200, "{jobs: [...]}, each with its latest_build"),)),
    Endpoint("ListPipelines", "GET", "/api/v1/pipelines", "every pipeline",
             responses=((200, "{pipelines: [...]}"),)),
    Endpoint("SetPipeline", "PUT", "/api/v1/pipelines/<pipeline>", "create or replace a pipeline from a JSON or YAML config",
             responses=((200, "replaced"), (201, "created"), (400, "bad pipeline name or config; nothing is stored"),
                        (413, f"the config is larger than {MAX_BODY_BYTES // 1024} KiB"))),
    Endpoint("GetPipeline", "GET", "/api/v1/pipelines/<pipeline>", "one pipeline with its config and jobs",
             responses=((200, "the pipeline"), (400, "the pipeline name is not valid"), (404, "no such pipeline"))),
    Endpoint("DeletePipeline", "DELETE", "/api/v1/pipelines/<pipeline>", "remove a pipeline, its jobs, builds and events",
             responses=((204, "deleted"), (400, "the pipeline name is not valid"), (404, "no such pipeline"))),
    Endpoint("ListJobs", "GET", "/api/v1/pipelines/<pipeline>/jobs", "the jobs of a pipeline",
             responses=((200, "{jobs: [...]}"), (400, "the pipeline name is not valid"), (404, "no such pipeline"))),
    Endpoint("GetJob", "GET", "/api/v1/pipelines/<pipeline>/jobs/<job>", "one job with its latest build",
             responses=((200, "the job"), (400, "the pipeline or job name is not valid"), (404, "no such pipeline or job"))),
    Endpoint("ListJobBuilds", "GET", "/api/v1/pipelines/<pipeline>/jobs/<job>/builds", "a job's builds, newest first",
             responses=((200, "{builds: [...]}"),
                        (400, f"the pipeline or job name is not valid, or ?limit is not 1 to {MAX_LIST_LIMIT}"),
                        (404, "no such pipeline or job"))),
    Endpoint("CreateJobBuild", "POST", "/api/v1/pipelines/<pipeline>/jobs/<job>/builds", "start a build of a job now",
             responses=((201, "the new build (Location: /api/v1/builds/ID)"), (400, "the pipeline or job name is not valid"),
                        (404, "no such pipeline or job"))),
    Endpoint("ListBuilds", "GET", "/api/v1/builds", "builds, newest first (?limit, ?pipeline, ?job)",
             responses=((200, "{builds: [...]}"),
                        (400, f"?pipeline or ?job is not a valid name, or ?limit is not 1 to {MAX_LIST_LIMIT}"))),
    Endpoint("GetBuild", "GET", "/api/v1/builds/<int:build_id>", "one build",
             responses=((200, "the build"), (404, "no such build"))),
    Endpoint("BuildEvents", "GET", "/api/v1/builds/<int:build_id>/events", "a build's events as server-sent events, live",
             responses=((200, "text/event-stream: past events, then new ones; ends after the finish event"),
                        (404, "no such build"))),
    Endpoint("AbortBuild", "PUT", "/api/v1/builds/<int:build_id>/abort", "abort a pending or started build",
             responses=((200, "the aborted build"), (404, "no such build"), (409, "the build has already finished"))),
    Endpoint("ListWorkers", "GET", "/api/v1/workers", "registered workers",
             responses=((200, "{workers: [...]}"),)),
    Endpoint("ListComponents", "GET", "/api/v1/components", "running members and whether they are paused",
             responses=((200, "{components: [...]}"),)),
    Endpoint("PauseComponent", "PUT", "/api/v1/components/<component>/pause", "pause a periodic member",
             responses=((200, "the component, paused"), (400, "the component name is not valid"), (404, "no such component"))),
    Endpoint("UnpauseComponent", "PUT", "/api/v1/components/<component>/unpause", "resume a paused member",
             responses=((200, "the component, running"), (400, "the component name is not valid"),
                        (404, "no such component"))),
)


# ---------------------------------------------------------------- JSON shapes


def job_json(job: Job) -> dict[str, Any]:
    config = job.config
    return {
        "pipeline": job.pipeline,
        "name": job.name,
        "trigger_every_s": config.trigger_every_s,
        "timeout_s": config.timeout_s,
        "steps": [{"run": step.run} for step in config.steps],
        "last_triggered_at": job.last_triggered_at,
    }


def pipeline_json(pipeline: Pipeline, jobs: list[Job] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": pipeline.name, "created_at": pipeline.created_at, "updated_at": pipeline.updated_at}
    if jobs is not None:
        doc["config"] = pipeline.config
        doc["jobs"] = [job_json(j) for j in jobs]
    return doc


def _build_or_none(build: Build | None) -> dict[str, Any] | None:
    return build.to_json() if build is not None else None


def version() -> str:
    """The installed web-node version (the package metadata: right also when ``web_node`` is imported as a
    namespace package, as an editable install made before ``web_node/__init__.py`` existed does)."""
    try:
        return importlib.metadata.version("web-node")
    except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
        from web_node import __version__

        return __version__


# ---------------------------------------------------------------- request helpers


def _name(kind: str, value: str, field: str = "") -> str:
    """``value`` when it can name a ``kind`` (no control characters, no '/'); else 400 naming the field.

    Every name in a path or query is checked before the store sees it: no stored name can fail
    the check (SetPipeline stores only checked names), and the error, not a 404 or a log line,
    is where a name holding a newline or a terminal escape ends."""
    try:
        return check_name(kind, value)
    except PipelineConfigError as e:
        raise ApiError(400, f"{field}: {e}" if field else str(e)) from None


def _optional_name(kind: str, key: str) -> str | None:
    value = request.args.get(key)
    return None if value is None else _name(kind, value, f"?{key}=")


def _list_limit() -> int:
    raw = request.args.get("limit")
    if raw is None:
        return DEFAULT_LIST_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIST_LIMIT:
        shown = repr(raw) if len(raw) <= 30 else f"{raw[:20]!r}... ({len(raw)} characters)"
        raise ApiError(400, f"limit={shown} must be a whole number from 1 to {MAX_LIST_LIMIT}")
    return limit


# ---------------------------------------------------------------- the app


async def make_app(ctx: MemberContext) -> Any:
    app = new_app(ctx)
    limit_body(app, "SetPipeline", MAX_BODY_BYTES, advice="split it into several pipelines")
    count_streams(app, "BuildEvents")  # [members.api] max_streams at once; 503 beyond
    log_disabled(ctx)
    token = resolve_token(ctx, option="token", filename=TOKEN_FILE)
    require_bearer(app, ctx, token,
                   hint=f"[members.{ctx.member.name}] token, or the content of data_dir/{TOKEN_FILE} when that is unset")
    started_at = time.time()
    host = socket.gethostname()
    running_version = version()
    store = ctx.store

    @app.errorhandler(NoRoute)
    async def no_route(e: NoRoute) -> Any:
        return error_response(404, f"no such route: {request.method} {request.path}; GET /api/v1/info lists the endpoints")

    @app.errorhandler(MethodNotAllowed)
    async def wrong_method(e: MethodNotAllowed) -> Any:
        allowed = sorted(set(e.valid_methods or ()) - {"HEAD", "OPTIONS"})
        response = error_response(405, f"{request.method} is not allowed on {request.path}; allowed: {', '.join(allowed)}")
        response.headers["Allow"] = ", ".join(e.valid_methods or ())
        return response

    @app.errorhandler(RequestEntityTooLarge)
    async def too_large(e: RequestEntityTooLarge) -> Any:
        response = error_response(413, f"the body is larger than {app.config['MAX_CONTENT_LENGTH'] // 1024} KiB")
        # The rest of the body is never read: the connection cannot carry another request.
        response.headers["Connection"] = "close"
        return response

    # -- info

    @endpoint(app, ctx, "GetInfo")
    async def get_info() -> Any:
        disabled = ctx.settings.disabled_endpoints
        return {
            "name": "web-node",
            "version": running_version,
            "member": ctx.member.name,
            "group": ctx.group,
            "host": host,
            "pid": os.getpid(),
            "started_at": started_at,
            "endpoints": [{"name": e.name, "method": e.method, "path": e.path, "enabled": e.name not in disabled}
                          for e in ctx.member.endpoints],
        }

    openapi = openapi_document(ctx.member, running_version)

    @endpoint(app, ctx, "GetOpenAPI")
    async def get_openapi() -> Any:
        return openapi

    # -- pipelines and jobs

    @endpoint(app, ctx, "ListAllJobs")
    async def list_all_jobs() -> Any:
        summaries = await store.list_all_jobs()
        return {"jobs": [{**job_json(s.job), "latest_build": _build_or_none(s.latest_build)} for s in summaries]}

    @endpoint(app, ctx, "ListPipelines")
    async def list_pipelines() -> Any:
        return {"pipelines": [pipeline_json(p) for p in await store.list_pipelines()]}

    @endpoint(app, ctx, "SetPipeline")
    async def set_pipeline(pipeline: str) -> Any:
        name = _name("pipeline", pipeline)
        # Read in full, then judge the size: answering before the whole body is read (quart's
        # MAX_CONTENT_LENGTH) can leave hypercorn stuck on the unread rest, and the client waiting.
        body = await request.get_data(as_text=False)
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"pipeline {name} was not set: the config is {len(body) // 1024} KiB, more than the "
                                f"{MAX_BODY_BYTES // 1024} KiB a pipeline may have; split it into several pipelines")
        try:
            config, jobs = parse_pipeline(body, request.headers.get("Content-Type"))
        except PipelineConfigError as e:
            raise ApiError(400, f"pipeline {name} was not set: {e}") from None
        try:
            stored = await store.set_pipeline(name, config, jobs)
        except ValueError as e:  # the store's own checks; the parser should have caught them first
            raise ApiError(400, f"pipeline {name} was not set: {e}") from None
        created = stored.created_at == stored.updated_at  # the store sets both only when it inserts
        ctx.log.info("pipeline %s %s through the API (%d job%s)", name, "created" if created else "replaced",
                     len(jobs), "" if len(jobs) == 1 else "s")
        return pipeline_json(stored, await store.list_jobs(name)), 201 if created else 200

    @endpoint(app, ctx, "GetPipeline")
    async def get_pipeline(pipeline: str) -> Any:
        pipeline = _name("pipeline", pipeline)
        found = await store.get_pipeline(pipeline)
        return pipeline_json(found, await store.list_jobs(pipeline))

    @endpoint(app, ctx, "DeletePipeline")
    async def delete_pipeline(pipeline: str) -> Any:
        pipeline = _name("pipeline", pipeline)
        await store.delete_pipeline(pipeline)
        ctx.log.info("pipeline %s deleted through the API, with its jobs, builds and events", pipeline)
        return "", 204

    @endpoint(app, ctx, "ListJobs")
    async def list_jobs(pipeline: str) -> Any:
        pipeline = _name("pipeline", pipeline)
        return {"jobs": [job_json(j) for j in await store.list_jobs(pipeline)]}

    @endpoint(app, ctx, "GetJob")
    async def get_job(pipeline: str, job: str) -> Any:
        pipeline, job = _name("pipeline", pipeline), _name("job", job)
        found = await store.get_job(pipeline, job)
        latest = await store.list_builds(limit=1, pipeline=pipeline, job=job)
        return {**job_json(found), "latest_build": _build_or_none(latest[0] if latest else None)}

    # -- builds

    @endpoint(app, ctx, "ListJobBuilds")
    async def list_job_builds(pipeline: str, job: str) -> Any:
        pipeline, job = _name("pipeline", pipeline), _name("job", job)
        limit = _list_limit()
        await store.get_job(pipeline, job)  # 404 for an unknown job rather than an empty list
        return {"builds": [b.to_json() for b in await store.list_builds(limit=limit, pipeline=pipeline, job=job)]}

    @endpoint(app, ctx, "CreateJobBuild")
    async def create_job_build(pipeline: str, job: str) -> Any:
        pipeline, job = _name("pipeline", pipeline), _name("job", job)
        build = await store.create_build(pipeline, job, "manual", time.time())
        ctx.log.info("build %d of %s/%s created through the API", build.id, pipeline, job)
        return build.to_json(), 201, {"Location": f"/api/v1/builds/{build.id}"}

    @endpoint(app, ctx, "ListBuilds")
    async def list_builds() -> Any:
        limit = _list_limit()
        pipeline, job = _optional_name("pipeline", "pipeline"), _optional_name("job", "job")
        return {"builds": [b.to_json() for b in await store.list_builds(limit=limit, pipeline=pipeline, job=job)]}

    @endpoint(app, ctx, "GetBuild")
    async def get_build(build_id: int) -> Any:
        return (await store.get_build(build_id)).to_json()

    @endpoint(app, ctx, "BuildEvents")
    async def build_events(build_id: int) -> Any:
        await store.get_build(build_id)  # an unknown build answers 404 JSON, not an empty stream
        return sse_response(follow_build_events(store, build_id, resume_after(), timing=EVENTS_TIMING,
                                                stop=ctx.state.get("stopping"), log=ctx.log))

    @endpoint(app, ctx, "AbortBuild")
    async def abort_build(build_id: int) -> Any:
        build = await store.get_build(build_id)
        if build.status not in FINISHED_STATUSES:
            now = time.time()
            # One transaction: the status event, the finish event and the status, or nothing when
            # someone else (a worker, the build-tracker, another abort) finished the build meanwhile.
            ended = await store.end_build(build_id, "aborted", now, events=[("status", {"status": "aborted"})])
            build = ended.build
            if ended.ended:
                ctx.log.info("build %d of %s/%s aborted through the API (it was run by %s)", build.id, build.pipeline,
                             build.job, f"worker {build.worker}" if build.worker else "no worker yet")
                return build.to_json()
        raise ApiError(409, f"build {build_id} has already finished ({build.status}); "
                            "only a pending or started build can be aborted")

    # -- workers and components

    @endpoint(app, ctx, "ListWorkers")
    async def list_workers() -> Any:
        return {"workers": [w.to_json() for w in await store.list_workers()]}

    @endpoint(app, ctx, "ListComponents")
    async def list_components() -> Any:
        return {"components": [c.to_json() for c in await store.list_components()]}

    async def set_paused(component: str, paused: bool) -> Any:
        component = _name("component", component)
        try:
            found = await store.set_component_paused(component, paused)
        except NotFound:
            known = sorted(c.name for c in await store.list_components())
            raise ApiError(404, f"component {component} does not exist; known components: {', '.join(known) or 'none'} "
                                "(members register when they start)") from None
        ctx.log.info("component %s %s through the API", component, "paused" if paused else "unpaused")
        return found.to_json()

    @endpoint(app, ctx, "PauseComponent")
    async def pause_component(component: str) -> Any:
        return await set_paused(component, True)

    @endpoint(app, ctx, "UnpauseComponent")
    async def unpause_component(component: str) -> Any:
        return await set_paused(component, False)

    return app


MEMBER = Member(
    name="api",
    role="api",
    kind="http",
    description="JSON API",
    listen="127.0.0.1:8080",
    endpoints=ENDPOINTS,
    options=(
        Option("token", parse_token, None,
               f"the bearer token API clients send, at least 16 characters; unset: generated into data_dir/{TOKEN_FILE} "
               "(mode 0600)", "string"),
    ),
    make_app=make_app,
)
