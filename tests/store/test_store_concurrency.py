"""Several connections, threads and OS processes on one database, for real."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from store_helpers import race

from web_node.errors import StoreError
from web_node.store import Build, JobConfig, StepConfig, Store, open_store
from web_node.store._migrations import LATEST_VERSION
from web_node.store._sql import SqlStore
from web_node.store._sqlite import SqliteStore

T = TypeVar("T")
T0 = 1_700_000_000.0
UNIT = [JobConfig(name="unit", steps=(StepConfig(run="true"),))]


def open_sql(database: str, data_dir: Path) -> SqlStore:
    store = open_store(database, str(data_dir))
    assert isinstance(store, SqlStore)
    return store


def test_claim_is_atomic_across_connections(store: Store, database: str, tmp_path: Path) -> None:
    store.set_pipeline("p", {}, UNIT)
    ids = {store.create_build("p", "unit", "manual", T0).id for _ in range(120)}

    def claim_all(i: int) -> list[Build]:
        claimed = []
        with open_sql(database, tmp_path) as own:
            while (b := own.claim_pending_build(f"w{i}", T0 + 1)) is not None:
                claimed.append(b)
        return claimed

    per_worker = race(4, claim_all)
    got = [b.id for claimed in per_worker for b in claimed]
    assert sorted(got) == sorted(ids)  # each build claimed exactly once
    for i, claimed in enumerate(per_worker):
        assert all(b.worker == f"w{i}" and b.status == "started" for b in claimed)
        assert [b.id for b in claimed] == sorted(b.id for b in claimed)  # oldest first, per worker


def test_concurrent_appends_number_events_without_gaps(store: Store, database: str, tmp_path: Path) -> None:
    store.set_pipeline("p", {}, UNIT)
    build = store.create_build("p", "unit", "manual", T0)

    def append(i: int) -> list[int]:
        with open_sql(database, tmp_path) as own:
            return [own.append_event(build.id, "log", {"w": i, "n": n}, T0).seq for n in range(40)]

    seqs = race(4, append)
    assert sorted(s for per in seqs for s in per) == list(range(1, 161))
    events = store.list_events(build.id)
    assert [e.seq for e in events] == list(range(1, 161))
    for i in range(4):  # each writer's events appear in the order it wrote them
        assert [e.payload["n"] for e in events if e.payload["w"] == i] == list(range(40))


def test_concurrent_first_migrations(database: str, tmp_path: Path) -> None:
    stores = race(4, lambda i: open_sql(database, tmp_path))
    try:
        for s in stores:
            assert s.schema_version() == LATEST_VERSION
        stores[0].set_pipeline("p", {}, UNIT)
        assert [j.name for j in stores[3].list_jobs("p")] == ["unit"]
        rows = stores[0]._run(lambda tx: tx.rows("SELECT version FROM schema_version ORDER BY version"), write=False)
        assert [r[0] for r in rows] == list(range(1, LATEST_VERSION + 1))
    finally:
        for s in stores:
            s.close()


def test_list_all_jobs_fast_with_10000_jobs(store: SqlStore) -> None:
    n_pipelines, jobs_per_pipeline, builds_per_job = 100, 100, 3
    for p in range(n_pipelines):
        store.set_pipeline(f"p{p:03}", {}, [JobConfig(name=f"j{j:03}", steps=()) for j in range(jobs_per_pipeline)])
    steps = json.dumps([{"run": "true"}])
    rows = [
        (f"p{p:03}", f"j{j:03}", T0 + k, steps)
        for k in range(builds_per_job)
        for p in range(n_pipelines)
        for j in range(jobs_per_pipeline)
    ]
    # Seeded in one statement batch: 30,000 create_build calls would take longer than the query under test.
    store._run(
        lambda tx: tx.execute_many(
            "INSERT INTO builds (pipeline, job, status, created_at, triggered_by, timeout_s, steps) "
            "VALUES (?, ?, 'succeeded', ?, 'scheduler', 600, ?)",
            rows,
        ),
        write=True,
    )
    store._run(lambda tx: tx.execute("ANALYZE"), write=True)

    started = time.perf_counter()
    summaries = store.list_all_jobs()
    elapsed = time.perf_counter() - started

    assert len(summaries) == n_pipelines * jobs_per_pipeline
    assert all(s.latest_build is not None and s.latest_build.created_at == T0 + 2 for s in summaries)
    assert (summaries[0].job.pipeline, summaries[0].job.name) == ("p000", "j000")
    assert (summaries[-1].job.pipeline, summaries[-1].job.name) == ("p099", "j099")
    # Linear in jobs (one index seek each); measured ~0.1 s here. A plan that
    # scans builds per job would take minutes.
    print(f"list_all_jobs: {elapsed:.3f} s")
    assert elapsed < 2.0, f"list_all_jobs took {elapsed:.2f} s for 10,000 jobs"


# -- SQLite: several OS processes on one file -----------------------------------

WRITER = r"""
import json, sys, time
from web_node.store import JobConfig, StepConfig, open_store

path, data_dir, name, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = open_store("sqlite://" + path, data_dir)   # every process migrates at once
store.set_pipeline("p", {"by": name}, [JobConfig(name="unit", steps=(StepConfig(run="true"),))])
claimed = []
for i in range(rounds):
    now = time.time()
    build = store.create_build("p", "unit", "manual", now)
    store.append_event(build.id, "log", {"by": name, "i": i}, now)
    got = store.claim_pending_build(name, now)
    if got is not None:
        claimed.append(got.id)
        store.append_event(got.id, "status", {"by": name}, now)
        store.finish_build(got.id, "succeeded", now)
    store.register_worker(name, "linux", [], now)
    store.list_all_jobs()
store.close()
print(json.dumps(claimed))
"""


def test_sqlite_writers_in_several_processes(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"  # does not exist yet: the processes race to create and migrate it
    n, rounds = 4, 60
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(tmp_path), f"w{i}", str(rounds)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(n)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert "locked" not in err
    claimed = [build_id for out, _ in outputs for build_id in json.loads(out)]
    assert len(claimed) == len(set(claimed))  # no build claimed twice

    with SqliteStore(str(path)) as store:
        builds = store.list_builds(limit=10_000)
        assert len(builds) == n * rounds
        assert {b.id for b in builds if b.status == "succeeded"} == set(claimed)
        for b in builds:
            assert [e.seq for e in store.list_events(b.id)] == list(range(1, len(store.list_events(b.id)) + 1))
        assert [w.name for w in store.list_workers()] == [f"w{i}" for i in range(n)]
        assert store.schema_version() == LATEST_VERSION


def test_sqlite_locked_past_busy_timeout_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = SqliteStore(str(path), busy_timeout_s=0.3)
    store.migrate()
    store.set_pipeline("p", {}, UNIT)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        assert [j.name for j in store.list_jobs("p")] == ["unit"]  # WAL: reads go on
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"stayed locked for more than 0\.3 s") as e:
            store.create_build("p", "unit", "manual", T0)
        assert 0.3 <= time.monotonic() - started < 3
        assert e.value.backend == "sqlite"
        assert str(path) in str(e.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.create_build("p", "unit", "manual", T0).status == "pending"  # the store is usable again
    store.close()


def test_sqlite_waits_for_a_short_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    with SqliteStore(str(path)) as store:
        store.migrate()
        store.set_pipeline("p", {}, UNIT)
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
        release.start()
        try:
            assert store.create_build("p", "unit", "manual", T0).status == "pending"
        finally:
            release.join()
            other.close()


# -- PostgreSQL: a dropped connection ---------------------------------------------


@pytest.fixture
def pg_store(postgres_database: str, tmp_path: Path) -> Iterator[Store]:
    with open_sql(postgres_database, tmp_path) as store:
        yield store


def test_postgres_reconnects_after_the_server_drops_the_connection(pg_store: Store, postgres_url: str) -> None:
    pg_store.set_pipeline("p", {}, UNIT)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'web-node'"
        ).fetchall()
    assert killed and all(r[0] for r in killed)
    # The next call notices the dead connection, reconnects once and succeeds.
    assert pg_store.create_build("p", "unit", "manual", T0).status == "pending"
    assert [j.name for j in pg_store.list_jobs("p")] == ["unit"]


def test_postgres_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"cannot connect to PostgreSQL at postgresql://u:\*\*\*@127.0.0.1:1/db") as e:
        open_store("postgresql://u:secret@127.0.0.1:1/db", str(tmp_path))
    assert "secret" not in str(e.value)
    assert e.value.backend == "postgresql"


def _session(store: SqlStore) -> object:
    """Which server session the store is on (PostgreSQL); SQLite has no such thing."""
    if store.backend != "postgresql":
        return None
    return store._run(lambda tx: tx.rows("SELECT pg_backend_pid()")[0][0], write=False)


def test_forked_child_opens_its_own_connection(store: SqlStore) -> None:
    """A group forked after the store was opened must not share (or close) the parent's connection."""
    store.set_pipeline("p", {}, UNIT)
    session = _session(store)
    for use in (True, False):
        pid = os.fork()
        if pid == 0:  # the child: leave without running pytest's teardown
            code = 1
            try:
                if use:
                    store.create_build("p", "unit", "child", T0)
                store.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's connection survived: same session, no reconnect.
        assert _session(store) == session
    assert [b.trigger for b in store.list_builds()] == ["child"]
    assert store.create_build("p", "unit", "parent", T0).trigger == "parent"
