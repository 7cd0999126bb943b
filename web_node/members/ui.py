"""ui: web pages: pipelines, builds, and the live members panel (placeholder until the members issue)."""

from __future__ import annotations

import os
from typing import Any

from web_node.http import endpoint, new_app
from web_node.members._context import MemberContext
from web_node.members._member import Endpoint, Member


async def make_app(ctx: MemberContext) -> Any:
    app = new_app(ctx)

    @endpoint(app, ctx, "UiIndex")
    async def info() -> Any:
        return {"member": ctx.member.name, "group": ctx.group, "pid": os.getpid()}

    return app


MEMBER = Member(
    name="ui",
    role="ui",
    kind="http",
    description="web pages: pipelines, builds, and the live members panel",
    listen="127.0.0.1:8081",
    endpoints=(Endpoint("UiIndex", "GET", "/"),),
    make_app=make_app,
)
