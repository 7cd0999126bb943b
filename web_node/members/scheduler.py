"""scheduler: creates builds for jobs whose trigger interval elapsed (placeholder until the members issue)."""

from __future__ import annotations

from web_node.members._context import MemberContext
from web_node.members._member import Member


async def tick(ctx: MemberContext) -> None:
    ctx.log.info("run: nothing to do yet")


MEMBER = Member(
    name="scheduler",
    role="backend",
    kind="periodic",
    description="creates builds for jobs whose trigger interval elapsed",
    interval_s=10.0,
    tick=tick,
)
