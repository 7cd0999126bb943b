"""gc: deletes builds and events past retention, prunes stalled workers.

``build_retention`` (default 7d): finished builds whose end is older are
deleted with their events; running and pending builds are never touched.
While a syslog-drainer is configured (enabled, with an ``address``), a build
whose log it has not shipped yet is kept past retention until it has: gc
never loses a log the operator asked to have in syslog.
``worker_retention`` (default 5m): workers that have not sent a heartbeat for
that long are removed from the worker list (a worker that comes back simply
registers again).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from web_node.members._context import MemberContext
from web_node.members._member import Member, Option
from web_node.units import DURATION_HELP, format_duration, parse_duration

if TYPE_CHECKING:
    from web_node.config import Config


def _retention(value: object) -> float:
    seconds = parse_duration(value)  # type: ignore[arg-type]
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero")
    return seconds


def drainer_configured(config: Config) -> bool:
    """Whether a syslog-drainer ships build logs (enabled and given an address), in this node's config."""
    drainer = config.members.get("syslog-drainer")
    return drainer is not None and drainer.enabled and drainer.options.get("address") is not None


async def tick(ctx: MemberContext) -> None:
    now = time.time()
    build_retention_s: float = ctx.option("build_retention")
    worker_retention_s: float = ctx.option("worker_retention")
    cutoff = now - build_retention_s
    keep_unshipped = drainer_configured(ctx.config)
    deleted = await ctx.store.delete_builds_finished_before(cutoff, keep_unshipped=keep_unshipped)
    if deleted:
        ctx.log.info("deleted %d build(s) that finished more than %s ago, with their events",
                     deleted, format_duration(build_retention_s))
    if keep_unshipped:
        oldest = await ctx.store.list_unshipped_builds(1)
        if oldest and oldest[0].end_time is not None and oldest[0].end_time < cutoff:
            ctx.log.warning("keeping builds past build_retention (%s) until syslog-drainer ships them, the oldest "
                            "build %d; if this lasts, check that the drainer runs and its receiver accepts logs",
                            format_duration(build_retention_s), oldest[0].id)
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
               f"delete finished builds and their events this long after they ended: {DURATION_HELP}", "duration"),
        Option("worker_retention", _retention, parse_duration("5m"),
               f"remove workers whose last heartbeat is older than this: {DURATION_HELP}", "duration"),
    ),
    tick=tick,
)
