"""scheduler: creates builds for jobs whose trigger interval elapsed.

A job with ``trigger_every`` gets a new build (trigger ``scheduler``) once
that long has passed since its last trigger. While the job's newest build is
still waiting for a worker (pending), no further build is queued for it: a
slow or absent worker does not pile up builds.
"""

from __future__ import annotations

import time

from web_node.errors import NotFound
from web_node.members._context import MemberContext
from web_node.members._member import Member
from web_node.units import format_duration


async def tick(ctx: MemberContext) -> None:
    now = time.time()
    for job in await ctx.store.jobs_due(now):
        latest = await ctx.store.list_builds(limit=1, pipeline=job.pipeline, job=job.name)
        if latest and latest[0].status == "pending":
            ctx.log.debug("job %s/%s is due but its build %d still waits for a worker: not queueing another",
                          job.pipeline, job.name, latest[0].id)
            continue
        try:
            build = await ctx.store.create_build(job.pipeline, job.name, "scheduler", now)
            await ctx.store.mark_triggered(job.pipeline, job.name, now)
        except NotFound:
            ctx.log.info("job %s/%s was removed while being triggered: skipped", job.pipeline, job.name)
            continue
        every = format_duration(job.config.trigger_every_s or 0.0)
        ctx.log.info("triggered build %d of %s/%s (trigger_every %s)", build.id, job.pipeline, job.name, every)


MEMBER = Member(
    name="scheduler",
    role="backend",
    kind="periodic",
    description="creates builds for jobs whose trigger interval elapsed",
    interval_s=10.0,
    tick=tick,
)
