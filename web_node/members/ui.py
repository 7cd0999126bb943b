"""ui: web pages for pipelines, jobs and builds with a live build log, and a members page.

=============  ====  ==============================  ================================================
UiPipelines    GET   /                               every pipeline, its jobs, each job's latest build
UiPipeline     GET   /pipelines/<pipeline>           one pipeline: its jobs and recent builds
UiBuild        GET   /builds/<build_id>              one build: details and its live log
UiBuildEvents  GET   /builds/<build_id>/events       the build's events as server-sent events
UiMembers      GET   /members                        the running members (refreshes itself)
UiMembersJson  GET   /members.json                   the same table as JSON, for that refresh
=============  ====  ==============================  ================================================

The ui is **read-only** and asks for **no token**: it only reads the store
and changes nothing, and it listens on loopback (``127.0.0.1:8081``) by
default. Before you set ``[members.ui] listen`` to an address others can
reach, know that anyone who reaches it sees every pipeline, every build log
and the node's hosts and pids; put it behind a proxy that authenticates, or
switch pages off by name (``disabled_endpoints = ["UiMembers"]``).

The live log does not use the api member's BuildEvents stream: that one
needs the API's bearer token and lives on another port, which a page cannot
use without handing the token to the browser. UiBuildEvents is its
same-origin, read-only twin: it replays the build's events from the store,
then follows new ones (polling the store every ``EVENTS_TIMING.poll_s``; the
shared :func:`web_node.http.follow_build_events`, as BuildEvents) and closes after
the ``finish`` event. A browser that loses the stream reconnects with
``Last-Event-ID`` and continues where it stopped.

Pages are Jinja templates (``ui_templates/``, autoescaped) with plain CSS and
JavaScript in ``ui_static/``: no build step, nothing fetched from the
internet, no inline script (the pages send a ``Content-Security-Policy`` of
``'self'``). Error answers of the pages are HTML pages; UiMembersJson and
UiBuildEvents keep JSON errors for scripts.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from quart import Response, render_template, request
from quart_trio import QuartTrio

from web_node.errors import NotFound
from web_node.http import (
    FollowTiming,
    count_streams,
    endpoint,
    follow_build_events,
    log_disabled,
    new_app,
    resume_after,
    sse_response,
)
from web_node.members._context import MemberContext
from web_node.members._member import Endpoint, Member
from web_node.runner import COMPONENT_HEARTBEAT_S
from web_node.store import Build, Component, JobSummary
from web_node.units import format_duration

HERE = os.path.dirname(os.path.abspath(__file__))
# An open live log asks the store for new events this often (each open browser tab polls).
EVENTS_TIMING = FollowTiming(poll_s=0.5)
RECENT_BUILDS = 50
# A member whose heartbeat is older than this is shown as stale (it heartbeats every COMPONENT_HEARTBEAT_S).
STALE_AFTER_S = 3 * COMPONENT_HEARTBEAT_S
MEMBERS_REFRESH_MS = 3000

ENDPOINTS = (
    Endpoint("UiPipelines", "GET", "/", "every pipeline with its jobs and each job's latest build", auth="none"),
    Endpoint("UiPipeline", "GET", "/pipelines/<pipeline>", "one pipeline: its jobs and recent builds", auth="none",
             responses=((200, "the page"), (404, "no such pipeline (an HTML page)"))),
    Endpoint("UiBuild", "GET", "/builds/<int:build_id>", "one build: details and its live log", auth="none",
             responses=((200, "the page"), (404, "no such build (an HTML page)"))),
    Endpoint("UiBuildEvents", "GET", "/builds/<int:build_id>/events", "a build's events as server-sent events", auth="none",
             responses=((200, "text/event-stream, as the api's BuildEvents"), (404, "no such build"))),
    Endpoint("UiMembers", "GET", "/members", "the running members, refreshed every few seconds", auth="none"),
    Endpoint("UiMembersJson", "GET", "/members.json", "the members table as JSON", auth="none"),
)
# Endpoints whose errors stay JSON (scripts and EventSource read them); every other error becomes an HTML page.
JSON_ENDPOINTS = frozenset({"UiBuildEvents", "UiMembersJson", "healthz", "static"})
SECURITY_HEADERS = {
    # No inline script, nothing from elsewhere: a build log cannot smuggle script into the page.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


async def make_app(ctx: MemberContext) -> Any:
    app = new_app(ctx)
    count_streams(app, "UiBuildEvents")  # [members.ui] max_streams at once; 503 beyond
    # new_app's import name is not a module: say where templates and static files live.
    app.root_path = HERE
    app.template_folder = "ui_templates"
    app.static_folder = "ui_static"
    if "static" not in app.view_functions:  # new_app may make apps without a static route
        app.add_url_rule("/static/<path:filename>", endpoint="static", view_func=app.send_static_file)
    _add_template_helpers(app, ctx)
    _add_html_errors(app)
    log_disabled(ctx)

    @endpoint(app, ctx, "UiPipelines")
    async def pipelines() -> Any:
        listed = await ctx.store.list_pipelines()
        summaries = await ctx.store.list_all_jobs()
        jobs: dict[str, list[JobSummary]] = {p.name: [] for p in listed}
        for summary in summaries:
            jobs.setdefault(summary.job.pipeline, []).append(summary)
        return await render_template("pipelines.html", pipelines=listed, jobs=jobs)

    @endpoint(app, ctx, "UiPipeline")
    async def pipeline(pipeline: str) -> Any:
        try:
            found = await ctx.store.get_pipeline(pipeline)
        except NotFound:
            return await _not_found(f"There is no pipeline named “{pipeline}”.",
                                    "It may have been deleted, or the name is misspelled; the list of pipelines is on the home page.")
        # One pipeline's jobs only: the all-jobs query is the heavy one (ListAllJobs), not for every page view.
        summaries = await ctx.store.list_all_jobs(pipeline)
        builds = await ctx.store.list_builds(limit=RECENT_BUILDS, pipeline=pipeline)
        return await render_template("pipeline.html", pipeline=found, jobs=summaries, builds=builds,
                                     recent_limit=RECENT_BUILDS)

    @endpoint(app, ctx, "UiBuild")
    async def build(build_id: int) -> Any:
        try:
            found = await ctx.store.get_build(build_id)
        except NotFound:
            return await _not_found(f"There is no build {build_id}.",
                                    "Finished builds are deleted by the gc member once they are older than its retention; "
                                    "a deleted pipeline takes its builds with it.")
        return await render_template("build.html", build=found, now=time.time())

    @endpoint(app, ctx, "UiBuildEvents")
    async def build_events(build_id: int) -> Any:
        await ctx.store.get_build(build_id)  # NotFound answers 404 before the stream starts
        # "stopping" is set by the runner at a graceful stop, when it offers it: open streams then
        # end at once instead of holding the shutdown for shutdown_grace (the browser reconnects).
        return sse_response(follow_build_events(ctx.store, build_id, resume_after(), timing=EVENTS_TIMING,
                                                stop=ctx.state.get("stopping"), log=ctx.log))

    @endpoint(app, ctx, "UiMembers")
    async def members() -> Any:
        return await render_template("members.html", table=await _members_table(ctx),
                                     refresh_ms=MEMBERS_REFRESH_MS, stale_after_s=STALE_AFTER_S)

    @endpoint(app, ctx, "UiMembersJson")
    async def members_json() -> Any:
        return await _members_table(ctx)

    return app


# ---------------------------------------------------------------- members


async def _members_table(ctx: MemberContext) -> dict[str, Any]:
    now = time.time()
    components = await ctx.store.list_components()
    return {
        "now": now,
        "stale_after_s": STALE_AFTER_S,
        "components": [_component_row(c, now) for c in sorted(components, key=lambda c: (c.group, c.name))],
    }


def _component_row(c: Component, now: float) -> dict[str, Any]:
    age = max(0.0, now - c.heartbeat_at)
    return {
        **c.to_json(),
        "heartbeat_age_s": round(age, 1),
        "last_run_age_s": None if c.last_run_at is None else round(max(0.0, now - c.last_run_at), 1),
        "stale": age > STALE_AFTER_S,
    }


# ---------------------------------------------------------------- templates and errors


def _add_template_helpers(app: QuartTrio, ctx: MemberContext) -> None:
    @app.template_filter("utc")
    def utc(ts: float | None) -> str:
        if ts is None:
            return "—"
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    @app.template_filter("iso")
    def iso(ts: float | None) -> str:
        return "" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()

    @app.template_filter("duration")
    def duration(seconds: float | None) -> str:
        return "—" if seconds is None else format_duration(max(0.0, seconds))

    @app.template_global()
    def build_duration(build: Build, now: float | None = None) -> str:
        """How long the build ran (or has been running)."""
        if build.start_time is None:
            return "—"
        end = build.end_time if build.end_time is not None else (now or time.time())
        return format_duration(max(0.0, end - build.start_time))

    @app.context_processor
    async def common() -> dict[str, Any]:
        disabled = ctx.settings.disabled_endpoints
        return {
            "member": ctx.member.name,
            "group": ctx.group,
            "pid": os.getpid(),
            "page_enabled": lambda name: name not in disabled,
        }


async def _not_found(title: str, hint: str) -> Any:
    return await render_template("error.html", code=404, title=title, message=hint), 404


def _add_html_errors(app: QuartTrio) -> None:
    @app.after_request
    async def html_errors(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if response.status_code < 400 or response.mimetype != "application/json" or request.endpoint in JSON_ENDPOINTS:
            return response
        # A page's error (disabled page, unknown address, database down) for a person with a browser.
        doc = await response.get_json(silent=True)
        message = doc.get("error") if isinstance(doc, dict) else None
        code = response.status_code
        title = {404: "Not found", 503: "The database is unavailable"}.get(code, "Something went wrong")
        page = await render_template("error.html", code=code, title=title, message=message or "")
        html = Response(page, status=code, mimetype="text/html")
        html.headers.update(SECURITY_HEADERS)
        return html


MEMBER = Member(
    name="ui",
    role="ui",
    kind="http",
    description="web pages: pipelines, builds, and the live members panel",
    listen="127.0.0.1:8081",
    endpoints=ENDPOINTS,
    make_app=make_app,
)
