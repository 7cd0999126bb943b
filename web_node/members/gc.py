"""gc: deletes builds and events past retention, prunes stalled workers (placeholder until the members issue)."""

from __future__ import annotations

from web_node.members._context import MemberContext
from web_node.members._member import Member


async def tick(ctx: MemberContext) -> None:
    ctx.log.info("run: nothing to do yet")


MEMBER = Member(
    name="gc",
    role="backend",
    kind="periodic",
    description="deletes builds and events past retention, prunes stalled workers",
    interval_s=30.0,
    tick=tick,
)
