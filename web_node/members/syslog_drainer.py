"""syslog-drainer: ships finished build logs to syslog (RFC 5424) when configured (placeholder until the members issue)."""

from __future__ import annotations

from web_node.members._context import MemberContext
from web_node.members._member import Member


async def tick(ctx: MemberContext) -> None:
    ctx.log.info("run: nothing to do yet")


MEMBER = Member(
    name="syslog-drainer",
    role="backend",
    kind="periodic",
    description="ships finished build logs to syslog (RFC 5424) when configured",
    interval_s=30.0,
    tick=tick,
)
