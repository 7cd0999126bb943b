"""gateway: worker registration, heartbeats, work hand-out (placeholder until the members issue)."""

from __future__ import annotations

import os
from typing import Any

from web_node.http import endpoint, new_app
from web_node.members._context import MemberContext
from web_node.members._member import Endpoint, Member


async def make_app(ctx: MemberContext) -> Any:
    app = new_app(ctx)

    @endpoint(app, ctx, "GatewayInfo")
    async def info() -> Any:
        return {"member": ctx.member.name, "group": ctx.group, "pid": os.getpid()}

    return app


MEMBER = Member(
    name="gateway",
    role="gateway",
    kind="http",
    description="worker registration, heartbeats, work hand-out",
    listen="127.0.0.1:2222",
    endpoints=(Endpoint("GatewayInfo", "GET", "/gateway/v1/info"),),
    make_app=make_app,
)
