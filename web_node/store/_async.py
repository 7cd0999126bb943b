"""The store for trio code: every :class:`Store` call, awaited in a worker thread.

Store calls block on disk or network I/O; made from the trio loop they would
stall every other task of the process. :class:`AsyncStore` runs each one with
:func:`trio.to_thread.run_sync` under a per-store ``CapacityLimiter(1)``: one
call at a time per store (a store holds a single connection), and the loop
stays free while it runs. Cancelling a caller does not abandon the thread: the
call finishes (its transaction commits or rolls back) before the cancellation
is delivered, so the database never sees half a call.

The methods are written out one by one, not generated, so that mypy checks
every caller against the real signatures. ``test_async_mirrors_store`` keeps
them in step with :class:`Store`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import trio

from ._interface import (
    Build,
    BuildEnd,
    BuildEvent,
    BuildStatus,
    Component,
    EventBatch,
    Job,
    JobConfig,
    JobSummary,
    Pipeline,
    Store,
    Worker,
)

P = ParamSpec("P")
T = TypeVar("T")


class AsyncStore:
    """Async front of a :class:`Store`; same method names, arguments and results."""

    def __init__(self, store: Store) -> None:
        #: The wrapped synchronous store.
        self.store = store
        self._limiter = trio.CapacityLimiter(1)

    def __repr__(self) -> str:
        return f"AsyncStore({self.store!r})"

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def migrate(self) -> None:
        await self._call(self.store.migrate)

    async def close(self) -> None:
        await self._call(self.store.close)

    # pipelines and jobs

    async def set_pipeline(self, name: str, config: dict[str, Any], jobs: list[JobConfig]) -> Pipeline:
        return await self._call(self.store.set_pipeline, name, config, jobs)

    async def get_pipeline(self, name: str) -> Pipeline:
        return await self._call(self.store.get_pipeline, name)

    async def list_pipelines(self) -> list[Pipeline]:
        return await self._call(self.store.list_pipelines)

    async def delete_pipeline(self, name: str) -> None:
        await self._call(self.store.delete_pipeline, name)

    async def list_jobs(self, pipeline: str) -> list[Job]:
        return await self._call(self.store.list_jobs, pipeline)

    async def get_job(self, pipeline: str, job: str) -> Job:
        return await self._call(self.store.get_job, pipeline, job)

    async def list_all_jobs(self, pipeline: str | None = None) -> list[JobSummary]:
        return await self._call(self.store.list_all_jobs, pipeline)

    async def jobs_due(self, now: float) -> list[Job]:
        return await self._call(self.store.jobs_due, now)

    async def mark_triggered(self, pipeline: str, job: str, at: float) -> None:
        await self._call(self.store.mark_triggered, pipeline, job, at)

    async def trigger_due_job(self, pipeline: str, job: str, now: float) -> Build | None:
        return await self._call(self.store.trigger_due_job, pipeline, job, now)

    # builds

    async def create_build(self, pipeline: str, job: str, trigger: str, now: float) -> Build:
        return await self._call(self.store.create_build, pipeline, job, trigger, now)

    async def get_build(self, build_id: int) -> Build:
        return await self._call(self.store.get_build, build_id)

    async def list_builds(self, limit: int = 100, pipeline: str | None = None, job: str | None = None) -> list[Build]:
        return await self._call(self.store.list_builds, limit, pipeline, job)

    async def claim_pending_build(self, worker: str, now: float) -> Build | None:
        return await self._call(self.store.claim_pending_build, worker, now)

    async def end_build(self, build_id: int, status: BuildStatus, now: float, *,
                        events: Sequence[tuple[str, dict[str, Any]]] = (), worker: str | None = None) -> BuildEnd:
        return await self._call(self.store.end_build, build_id, status, now, events=events, worker=worker)

    async def finish_build(self, build_id: int, status: BuildStatus, now: float) -> Build:
        return await self._call(self.store.finish_build, build_id, status, now)

    async def list_running_builds(self) -> list[Build]:
        return await self._call(self.store.list_running_builds)

    async def delete_builds_finished_before(self, cutoff: float, *, keep_unshipped: bool = False) -> int:
        return await self._call(self.store.delete_builds_finished_before, cutoff, keep_unshipped=keep_unshipped)

    async def list_unshipped_builds(self, limit: int) -> list[Build]:
        return await self._call(self.store.list_unshipped_builds, limit)

    async def mark_build_shipped(self, build_id: int, now: float) -> None:
        await self._call(self.store.mark_build_shipped, build_id, now)

    # build events

    async def append_event(self, build_id: int, type: str, payload: dict[str, Any], now: float) -> BuildEvent:
        return await self._call(self.store.append_event, build_id, type, payload, now)

    async def list_events(self, build_id: int, after_seq: int = 0, limit: int | None = None) -> list[BuildEvent]:
        return await self._call(self.store.list_events, build_id, after_seq, limit)

    async def event_pages(self, build_id: int, after_seq: int = 0, page: int = 100) -> AsyncIterator[list[BuildEvent]]:
        """The build's events after ``after_seq``, ``page`` at a time: a reader holds one page, never the whole output."""
        while True:
            events = await self.list_events(build_id, after_seq, page)
            if events:
                yield events
            if len(events) < page:
                return
            after_seq = events[-1].seq

    async def output_size(self, build_id: int, marker_type: str) -> tuple[int, bool]:
        return await self._call(self.store.output_size, build_id, marker_type)

    async def append_worker_events(self, build_id: int, worker: str, batch_seq: int,
                                   events: Sequence[tuple[str, dict[str, Any]]], now: float) -> EventBatch:
        return await self._call(self.store.append_worker_events, build_id, worker, batch_seq, events, now)

    # workers

    async def register_worker(self, name: str, platform: str, tags: list[str], now: float) -> Worker:
        return await self._call(self.store.register_worker, name, platform, tags, now)

    async def register_worker_credential(self, name: str, platform: str, tags: list[str], now: float, *,
                                         new_hash: str, presented_hash: str | None) -> tuple[Worker, bool]:
        return await self._call(self.store.register_worker_credential, name, platform, tags, now,
                                new_hash=new_hash, presented_hash=presented_hash)

    async def worker_for_credential(self, credential_hash: str) -> Worker:
        return await self._call(self.store.worker_for_credential, credential_hash)

    async def heartbeat_worker(self, name: str, now: float, active_builds: int) -> Worker:
        return await self._call(self.store.heartbeat_worker, name, now, active_builds)

    async def list_workers(self) -> list[Worker]:
        return await self._call(self.store.list_workers)

    async def delete_workers_stalled_before(self, cutoff: float) -> list[str]:
        return await self._call(self.store.delete_workers_stalled_before, cutoff)

    # components

    async def register_component(self, component: Component) -> None:
        await self._call(self.store.register_component, component)

    async def heartbeat_component(self, name: str, now: float, last_run_at: float | None) -> None:
        await self._call(self.store.heartbeat_component, name, now, last_run_at)

    async def list_components(self) -> list[Component]:
        return await self._call(self.store.list_components)

    async def get_component(self, name: str) -> Component:
        return await self._call(self.store.get_component, name)

    async def set_component_paused(self, name: str, paused: bool) -> Component:
        return await self._call(self.store.set_component_paused, name, paused)
