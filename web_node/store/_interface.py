"""The store's contract: records and the operations every backend provides.

Two backends implement :class:`Store`: SQLite (the embedded default, one file
in ``data_dir``) and PostgreSQL (several nodes sharing one database). Calls are
synchronous and short; async callers run them through :class:`AsyncStore`,
which moves each call to a worker thread so the trio loop never blocks on I/O.

Times are UNIX seconds as ``float`` (UTC); ``None`` where not yet known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

BuildStatus = Literal["pending", "started", "succeeded", "failed", "errored", "aborted"]
FINISHED_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "errored", "aborted"})


@dataclass(frozen=True)
class StepConfig:
    run: str


@dataclass(frozen=True)
class JobConfig:
    name: str
    steps: tuple[StepConfig, ...]
    trigger_every_s: float | None = None
    timeout_s: float = 600.0


@dataclass(frozen=True)
class Pipeline:
    name: str
    config: dict[str, Any]  # the validated config as the user sent it (JSON-able)
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Job:
    pipeline: str
    name: str
    config: JobConfig
    last_triggered_at: float | None  # when the scheduler last created a build for it


@dataclass(frozen=True)
class Build:
    id: int
    pipeline: str
    job: str
    status: BuildStatus
    created_at: float
    start_time: float | None
    end_time: float | None
    worker: str | None
    trigger: str  # "manual" | "scheduler"
    timeout_s: float
    steps: tuple[StepConfig, ...]  # copied from the job at creation: a build runs what it was created with

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "job": self.job,
            "status": self.status,
            "created_at": self.created_at,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "worker": self.worker,
            "trigger": self.trigger,
        }


@dataclass(frozen=True)
class BuildEvent:
    build_id: int
    seq: int  # 1, 2, 3 ... per build, in order of arrival
    type: str  # "log" | "status" | "finish" | ...
    payload: dict[str, Any]
    time: float

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "type": self.type, "payload": self.payload, "time": self.time}


@dataclass(frozen=True)
class BuildEnd:
    """What :meth:`Store.end_build` did: ``ended`` True when this call ended the build
    (its events, its ``finish`` event and the final status were committed together);
    False when the build had already finished and nothing was written."""

    build: Build
    ended: bool


@dataclass(frozen=True)
class EventBatch:
    """What :meth:`Store.append_worker_events` did with one numbered batch.

    ``accepted``: events stored by this call. ``duplicate``: the batch's number
    was already stored (a re-sent batch), so nothing was stored again.
    ``status``: the build's status after the call; a finished build takes no
    more events (``accepted`` 0), its worker must stop.
    """

    accepted: int
    duplicate: bool
    status: BuildStatus


@dataclass(frozen=True)
class Worker:
    name: str
    registered_at: float
    heartbeat_at: float
    platform: str
    tags: tuple[str, ...] = ()
    active_builds: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "registered_at": self.registered_at,
            "heartbeat_at": self.heartbeat_at,
            "platform": self.platform,
            "tags": list(self.tags),
            "active_builds": self.active_builds,
        }


@dataclass(frozen=True)
class Component:
    name: str  # the member name
    group: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    interval_s: float | None
    last_run_at: float | None
    paused: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "heartbeat_at": self.heartbeat_at,
            "interval_s": self.interval_s,
            "last_run_at": self.last_run_at,
            "paused": self.paused,
        }


@dataclass(frozen=True)
class JobSummary:
    """One row of ListAllJobs: a job and its latest build (None if never built)."""

    job: Job
    latest_build: Build | None = field(default=None)


class Store(Protocol):
    """Every backend. Methods raise :class:`web_node.errors.StoreError` on failure,
    :class:`web_node.errors.NotFound` where a named record does not exist."""

    def migrate(self) -> None: ...
    def close(self) -> None: ...

    # pipelines and jobs: set_pipeline replaces the pipeline's jobs in one transaction
    def set_pipeline(self, name: str, config: dict[str, Any], jobs: list[JobConfig]) -> Pipeline: ...
    def get_pipeline(self, name: str) -> Pipeline: ...
    def list_pipelines(self) -> list[Pipeline]: ...
    def delete_pipeline(self, name: str) -> None: ...  # also its jobs, builds, events
    def list_jobs(self, pipeline: str) -> list[Job]: ...
    def get_job(self, pipeline: str, job: str) -> Job: ...
    def list_all_jobs(self, pipeline: str | None = None) -> list[JobSummary]: ...  # every job (of one pipeline), with its latest build
    def jobs_due(self, now: float) -> list[Job]: ...  # trigger_every_s set and elapsed since last trigger (or never)
    def mark_triggered(self, pipeline: str, job: str, at: float) -> None: ...
    # trigger_due_job: in one transaction, if the job is due and its newest build is not pending, mark it
    # triggered and create a build (trigger "scheduler"); else None, nothing changed. One winner per race.
    def trigger_due_job(self, pipeline: str, job: str, now: float) -> Build | None: ...

    # builds
    def create_build(self, pipeline: str, job: str, trigger: str, now: float) -> Build: ...
    def get_build(self, build_id: int) -> Build: ...
    def list_builds(self, limit: int = 100, pipeline: str | None = None, job: str | None = None) -> list[Build]: ...
    def claim_pending_build(self, worker: str, now: float) -> Build | None: ...  # atomically: oldest pending -> started by worker
    # end_build: in ONE transaction, if the build is unfinished: `events` (e.g. an error), then a finish
    # event {"status": status}, then the final status and end time. Finished already: nothing written.
    # `worker` set: the build must be run by that worker (Conflict otherwise).
    def end_build(self, build_id: int, status: BuildStatus, now: float, *,
                  events: Sequence[tuple[str, dict[str, Any]]] = (), worker: str | None = None) -> BuildEnd: ...
    # finish_build: end_build without extra events; returns the build (unchanged if it had already finished)
    def finish_build(self, build_id: int, status: BuildStatus, now: float) -> Build: ...
    def list_running_builds(self) -> list[Build]: ...  # status started
    # with their events; returns count. keep_unshipped: spare builds syslog-drainer has not shipped yet
    def delete_builds_finished_before(self, cutoff: float, *, keep_unshipped: bool = False) -> int: ...
    # syslog shipping: finished builds not yet marked shipped, oldest first; marking them
    def list_unshipped_builds(self, limit: int) -> list[Build]: ...
    def mark_build_shipped(self, build_id: int, now: float) -> None: ...

    # build events
    def append_event(self, build_id: int, type: str, payload: dict[str, Any], now: float) -> BuildEvent: ...
    # list_events: at most `limit` events (a page); servers always page (see _sql.SqlStore.list_events)
    def list_events(self, build_id: int, after_seq: int = 0, limit: int | None = None) -> list[BuildEvent]: ...
    # output_size: (stored payload bytes of the build's events, whether an event of marker_type exists)
    def output_size(self, build_id: int, marker_type: str) -> tuple[int, bool]: ...
    # append_worker_events: a worker's numbered batch, stored once (batch_seq at most the last one
    # stored: a duplicate, nothing stored), only while the build is unfinished and run by `worker`
    # (Conflict otherwise), in one transaction.
    def append_worker_events(self, build_id: int, worker: str, batch_seq: int,
                             events: Sequence[tuple[str, dict[str, Any]]], now: float) -> EventBatch: ...

    # workers
    # register_worker: a name whose worker holds a credential is refused (Conflict)
    def register_worker(self, name: str, platform: str, tags: list[str], now: float) -> Worker: ...
    # register_worker_credential: a new name (or one without a credential) is stored with `new_hash`,
    # returning (worker, True); a name whose credential hash equals `presented_hash` starts a new
    # session and keeps its credential, (worker, False); any other taken name: Conflict.
    def register_worker_credential(self, name: str, platform: str, tags: list[str], now: float, *,
                                   new_hash: str, presented_hash: str | None) -> tuple[Worker, bool]: ...
    def worker_for_credential(self, credential_hash: str) -> Worker: ...  # NotFound when no worker holds it
    def heartbeat_worker(self, name: str, now: float, active_builds: int) -> Worker: ...
    def list_workers(self) -> list[Worker]: ...
    def delete_workers_stalled_before(self, cutoff: float) -> list[str]: ...

    # components (the service registry of running members)
    def register_component(self, component: Component) -> None: ...  # upsert by name; keeps `paused`
    def heartbeat_component(self, name: str, now: float, last_run_at: float | None) -> None: ...
    def list_components(self) -> list[Component]: ...
    def get_component(self, name: str) -> Component: ...
    def set_component_paused(self, name: str, paused: bool) -> Component: ...
