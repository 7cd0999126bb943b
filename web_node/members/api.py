"""api: the JSON API of SPEC.md (placeholder until the members issue)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from web_node.http import endpoint, log_disabled, new_app
from web_node.members._context import MemberContext
from web_node.members._member import Endpoint, Member

ENDPOINTS = (
    Endpoint("GetInfo", "GET", "/api/v1/info"),
    Endpoint("ListAllJobs", "GET", "/api/v1/jobs"),
    Endpoint("ListPipelines", "GET", "/api/v1/pipelines"),
    Endpoint("SetPipeline", "PUT", "/api/v1/pipelines/<pipeline>"),
    Endpoint("GetPipeline", "GET", "/api/v1/pipelines/<pipeline>"),
    Endpoint("DeletePipeline", "DELETE", "/api/v1/pipelines/<pipeline>"),
    Endpoint("ListJobs", "GET", "/api/v1/pipelines/<pipeline>/jobs"),
    Endpoint("GetJob", "GET", "/api/v1/pipelines/<pipeline>/jobs/<job>"),
    Endpoint("ListJobBuilds", "GET", "/api/v1/pipelines/<pipeline>/jobs/<job>/builds"),
    Endpoint("CreateJobBuild", "POST", "/api/v1/pipelines/<pipeline>/jobs/<job>/builds"),
    Endpoint("ListBuilds", "GET", "/api/v1/builds"),
    Endpoint("GetBuild", "GET", "/api/v1/builds/<int:build_id>"),
    Endpoint("BuildEvents", "GET", "/api/v1/builds/<int:build_id>/events"),
    Endpoint("AbortBuild", "PUT", "/api/v1/builds/<int:build_id>/abort"),
    Endpoint("ListWorkers", "GET", "/api/v1/workers"),
    Endpoint("ListComponents", "GET", "/api/v1/components"),
    Endpoint("PauseComponent", "PUT", "/api/v1/components/<component>/pause"),
    Endpoint("UnpauseComponent", "PUT", "/api/v1/components/<component>/unpause"),
)


async def make_app(ctx: MemberContext) -> Any:
    app = new_app(ctx)
    log_disabled(ctx)
    started = time.time()

    @endpoint(app, ctx, "GetInfo")
    async def get_info() -> Any:
        return {
            "name": "web-node",
            "member": ctx.member.name,
            "group": ctx.group,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": started,
        }

    return app


MEMBER = Member(
    name="api",
    role="api",
    kind="http",
    description="JSON API",
    listen="127.0.0.1:8080",
    endpoints=ENDPOINTS,
    make_app=make_app,
)
