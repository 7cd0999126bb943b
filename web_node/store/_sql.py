"""What both SQL backends share: every query, and rows turned into records.

A backend supplies :meth:`SqlStore._run`: run a function inside one short
transaction on its connection, retrying where that is safe, and turn driver
errors into :class:`~web_node.errors.StoreError`. The queries are written
once, with ``?`` placeholders, in SQL that SQLite (3.35+) and PostgreSQL both
accept, so the two backends cannot drift apart; the two places where one SQL
text cannot serve both (the claim lock, the plan of list_all_jobs) are class
attributes a backend overrides.
"""

from __future__ import annotations

import functools
import hmac
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Protocol, Self, TypeVar, cast

from ..errors import Conflict, NotFound, StoreError
from ._interface import (
    FINISHED_STATUSES,
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
    StepConfig,
    Worker,
)
from ._migrations import LATEST_VERSION, MIGRATIONS, SCHEMA_VERSION_TABLE

T = TypeVar("T")

Row = tuple[Any, ...]

# Retention deletes this many builds per transaction, so that other writers
# (SQLite has one write lock for the whole file) get a turn in between.
RETENTION_BATCH = 500


class Tx(Protocol):
    """One open transaction, as the shared queries see it."""

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Run a statement that returns rows (SELECT, ... RETURNING) and fetch them all."""
        ...

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run a statement; return the number of rows it changed."""
        ...

    def execute_many(self, sql: str, params: Iterable[Sequence[object]]) -> None: ...


_PIPELINE_COLUMNS = "name, config, created_at, updated_at"
JOB_COLUMNS = "pipeline, name, steps, trigger_every_s, timeout_s, last_triggered_at"
BUILD_COLUMNS = (
    "id, pipeline, job, status, created_at, start_time, end_time, worker, triggered_by, timeout_s, steps"
)
_EVENT_COLUMNS = "build_id, seq, type, payload, created_at"
_WORKER_COLUMNS = "name, registered_at, heartbeat_at, platform, tags, active_builds"
_COMPONENT_COLUMNS = (
    "name, member_group, host, pid, started_at, heartbeat_at, interval_s, last_run_at, paused"
)
_UNFINISHED = "('pending', 'started')"


def prefixed(alias: str, columns: str) -> str:
    """``"a, b"`` -> ``"t.a, t.b"``."""
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _steps_to_json(steps: Iterable[StepConfig]) -> str:
    return json.dumps([{"run": step.run} for step in steps])


# Builds of one job share the same steps text: parse each text once. The
# result is an immutable tuple of frozen records, so sharing it is safe.
@functools.lru_cache(maxsize=1024)
def _steps_from_json(text: str) -> tuple[StepConfig, ...]:
    return tuple(StepConfig(**step) for step in json.loads(text))


def _pipeline(row: Row) -> Pipeline:
    return Pipeline(name=row[0], config=json.loads(row[1]), created_at=float(row[2]), updated_at=float(row[3]))


def _job(row: Row) -> Job:
    return Job(
        pipeline=row[0],
        name=row[1],
        config=JobConfig(
            name=row[1],
            steps=_steps_from_json(row[2]),
            trigger_every_s=_float_or_none(row[3]),
            timeout_s=float(row[4]),
        ),
        last_triggered_at=_float_or_none(row[5]),
    )


def _build(row: Row) -> Build:
    return Build(
        id=int(row[0]),
        pipeline=row[1],
        job=row[2],
        status=cast(BuildStatus, row[3]),
        created_at=float(row[4]),
        start_time=_float_or_none(row[5]),
        end_time=_float_or_none(row[6]),
        worker=row[7],
        trigger=row[8],
        timeout_s=float(row[9]),
        steps=_steps_from_json(row[10]),
    )


def _event(row: Row) -> BuildEvent:
    return BuildEvent(
        build_id=int(row[0]), seq=int(row[1]), type=row[2], payload=json.loads(row[3]), time=float(row[4])
    )


def _worker(row: Row) -> Worker:
    return Worker(
        name=row[0],
        registered_at=float(row[1]),
        heartbeat_at=float(row[2]),
        platform=row[3],
        tags=tuple(json.loads(row[4])),
        active_builds=int(row[5]),
    )


def _component(row: Row) -> Component:
    return Component(
        name=row[0],
        group=row[1],
        host=row[2],
        pid=int(row[3]),
        started_at=float(row[4]),
        heartbeat_at=float(row[5]),
        interval_s=_float_or_none(row[6]),
        last_run_at=_float_or_none(row[7]),
        paused=bool(row[8]),  # SQLite hands booleans back as 0/1
    )


def _insert_events(tx: Tx, build_id: int, last_seq: int, events: Sequence[tuple[str, str]], now: float) -> None:
    """Insert events (type, payload JSON) numbered up to ``last_seq``, which the caller already reserved
    on the build row (``last_seq = last_seq + len(events)``)."""
    first = last_seq - len(events) + 1
    tx.execute_many(
        f"INSERT INTO build_events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
        [(build_id, first + i, type_, payload, now) for i, (type_, payload) in enumerate(events)],
    )


def _not_your_build(build: Build, worker: str) -> Conflict:
    return Conflict(
        f"build {build.id} is run by worker {build.worker or '(none: still pending)'}, not by {worker}; "
        "a worker may only log to and finish the builds it claimed",
        backend=None,
    )


class SqlStore(ABC):
    """The :class:`~web_node.store.Store` operations, for any backend that can run a :class:`Tx`."""

    #: "sqlite" or "postgresql": which dialect the migrations are rendered in.
    backend: ClassVar[str]

    #: The part of the claim query that picks the build. PostgreSQL appends
    #: ``FOR UPDATE SKIP LOCKED``; SQLite needs nothing, its write transaction
    #: already excludes every other writer.
    _claim_lock: ClassVar[str] = ""

    #: Appended to a SELECT of one row that the transaction will then write:
    #: PostgreSQL ``FOR UPDATE``; SQLite's write transaction already holds the file.
    _row_lock: ClassVar[str] = ""

    #: Every job with its latest build (the build columns first). Whatever the
    #: dialect, the plan must find each job's latest build with one seek in
    #: builds_by_job and fetch it by primary key, so that the cost grows with
    #: the number of jobs and not of builds. SQLite plans this form that way
    #: (MAX over an index prefix, then a rowid lookup); PostgreSQL overrides it.
    _list_all_jobs_sql: ClassVar[str] = (
        f"SELECT {prefixed('b', BUILD_COLUMNS)}, {prefixed('j', JOB_COLUMNS)} FROM jobs j "
        "LEFT JOIN builds b ON b.id = ("
        "  SELECT MAX(l.id) FROM builds l WHERE l.pipeline = j.pipeline AND l.job = j.name"
        ")"
    )

    @abstractmethod
    def _run(self, fn: Callable[[Tx], T], *, write: bool) -> T:
        """Run ``fn`` in one transaction and commit it; raise StoreError on database failure."""

    def _lock_schema(self, tx: Tx) -> None:
        """Serialize concurrent migrate() calls where the transaction alone does not.

        Nothing to do by default: SQLite's BEGIN IMMEDIATE already excludes
        every other writer. PostgreSQL takes an advisory lock.
        """
        return None

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- schema ---------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema up to date; a no-op when it already is. Safe to call concurrently."""

        def apply(tx: Tx) -> None:
            self._lock_schema(tx)
            tx.execute(SCHEMA_VERSION_TABLE)
            current = int(tx.rows("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0])
            if current > LATEST_VERSION:
                raise StoreError(
                    f"the {self.backend} database has schema version {current}, newer than the "
                    f"{LATEST_VERSION} this web-node knows; upgrade web-node or point node.database "
                    "at another database",
                    backend=self.backend,
                )
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                for statement in migration.render(self.backend):
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )

        self._run(apply, write=True)

    def schema_version(self) -> int:
        """The number of the last migration applied (0 for an empty database)."""

        def read(tx: Tx) -> int:
            # A write only on a database never migrated, where the table is missing.
            self._lock_schema(tx)
            tx.execute(SCHEMA_VERSION_TABLE)
            return int(tx.rows("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0])

        return self._run(read, write=True)

    # -- pipelines and jobs ---------------------------------------------------

    def set_pipeline(self, name: str, config: dict[str, Any], jobs: list[JobConfig]) -> Pipeline:
        """Create or replace a pipeline and its jobs in one transaction.

        Jobs that stay keep their ``last_triggered_at``; jobs no longer listed
        are removed, their builds are kept (history of a removed job).
        """
        names = [job.name for job in jobs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pipeline {name} lists job {duplicates[0]} more than once; job names must be unique")
        config_json = json.dumps(config)
        now = time.time()

        def write(tx: Tx) -> Pipeline:
            row = tx.rows(
                f"INSERT INTO pipelines ({_PIPELINE_COLUMNS}) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at "
                f"RETURNING {_PIPELINE_COLUMNS}",
                (name, config_json, now, now),
            )[0]
            existing = {r[0] for r in tx.rows("SELECT name FROM jobs WHERE pipeline = ?", (name,))}
            tx.execute_many(
                "DELETE FROM jobs WHERE pipeline = ? AND name = ?",
                [(name, gone) for gone in sorted(existing - set(names))],
            )
            tx.execute_many(
                "INSERT INTO jobs (pipeline, name, position, steps, trigger_every_s, timeout_s) "
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (pipeline, name) DO UPDATE SET position = excluded.position, "
                "steps = excluded.steps, trigger_every_s = excluded.trigger_every_s, "
                "timeout_s = excluded.timeout_s",
                [
                    (name, job.name, position, _steps_to_json(job.steps), job.trigger_every_s, job.timeout_s)
                    for position, job in enumerate(jobs)
                ],
            )
            return _pipeline(row)

        return self._run(write, write=True)

    def get_pipeline(self, name: str) -> Pipeline:
        def read(tx: Tx) -> Pipeline:
            rows = tx.rows(f"SELECT {_PIPELINE_COLUMNS} FROM pipelines WHERE name = ?", (name,))
            if not rows:
                raise NotFound("pipeline", name)
            return _pipeline(rows[0])

        return self._run(read, write=False)

    def list_pipelines(self) -> list[Pipeline]:
        def read(tx: Tx) -> list[Pipeline]:
            return [_pipeline(r) for r in tx.rows(f"SELECT {_PIPELINE_COLUMNS} FROM pipelines ORDER BY name")]

        return self._run(read, write=False)

    def delete_pipeline(self, name: str) -> None:
        """Delete a pipeline with its jobs, builds and their events (foreign keys cascade)."""

        def write(tx: Tx) -> None:
            if tx.execute("DELETE FROM pipelines WHERE name = ?", (name,)) == 0:
                raise NotFound("pipeline", name)

        self._run(write, write=True)

    @staticmethod
    def _require_pipeline(tx: Tx, pipeline: str) -> None:
        if not tx.rows("SELECT 1 FROM pipelines WHERE name = ?", (pipeline,)):
            raise NotFound("pipeline", pipeline)

    def _job_not_found(self, tx: Tx, pipeline: str, job: str) -> NotFound:
        self._require_pipeline(tx, pipeline)
        return NotFound("job", f"{pipeline}/{job}")

    def list_jobs(self, pipeline: str) -> list[Job]:
        def read(tx: Tx) -> list[Job]:
            rows = tx.rows(f"SELECT {JOB_COLUMNS} FROM jobs WHERE pipeline = ? ORDER BY position", (pipeline,))
            if not rows:
                self._require_pipeline(tx, pipeline)
            return [_job(r) for r in rows]

        return self._run(read, write=False)

    def get_job(self, pipeline: str, job: str) -> Job:
        def read(tx: Tx) -> Job:
            rows = tx.rows(f"SELECT {JOB_COLUMNS} FROM jobs WHERE pipeline = ? AND name = ?", (pipeline, job))
            if not rows:
                raise self._job_not_found(tx, pipeline, job)
            return _job(rows[0])

        return self._run(read, write=False)

    def list_all_jobs(self, pipeline: str | None = None) -> list[JobSummary]:
        """Every job (or every job of ``pipeline``), ordered by pipeline name then
        position, each with its latest build."""
        n_build = len(BUILD_COLUMNS.split(","))
        where, params = (" WHERE j.pipeline = ?", (pipeline,)) if pipeline is not None else ("", ())

        def read(tx: Tx) -> list[JobSummary]:
            return [
                JobSummary(job=_job(r[n_build:]), latest_build=None if r[0] is None else _build(r[:n_build]))
                for r in tx.rows(self._list_all_jobs_sql + where + " ORDER BY j.pipeline, j.position", params)
            ]

        return self._run(read, write=False)

    def jobs_due(self, now: float) -> list[Job]:
        """Jobs with ``trigger_every_s`` whose interval has elapsed since their last trigger, or never triggered."""

        def read(tx: Tx) -> list[Job]:
            rows = tx.rows(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE trigger_every_s IS NOT NULL "
                "AND (last_triggered_at IS NULL OR last_triggered_at + trigger_every_s <= ?) "
                "ORDER BY pipeline, position",
                (now,),
            )
            return [_job(r) for r in rows]

        return self._run(read, write=False)

    def mark_triggered(self, pipeline: str, job: str, at: float) -> None:
        def write(tx: Tx) -> None:
            changed = tx.execute(
                "UPDATE jobs SET last_triggered_at = ? WHERE pipeline = ? AND name = ?", (at, pipeline, job)
            )
            if changed == 0:
                raise self._job_not_found(tx, pipeline, job)

        self._run(write, write=True)

    def trigger_due_job(self, pipeline: str, job: str, now: float) -> Build | None:
        """If the job is due at ``now``, mark it triggered and create its build (trigger ``scheduler``), atomically.

        None, with nothing changed, when the job is not due (any more), is gone,
        or its newest build is still pending (no piling up behind a slow worker).
        Of several callers racing for one due job, in any processes, exactly one
        gets the build: the UPDATE is a compare-and-set on ``last_triggered_at``,
        and on PostgreSQL its row lock makes a concurrent caller re-check the
        condition after the winner commits, and find the job no longer due.
        """

        def write(tx: Tx) -> Build | None:
            # Checked before the UPDATE, so a job waiting behind a pending build
            # keeps its last_triggered_at and stays due.
            latest = tx.rows(
                "SELECT status FROM builds WHERE pipeline = ? AND job = ? ORDER BY id DESC LIMIT 1", (pipeline, job)
            )
            if latest and latest[0][0] == "pending":
                return None
            claimed = tx.execute(
                "UPDATE jobs SET last_triggered_at = ? WHERE pipeline = ? AND name = ? "
                "AND trigger_every_s IS NOT NULL "
                "AND (last_triggered_at IS NULL OR (last_triggered_at + trigger_every_s <= ? AND last_triggered_at < ?))",
                # "< now" too: with an interval of 0 (refused by the pipeline parser, not by the store)
                # a second caller at the same instant must still lose.
                (now, pipeline, job, now, now),
            )
            if claimed == 0:
                return None
            return self._insert_build(tx, pipeline, job, "scheduler", now)

        return self._run(write, write=True)

    # -- builds -----------------------------------------------------------------

    def create_build(self, pipeline: str, job: str, trigger: str, now: float) -> Build:
        """A new pending build of the job, with the job's current steps and timeout copied into it."""

        def write(tx: Tx) -> Build:
            build = self._insert_build(tx, pipeline, job, trigger, now)
            if build is None:
                raise self._job_not_found(tx, pipeline, job)
            return build

        return self._run(write, write=True)

    @staticmethod
    def _insert_build(tx: Tx, pipeline: str, job: str, trigger: str, now: float) -> Build | None:
        """Insert a pending build of the job (its steps and timeout copied); None if there is no such job."""
        rows = tx.rows(
            "INSERT INTO builds (pipeline, job, status, created_at, triggered_by, timeout_s, steps) "
            "SELECT pipeline, name, 'pending', CAST(? AS DOUBLE PRECISION), CAST(? AS TEXT), timeout_s, steps "
            "FROM jobs WHERE pipeline = ? AND name = ? "
            f"RETURNING {BUILD_COLUMNS}",
            (now, trigger, pipeline, job),
        )
        return _build(rows[0]) if rows else None

    def get_build(self, build_id: int) -> Build:
        def read(tx: Tx) -> Build:
            rows = tx.rows(f"SELECT {BUILD_COLUMNS} FROM builds WHERE id = ?", (build_id,))
            if not rows:
                raise NotFound("build", build_id)
            return _build(rows[0])

        return self._run(read, write=False)

    def list_builds(self, limit: int = 100, pipeline: str | None = None, job: str | None = None) -> list[Build]:
        """The newest builds first, optionally of one pipeline or one job."""
        where: list[str] = []
        params: list[object] = []
        if pipeline is not None:
            where.append("pipeline = ?")
            params.append(pipeline)
        if job is not None:
            where.append("job = ?")
            params.append(job)
        sql = f"SELECT {BUILD_COLUMNS} FROM builds"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(max(0, int(limit)))

        def read(tx: Tx) -> list[Build]:
            return [_build(r) for r in tx.rows(sql, params)]

        return self._run(read, write=False)

    def claim_pending_build(self, worker: str, now: float) -> Build | None:
        """Atomically turn the oldest pending build into a build started by ``worker``.

        Two callers, in any processes, never get the same build.
        """
        sql = (
            "UPDATE builds SET status = 'started', worker = ?, start_time = ? "
            "WHERE status = 'pending' AND id = ("
            f"  SELECT id FROM builds WHERE status = 'pending' ORDER BY id LIMIT 1{self._claim_lock}"
            f") RETURNING {BUILD_COLUMNS}"
        )

        def write(tx: Tx) -> Build | None:
            rows = tx.rows(sql, (worker, now))
            return _build(rows[0]) if rows else None

        return self._run(write, write=True)

    def end_build(self, build_id: int, status: BuildStatus, now: float, *,
                  events: Sequence[tuple[str, dict[str, Any]]] = (), worker: str | None = None) -> BuildEnd:
        """End an unfinished build: ``events``, then its ``finish`` event, then the final status, in one transaction.

        Invariant: a finished build has exactly one ``finish`` event, and it
        names the build's status. Of several callers racing to end one build
        (an abort, the worker's result, the build-tracker), exactly one wins:
        the UPDATE is a compare-and-set on the status, and on PostgreSQL its row
        lock makes a loser re-check the condition after the winner commits,
        find the build finished and write nothing. The events take their
        numbers from the same row, so they follow every event before them.

        ``worker`` set: the build must be run by that worker, else
        :class:`~web_node.errors.Conflict` and nothing written.
        """
        if status not in FINISHED_STATUSES:
            raise ValueError(
                f"end_build needs a final status ({', '.join(sorted(FINISHED_STATUSES))}), not {status!r}"
            )
        written = [(type_, json.dumps(payload)) for type_, payload in events]
        written.append(("finish", json.dumps({"status": status})))

        def write(tx: Tx) -> BuildEnd:
            rows = tx.rows(
                f"UPDATE builds SET status = ?, end_time = ?, last_seq = last_seq + ? "
                f"WHERE id = ? AND status IN {_UNFINISHED} AND (CAST(? AS TEXT) IS NULL OR worker = ?) "
                f"RETURNING last_seq, {BUILD_COLUMNS}",
                (status, now, len(written), build_id, worker, worker),
            )
            if not rows:
                current = self._build_or_not_found(tx, build_id)
                if worker is not None and current.worker != worker:
                    raise _not_your_build(current, worker)
                return BuildEnd(current, False)
            _insert_events(tx, build_id, int(rows[0][0]), written, now)
            return BuildEnd(_build(rows[0][1:]), True)

        return self._run(write, write=True)

    def finish_build(self, build_id: int, status: BuildStatus, now: float) -> Build:
        """:meth:`end_build` without extra events: the build as it is after the call."""
        return self.end_build(build_id, status, now).build

    @staticmethod
    def _build_or_not_found(tx: Tx, build_id: int) -> Build:
        rows = tx.rows(f"SELECT {BUILD_COLUMNS} FROM builds WHERE id = ?", (build_id,))
        if not rows:
            raise NotFound("build", build_id)
        return _build(rows[0])

    def list_running_builds(self) -> list[Build]:
        def read(tx: Tx) -> list[Build]:
            return [
                _build(r) for r in tx.rows(f"SELECT {BUILD_COLUMNS} FROM builds WHERE status = 'started' ORDER BY id")
            ]

        return self._run(read, write=False)

    def delete_builds_finished_before(self, cutoff: float, *, keep_unshipped: bool = False) -> int:
        """Delete finished builds whose end time is before ``cutoff``, with their events; return how many.

        ``keep_unshipped``: builds whose log syslog-drainer has not shipped yet
        are kept (gc sets it while a drainer is configured, so that retention
        never loses a log the operator wants in syslog).
        Deletes in batches of :data:`RETENTION_BATCH`, one transaction each.
        """
        # end_time is only ever set together with a final status, so the
        # status test is belt and braces; it keeps a running build safe even
        # if some future code path sets end_time early.
        shipped = " AND shipped_at IS NOT NULL" if keep_unshipped else ""
        sql = (
            "DELETE FROM builds WHERE id IN ("
            f"  SELECT id FROM builds WHERE end_time < ? AND status NOT IN {_UNFINISHED}{shipped} "
            f"LIMIT {RETENTION_BATCH}"
            ")"
        )
        total = 0
        while True:
            deleted = self._run(lambda tx: tx.execute(sql, (cutoff,)), write=True)
            total += deleted
            if deleted < RETENTION_BATCH:
                return total

    def list_unshipped_builds(self, limit: int) -> list[Build]:
        """Finished builds not yet marked shipped to syslog, oldest first, at most ``limit``."""

        def read(tx: Tx) -> list[Build]:
            rows = tx.rows(
                f"SELECT {BUILD_COLUMNS} FROM builds WHERE shipped_at IS NULL AND status NOT IN {_UNFINISHED} "
                "ORDER BY id LIMIT ?",
                (max(0, int(limit)),),
            )
            return [_build(r) for r in rows]

        return self._run(read, write=False)

    def mark_build_shipped(self, build_id: int, now: float) -> None:
        """Record that the build's log reached syslog; a deleted build is not an error (nothing to keep)."""
        self._run(
            lambda tx: tx.execute("UPDATE builds SET shipped_at = ? WHERE id = ?", (now, build_id)), write=True
        )

    # -- build events -----------------------------------------------------------

    def append_event(self, build_id: int, type: str, payload: dict[str, Any], now: float) -> BuildEvent:
        """Append an event; its ``seq`` is one more than the build's previous event."""
        payload_json = json.dumps(payload)

        def write(tx: Tx) -> BuildEvent:
            # The counter lives on the build row: the UPDATE takes that row's
            # lock, so concurrent appenders to one build get distinct numbers
            # on PostgreSQL too (SQLite already serializes all writers).
            rows = tx.rows("UPDATE builds SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq", (build_id,))
            if not rows:
                raise NotFound("build", build_id)
            seq = int(rows[0][0])
            tx.execute(
                f"INSERT INTO build_events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (build_id, seq, type, payload_json, now),
            )
            return BuildEvent(build_id=build_id, seq=seq, type=type, payload=json.loads(payload_json), time=now)

        return self._run(write, write=True)

    def append_worker_events(self, build_id: int, worker: str, batch_seq: int,
                             events: Sequence[tuple[str, dict[str, Any]]], now: float) -> EventBatch:
        """Store one numbered batch of a worker's events, once, in one transaction.

        Invariant: ``builds.batch_seq`` is the number of the last batch stored
        for the build, so a batch whose number is not above it was stored
        before (the worker re-sent it after a lost answer or a gateway
        restart) and is answered as a duplicate without storing anything. A
        finished build takes no more events; a build run by another worker is
        :class:`~web_node.errors.Conflict`.
        """
        if batch_seq < 1:
            raise ValueError(f"batch_seq must be 1 or more, not {batch_seq}")
        written = [(type_, json.dumps(payload)) for type_, payload in events]

        def write(tx: Tx) -> EventBatch:
            rows = tx.rows(
                "UPDATE builds SET batch_seq = ?, last_seq = last_seq + ? "
                f"WHERE id = ? AND worker = ? AND batch_seq < ? AND status IN {_UNFINISHED} "
                "RETURNING last_seq, status",
                (batch_seq, len(written), build_id, worker, batch_seq),
            )
            if rows:
                _insert_events(tx, build_id, int(rows[0][0]), written, now)
                return EventBatch(accepted=len(written), duplicate=False, status=cast(BuildStatus, rows[0][1]))
            current = self._build_or_not_found(tx, build_id)
            if current.worker != worker:
                raise _not_your_build(current, worker)
            last = int(tx.rows("SELECT batch_seq FROM builds WHERE id = ?", (build_id,))[0][0])
            return EventBatch(accepted=0, duplicate=batch_seq <= last, status=current.status)

        return self._run(write, write=True)

    def list_events(self, build_id: int, after_seq: int = 0, limit: int | None = None) -> list[BuildEvent]:
        """The build's events with ``seq > after_seq``, in order; at most ``limit`` of them (a page).

        A build's output may be megabytes: readers that run in a server page
        through it (``limit``, then ``after_seq`` = the last seq read)."""

        def read(tx: Tx) -> list[BuildEvent]:
            sql = f"SELECT {_EVENT_COLUMNS} FROM build_events WHERE build_id = ? AND seq > ? ORDER BY seq"
            params: tuple[Any, ...] = (build_id, after_seq)
            if limit is not None:
                sql, params = sql + " LIMIT ?", (*params, max(1, limit))
            rows = tx.rows(sql, params)
            if not rows and not tx.rows("SELECT 1 FROM builds WHERE id = ?", (build_id,)):
                raise NotFound("build", build_id)
            return [_event(r) for r in rows]

        return self._run(read, write=False)

    def output_size(self, build_id: int, marker_type: str) -> tuple[int, bool]:
        """How much the build's events hold (characters of their stored JSON payloads; json.dumps writes
        ASCII, so bytes), and whether an event of ``marker_type`` is among them. Read without loading them."""

        def read(tx: Tx) -> tuple[int, bool]:
            rows = tx.rows(
                "SELECT COALESCE(SUM(LENGTH(payload)), 0), COUNT(CASE WHEN type = ? THEN 1 END) "
                "FROM build_events WHERE build_id = ?",
                (marker_type, build_id),
            )
            return int(rows[0][0]), int(rows[0][1]) > 0

        return self._run(read, write=False)

    # -- workers ----------------------------------------------------------------

    def register_worker(self, name: str, platform: str, tags: list[str], now: float) -> Worker:
        """Create or re-register a worker that has no credential: a re-registration starts a new session
        (times reset, 0 builds). A name whose worker holds a credential is :class:`~web_node.errors.Conflict`."""
        return self._register(name, platform, tags, now, None, None)[0]

    def register_worker_credential(self, name: str, platform: str, tags: list[str], now: float, *,
                                   new_hash: str, presented_hash: str | None) -> tuple[Worker, bool]:
        """Register a worker that authenticates with its own credential (the gateway keeps only its hash).

        A free name (or one registered without a credential) is stored with
        ``new_hash``: ``(worker, True)``, the caller hands the new credential
        out. A name whose credential hash equals ``presented_hash`` is the same
        worker restarting: a new session, its credential kept, ``(worker,
        False)``. Any other taken name is :class:`~web_node.errors.Conflict`:
        one name, one worker.
        """
        return self._register(name, platform, tags, now, new_hash, presented_hash)

    def _register(self, name: str, platform: str, tags: list[str], now: float,
                  new_hash: str | None, presented_hash: str | None) -> tuple[Worker, bool]:
        tags_json = json.dumps(list(tags))

        def write(tx: Tx) -> tuple[Worker, bool]:
            # The row lock (PostgreSQL) or the write lock (SQLite) keeps a second
            # registration of the name waiting until this one has decided.
            held = tx.rows(f"SELECT credential_hash FROM workers WHERE name = ?{self._row_lock}", (name,))
            stored = held[0][0] if held else None
            keep = stored is not None and presented_hash is not None and hmac.compare_digest(stored, presented_hash)
            if stored is not None and not keep:
                raise Conflict(
                    f"worker name {name} is taken by a registered worker with another credential: start that "
                    "worker with its credential file (worker-credential in its work dir), give this one another "
                    "--name, or wait until gc removes the old worker after worker_retention without heartbeats",
                    backend=self.backend,
                )
            credential = stored if keep else new_hash
            params = (now, now, platform, tags_json, credential, name)
            if held:
                # The row is ours until COMMIT (FOR UPDATE / SQLite's write lock).
                rows = tx.rows(
                    "UPDATE workers SET registered_at = ?, heartbeat_at = ?, platform = ?, tags = ?, "
                    f"active_builds = 0, credential_hash = ? WHERE name = ? RETURNING {_WORKER_COLUMNS}",
                    params,
                )
            else:
                # A new name: of two registrations racing for it, the second finds the row and loses.
                rows = tx.rows(
                    f"INSERT INTO workers (registered_at, heartbeat_at, platform, tags, active_builds, "
                    f"credential_hash, name) VALUES (?, ?, ?, ?, 0, ?, ?) "
                    f"ON CONFLICT (name) DO NOTHING RETURNING {_WORKER_COLUMNS}",
                    params,
                )
            if not rows:
                raise Conflict(
                    f"worker name {name} was registered by another worker at the same moment; give this one "
                    "another --name", backend=self.backend,
                )
            row = rows[0]
            return _worker(row), not keep and new_hash is not None

        return self._run(write, write=True)

    def worker_for_credential(self, credential_hash: str) -> Worker:
        """The worker holding the credential with this hash; NotFound when none does (pruned, or never issued)."""

        def read(tx: Tx) -> Worker:
            rows = tx.rows(f"SELECT {_WORKER_COLUMNS} FROM workers WHERE credential_hash = ?", (credential_hash,))
            if not rows:
                raise NotFound("worker with the credential", "presented")
            return _worker(rows[0])

        return self._run(read, write=False)

    def heartbeat_worker(self, name: str, now: float, active_builds: int) -> Worker:
        def write(tx: Tx) -> Worker:
            rows = tx.rows(
                f"UPDATE workers SET heartbeat_at = ?, active_builds = ? WHERE name = ? RETURNING {_WORKER_COLUMNS}",
                (now, active_builds, name),
            )
            if not rows:
                raise NotFound("worker", name)
            return _worker(rows[0])

        return self._run(write, write=True)

    def list_workers(self) -> list[Worker]:
        def read(tx: Tx) -> list[Worker]:
            return [_worker(r) for r in tx.rows(f"SELECT {_WORKER_COLUMNS} FROM workers ORDER BY name")]

        return self._run(read, write=False)

    def delete_workers_stalled_before(self, cutoff: float) -> list[str]:
        """Delete workers whose last heartbeat is before ``cutoff``; return their names, sorted."""

        def write(tx: Tx) -> list[str]:
            return sorted(r[0] for r in tx.rows("DELETE FROM workers WHERE heartbeat_at < ? RETURNING name", (cutoff,)))

        return self._run(write, write=True)

    # -- components -------------------------------------------------------------

    def register_component(self, component: Component) -> None:
        """Insert or update a component by name. An existing row keeps its ``paused``
        flag (an operator's pause outlives restarts) and its ``last_run_at`` when
        the new record has none."""
        c = component

        def write(tx: Tx) -> None:
            tx.execute(
                f"INSERT INTO components ({_COMPONENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET member_group = excluded.member_group, host = excluded.host, "
                "pid = excluded.pid, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, "
                "interval_s = excluded.interval_s, "
                "last_run_at = COALESCE(excluded.last_run_at, components.last_run_at)",
                (c.name, c.group, c.host, c.pid, c.started_at, c.heartbeat_at, c.interval_s, c.last_run_at, c.paused),
            )

        self._run(write, write=True)

    def heartbeat_component(self, name: str, now: float, last_run_at: float | None) -> None:
        """Record that the component is alive; ``last_run_at=None`` keeps the stored value."""

        def write(tx: Tx) -> None:
            changed = tx.execute(
                "UPDATE components SET heartbeat_at = ?, "
                "last_run_at = COALESCE(CAST(? AS DOUBLE PRECISION), last_run_at) WHERE name = ?",
                (now, last_run_at, name),
            )
            if changed == 0:
                raise NotFound("component", name)

        self._run(write, write=True)

    def list_components(self) -> list[Component]:
        def read(tx: Tx) -> list[Component]:
            return [_component(r) for r in tx.rows(f"SELECT {_COMPONENT_COLUMNS} FROM components ORDER BY name")]

        return self._run(read, write=False)

    def get_component(self, name: str) -> Component:
        def read(tx: Tx) -> Component:
            rows = tx.rows(f"SELECT {_COMPONENT_COLUMNS} FROM components WHERE name = ?", (name,))
            if not rows:
                raise NotFound("component", name)
            return _component(rows[0])

        return self._run(read, write=False)

    def set_component_paused(self, name: str, paused: bool) -> Component:
        def write(tx: Tx) -> Component:
            rows = tx.rows(
                f"UPDATE components SET paused = ? WHERE name = ? RETURNING {_COMPONENT_COLUMNS}", (paused, name)
            )
            if not rows:
                raise NotFound("component", name)
            return _component(rows[0])

        return self._run(write, write=True)

