"""build-tracker: fails builds whose worker vanished or that ran past their timeout.

Each run looks at every started build:

- its worker sent no heartbeat for ``worker_timeout`` (default 30s), or is no
  longer registered: the build is **errored**, with an ``error`` event that
  names the worker and when it was last heard from;
- it has run longer than its job's ``timeout``: the build is **failed**, with
  an ``error`` event "timed out after 10m". Its worker learns that the build
  finished on its next event or heartbeat and kills the build's processes.

Both events come before the ``finish`` event and commit with it and the
final status in one transaction, so whoever follows the build's events sees
why before the end, and a build never ends twice.
"""

from __future__ import annotations

import time

from web_node.errors import NotFound
from web_node.members._context import MemberContext
from web_node.members._member import Member, Option
from web_node.store import Build, BuildStatus, Worker
from web_node.units import DURATION_HELP, parse_duration


def short_duration(seconds: float) -> str:
    """``10m``, ``1m30s``, ``45s``, ``1h5m``, ``500ms``: the way timeouts are written in pipeline configs."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    total = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, total = divmod(total, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def timed_out_message(timeout_s: float) -> str:
    return f"timed out after {short_duration(timeout_s)}"


def _worker_timeout(value: object) -> float:
    seconds = parse_duration(value)  # type: ignore[arg-type]
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero")
    return seconds


def _vanished_reason(build: Build, worker: Worker | None, now: float, timeout_s: float) -> str | None:
    if worker is None:
        return (f"worker {build.worker} that ran this build is no longer registered (it stopped sending heartbeats "
                f"and was removed): build errored; check that worker's host, its processes may still run there")
    silent_s = now - worker.heartbeat_at
    if silent_s > timeout_s:
        return (f"worker {build.worker} sent no heartbeat for {short_duration(silent_s)} (worker_timeout "
                f"{short_duration(timeout_s)}): build errored; check that worker's host, its processes may still run there")
    return None


async def end_build(ctx: MemberContext, build: Build, status: BuildStatus, message: str | None, now: float,
                    *, worker: str | None = None) -> bool:
    """Explain (an ``error`` event, when ``message``), write the ``finish`` event and set the final
    status, in one store transaction (:meth:`~web_node.store.Store.end_build`).

    Returns False, and writes nothing, when the build had finished meanwhile.
    The gateway ends builds the same way when a worker reports a result
    (``worker``: only the worker that runs the build may).
    """
    events = [("error", {"message": message})] if message else []
    ended = await ctx.store.end_build(build.id, status, now, events=events, worker=worker)
    return ended.ended


async def tick(ctx: MemberContext) -> None:
    now = time.time()
    timeout_s: float = ctx.option("worker_timeout")
    workers = {w.name: w for w in await ctx.store.list_workers()}
    for build in await ctx.store.list_running_builds():
        reason = _vanished_reason(build, workers.get(build.worker or ""), now, timeout_s)
        status: BuildStatus = "errored"
        if reason is None and build.start_time is not None and now - build.start_time > build.timeout_s:
            reason, status = timed_out_message(build.timeout_s), "failed"
        if reason is None:
            continue
        try:
            ended = await end_build(ctx, build, status, reason, now)
        except NotFound:
            continue  # deleted meanwhile (its pipeline was removed)
        if ended:
            ctx.log.warning("build %d of %s/%s on worker %s %s: %s", build.id, build.pipeline, build.job,
                            build.worker, status, reason)


MEMBER = Member(
    name="build-tracker",
    role="backend",
    kind="periodic",
    description="fails builds whose worker vanished or that ran past their timeout",
    interval_s=10.0,
    options=(
        Option("worker_timeout", _worker_timeout, 30.0,
               f"error a running build when its worker sent no heartbeat for this long: {DURATION_HELP}", "duration"),
    ),
    tick=tick,
)
