"""scheduler: creates builds for jobs whose trigger interval elapsed.

A job with ``trigger_every`` gets a new build (trigger ``scheduler``) once
that long has passed since its last trigger. While the job's newest build is
still waiting for a worker (pending), no further build is queued for it: a
slow or absent worker does not pile up builds.

Several nodes may run a scheduler on one database: the check, the mark and
the build are one store transaction (``trigger_due_job``), so a due job gets
one build however many schedulers see it due at once.
"""

from __future__ import annotations

import time

from web_node.members._context import MemberContext
from web_node.members._member import Member
from web_node.units import format_duration


async def tick(ctx: MemberContext) -> None:
    now = time.time()
    for job in await ctx.store.jobs_due(now):
        build = await ctx.store.trigger_due_job(job.pipeline, job.name, now)
        if build is None:
            ctx.log.debug("job %s/%s is due but was not triggered: its newest build still waits for a worker, "
                          "another scheduler triggered it first, or it was removed", job.pipeline, job.name)
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
