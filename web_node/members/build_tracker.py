"""build-tracker: fails builds whose worker vanished or that ran past their timeout (placeholder until the members issue)."""

from __future__ import annotations

from web_node.members._context import MemberContext
from web_node.members._member import Member


async def tick(ctx: MemberContext) -> None:
    ctx.log.info("run: nothing to do yet")


MEMBER = Member(
    name="build-tracker",
    role="backend",
    kind="periodic",
    description="fails builds whose worker vanished or that ran past their timeout",
    interval_s=10.0,
    tick=tick,
)
