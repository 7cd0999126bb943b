"""gc: deletes builds and events past retention, prunes stalled workers.

``build_retention`` (default 7d): finished builds whose end is older are
deleted with their events; running and pending builds are never touched.
``worker_retention`` (default 5m): workers that have not sent a heartbeat for
that long are removed from the worker list (a worker that comes back simply
registers again).
"""

from __future__ import annotations

import time

from web_node.members._context import MemberContext
from web_node.members._member import Member, Option
from web_node.units import DURATION_HELP, format_duration, parse_duration


def _retention(value: object) -> float:
    seconds = parse_duration(value)  # type: ignore[arg-type]
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero")
    return seconds


async def tick(ctx: MemberContext) -> None:
    now = time.time()
    build_retention_s: float = ctx.option("build_retention")
    worker_retention_s: float = ctx.option("worker_retention")
    deleted = await ctx.store.delete_builds_finished_before(now - build_retention_s)
    if deleted:
        ctx.log.info("deleted %d build(s) that finished more than %s ago, with their events",
                     deleted, format_duration(build_retention_s))
    pruned = await ctx.store.delete_workers_stalled_before(now - worker_retention_s)
    if pruned:
        ctx.log.info("removed %d worker(s) without a heartbeat for %s: %s",
                     len(pruned), format_duration(worker_retention_s), ", ".join(pruned))


MEMBER = Member(
    name="gc",
    role="backend",
    kind="periodic",
    description="deletes builds and events past retention, prunes stalled workers",
    interval_s=30.0,
    options=(
        Option("build_retention", _retention, parse_duration("7d"),
               f"delete finished builds and their events this long after they ended: {DURATION_HELP}"),
        Option("worker_retention", _retention, parse_duration("5m"),
               f"remove workers whose last heartbeat is older than this: {DURATION_HELP}"),
    ),
    tick=tick,
)
