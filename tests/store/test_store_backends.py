"""The Store contract, run against both backends (SQLite file, real PostgreSQL server)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from web_node.errors import NotFound, StoreError
from web_node.store import Component, JobConfig, StepConfig, Store, open_store
from web_node.store._migrations import LATEST_VERSION, MIGRATIONS
from web_node.store._sql import SqlStore

T0 = 1_700_000_000.0


def job(name: str, run: str = "true", every: float | None = None, timeout: float = 600.0) -> JobConfig:
    return JobConfig(name=name, steps=(StepConfig(run=run),), trigger_every_s=every, timeout_s=timeout)


def component(name: str = "scheduler", *, pid: int = 100, paused: bool = False, last_run_at: float | None = None) -> Component:
    return Component(
        name=name, group="backend", host="node-1", pid=pid, started_at=T0, heartbeat_at=T0,
        interval_s=10.0, last_run_at=last_run_at, paused=paused,
    )


# -- pipelines and jobs -------------------------------------------------------


def test_set_pipeline_creates_and_lists(store: Store) -> None:
    config = {"jobs": [{"name": "unit", "steps": [{"run": "echo hi"}]}], "z": 1, "a": 2}
    p = store.set_pipeline("main", config, [job("unit", "echo hi", every=60.0, timeout=30.0), job("lint")])
    assert p.name == "main"
    assert p.config == config
    assert list(p.config) == ["jobs", "z", "a"]  # as the user sent it
    assert p.created_at == p.updated_at
    assert store.get_pipeline("main") == p

    jobs = store.list_jobs("main")
    assert [j.name for j in jobs] == ["unit", "lint"]  # the order of the config
    unit = store.get_job("main", "unit")
    assert unit.config == job("unit", "echo hi", every=60.0, timeout=30.0)
    assert unit.pipeline == "main"
    assert unit.last_triggered_at is None


def test_list_pipelines_sorted_bytewise(store: Store) -> None:
    for name in ["b", "a", "B", "a-2", "ä"]:
        store.set_pipeline(name, {}, [])
    # The same order on both backends whatever the database's locale.
    assert [p.name for p in store.list_pipelines()] == ["B", "a", "a-2", "b", "ä"]


def test_set_pipeline_replaces_jobs(store: Store) -> None:
    first = store.set_pipeline("main", {"v": 1}, [job("a"), job("b", every=60.0)])
    store.mark_triggered("main", "b", T0)
    old_build = store.create_build("main", "a", "manual", T0)
    time.sleep(0.01)

    second = store.set_pipeline("main", {"v": 2}, [job("c"), job("b", "make", every=120.0)])
    assert second.config == {"v": 2}
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at

    assert [j.name for j in store.list_jobs("main")] == ["c", "b"]
    b = store.get_job("main", "b")
    assert b.config.steps == (StepConfig("make"),)
    assert b.config.trigger_every_s == 120.0
    assert b.last_triggered_at == T0  # a job that stays keeps its trigger time
    with pytest.raises(NotFound) as e:
        store.get_job("main", "a")
    assert e.value.kind == "job"
    assert "main/a" in str(e.value)
    # The removed job's history stays.
    assert store.get_build(old_build.id).job == "a"


def test_set_pipeline_refuses_duplicate_job_names(store: Store) -> None:
    with pytest.raises(ValueError, match="job a more than once"):
        store.set_pipeline("main", {}, [job("a"), job("a")])
    with pytest.raises(NotFound):
        store.get_pipeline("main")


def test_not_found_errors(store: Store) -> None:
    store.set_pipeline("main", {}, [job("unit")])
    cases: list[tuple[Callable[[], object], str, object]] = [
        (lambda: store.get_pipeline("nope"), "pipeline", "nope"),
        (lambda: store.delete_pipeline("nope"), "pipeline", "nope"),
        (lambda: store.list_jobs("nope"), "pipeline", "nope"),
        (lambda: store.get_job("nope", "unit"), "pipeline", "nope"),
        (lambda: store.get_job("main", "nope"), "job", "main/nope"),
        (lambda: store.mark_triggered("main", "nope", T0), "job", "main/nope"),
        (lambda: store.create_build("main", "nope", "manual", T0), "job", "main/nope"),
        (lambda: store.create_build("nope", "unit", "manual", T0), "pipeline", "nope"),
        (lambda: store.get_build(999), "build", 999),
        (lambda: store.finish_build(999, "failed", T0), "build", 999),
        (lambda: store.append_event(999, "log", {}, T0), "build", 999),
        (lambda: store.list_events(999), "build", 999),
        (lambda: store.heartbeat_worker("w", T0, 0), "worker", "w"),
        (lambda: store.heartbeat_component("c", T0, None), "component", "c"),
        (lambda: store.get_component("c"), "component", "c"),
        (lambda: store.set_component_paused("c", True), "component", "c"),
    ]
    for call, kind, name in cases:
        with pytest.raises(NotFound) as e:
            call()
        assert (e.value.kind, e.value.name) == (kind, name)
        assert isinstance(e.value, StoreError)
        assert str(e.value) == f"{kind} {name} does not exist"
    assert store.list_jobs("main")  # and the store still works after errors


def test_empty_pipeline_lists_no_jobs(store: Store) -> None:
    store.set_pipeline("empty", {}, [])
    assert store.list_jobs("empty") == []


def test_delete_pipeline_removes_jobs_builds_events(store: Store) -> None:
    store.set_pipeline("main", {}, [job("unit")])
    store.set_pipeline("other", {}, [job("unit")])
    b = store.create_build("main", "unit", "manual", T0)
    store.append_event(b.id, "log", {"line": "x"}, T0)
    keep = store.create_build("other", "unit", "manual", T0)
    store.delete_pipeline("main")
    with pytest.raises(NotFound):
        store.get_pipeline("main")
    with pytest.raises(NotFound):
        store.get_build(b.id)
    with pytest.raises(NotFound):
        store.list_events(b.id)
    assert [s.job.pipeline for s in store.list_all_jobs()] == ["other"]
    assert store.get_build(keep.id) == keep


def test_jobs_due_and_mark_triggered(store: Store) -> None:
    store.set_pipeline("p", {}, [job("every-min", every=60.0), job("manual-only"), job("every-hour", every=3600.0)])
    assert [j.name for j in store.jobs_due(T0)] == ["every-min", "every-hour"]  # never triggered: due
    store.mark_triggered("p", "every-min", T0)
    store.mark_triggered("p", "every-hour", T0)
    assert store.jobs_due(T0 + 59) == []
    assert [j.name for j in store.jobs_due(T0 + 60)] == ["every-min"]
    assert [j.name for j in store.jobs_due(T0 + 3600)] == ["every-min", "every-hour"]
    assert store.get_job("p", "every-min").last_triggered_at == T0


# -- builds -------------------------------------------------------------------


def test_build_lifecycle(store: Store) -> None:
    store.set_pipeline("main", {}, [job("unit", "make test", timeout=42.0)])
    b = store.create_build("main", "unit", "manual", T0)
    assert (b.pipeline, b.job, b.status, b.trigger) == ("main", "unit", "pending", "manual")
    assert (b.created_at, b.start_time, b.end_time, b.worker) == (T0, None, None, None)
    assert b.steps == (StepConfig("make test"),)
    assert b.timeout_s == 42.0
    assert store.get_build(b.id) == b
    assert b.to_json()["status"] == "pending"

    # The build runs what it was created with, whatever the pipeline says later.
    store.set_pipeline("main", {}, [job("unit", "make other")])
    assert store.get_build(b.id).steps == (StepConfig("make test"),)

    claimed = store.claim_pending_build("w1", T0 + 1)
    assert claimed is not None
    assert (claimed.id, claimed.status, claimed.worker, claimed.start_time) == (b.id, "started", "w1", T0 + 1)
    assert store.claim_pending_build("w2", T0 + 2) is None
    assert store.list_running_builds() == [claimed]

    done = store.finish_build(b.id, "succeeded", T0 + 5)
    assert (done.status, done.end_time, done.start_time, done.worker) == ("succeeded", T0 + 5, T0 + 1, "w1")
    assert store.list_running_builds() == []
    # Finishing again (e.g. an abort racing the worker) changes nothing.
    assert store.finish_build(b.id, "aborted", T0 + 9) == done
    assert store.get_build(b.id) == done


def test_finish_pending_build_and_bad_status(store: Store) -> None:
    store.set_pipeline("main", {}, [job("unit")])
    b = store.create_build("main", "unit", "manual", T0)
    aborted = store.finish_build(b.id, "aborted", T0 + 1)
    assert (aborted.status, aborted.start_time, aborted.end_time) == ("aborted", None, T0 + 1)
    assert store.claim_pending_build("w", T0 + 2) is None
    with pytest.raises(ValueError, match="final status"):
        store.finish_build(b.id, "started", T0)


def test_claim_takes_oldest_first(store: Store) -> None:
    store.set_pipeline("main", {}, [job("a"), job("b")])
    ids = [store.create_build("main", name, "scheduler", T0 + i).id for i, name in enumerate("abab")]
    assert ids == sorted(ids)
    claimed = [store.claim_pending_build("w", T0 + 10) for _ in range(5)]
    assert [c.id if c else None for c in claimed] == [*ids, None]


def test_list_builds_newest_first_with_filters(store: Store) -> None:
    store.set_pipeline("p", {}, [job("a"), job("b")])
    store.set_pipeline("q", {}, [job("a")])
    made = [store.create_build(p, j, "manual", T0) for p, j in [("p", "a"), ("p", "b"), ("q", "a"), ("p", "a")]]
    ids = [b.id for b in made]
    assert [b.id for b in store.list_builds()] == ids[::-1]
    assert [b.id for b in store.list_builds(limit=2)] == ids[:-3:-1]
    assert [b.id for b in store.list_builds(pipeline="p")] == [ids[3], ids[1], ids[0]]
    assert [b.id for b in store.list_builds(pipeline="p", job="a")] == [ids[3], ids[0]]
    assert [b.id for b in store.list_builds(job="a")] == [ids[3], ids[2], ids[0]]
    assert store.list_builds(pipeline="nope") == []
    assert store.list_builds(limit=0) == []


def test_retention_deletes_old_finished_builds_and_events(store: Store) -> None:
    store.set_pipeline("p", {}, [job("a")])
    old = store.create_build("p", "a", "manual", T0)
    store.append_event(old.id, "log", {"text": "old"}, T0)
    store.finish_build(old.id, "failed", T0 + 10)
    recent = store.create_build("p", "a", "manual", T0)
    store.finish_build(recent.id, "succeeded", T0 + 1000)
    running = store.create_build("p", "a", "manual", T0)  # old but unfinished: never deleted
    store.claim_pending_build("w", T0 + 1)
    pending = store.create_build("p", "a", "manual", T0)

    assert store.delete_builds_finished_before(T0 + 500) == 1
    with pytest.raises(NotFound):
        store.get_build(old.id)
    with pytest.raises(NotFound):
        store.list_events(old.id)
    assert {b.id for b in store.list_builds()} == {recent.id, running.id, pending.id}
    assert store.delete_builds_finished_before(T0 + 500) == 0

    # Ids are never reused after a deletion (ids appear in URLs and logs).
    assert store.delete_builds_finished_before(T0 + 2000) == 1
    newer = store.create_build("p", "a", "manual", T0)
    assert newer.id > pending.id


def test_retention_deletes_in_batches(store: Store) -> None:
    from web_node.store._sql import RETENTION_BATCH

    store.set_pipeline("p", {}, [job("a")])
    n = RETENTION_BATCH + 7
    for _ in range(n):
        b = store.create_build("p", "a", "manual", T0)
        store.finish_build(b.id, "succeeded", T0)
    assert store.delete_builds_finished_before(T0 + 1) == n
    assert store.list_builds() == []


# -- events -------------------------------------------------------------------


def test_events_in_order_and_after_seq(store: Store) -> None:
    store.set_pipeline("p", {}, [job("a")])
    b = store.create_build("p", "a", "manual", T0)
    other = store.create_build("p", "a", "manual", T0)
    assert store.list_events(b.id) == []
    for i in range(5):
        e = store.append_event(b.id, "log", {"payload": f"line {i}\n", "n": i}, T0 + i)
        assert (e.build_id, e.seq) == (b.id, i + 1)
        store.append_event(other.id, "log", {"payload": "other"}, T0 + i)
    store.append_event(b.id, "finish", {"status": "succeeded"}, T0 + 9)

    events = store.list_events(b.id)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.payload.get("n") for e in events] == [0, 1, 2, 3, 4, None]
    assert events[0].to_json() == {"seq": 1, "type": "log", "payload": {"payload": "line 0\n", "n": 0}, "time": T0}
    assert events[-1].type == "finish"
    assert [e.seq for e in store.list_events(b.id, after_seq=4)] == [5, 6]
    assert store.list_events(b.id, after_seq=6) == []
    assert [e.seq for e in store.list_events(other.id)] == [1, 2, 3, 4, 5]


# -- workers ------------------------------------------------------------------


def test_workers_register_heartbeat_and_stall(store: Store) -> None:
    w = store.register_worker("w1", "linux", ["docker", "big"], T0)
    assert (w.name, w.platform, w.tags, w.registered_at, w.heartbeat_at, w.active_builds) == (
        "w1", "linux", ("docker", "big"), T0, T0, 0,
    )
    store.register_worker("w2", "linux", [], T0)
    store.register_worker("w3", "darwin", [], T0)
    assert store.heartbeat_worker("w1", T0 + 30, 2).active_builds == 2
    store.heartbeat_worker("w3", T0 + 30, 0)

    assert [w.name for w in store.list_workers()] == ["w1", "w2", "w3"]
    assert store.delete_workers_stalled_before(T0 + 10) == ["w2"]
    assert [w.name for w in store.list_workers()] == ["w1", "w3"]
    assert store.delete_workers_stalled_before(T0 + 10) == []
    assert store.delete_workers_stalled_before(T0 + 60) == ["w1", "w3"]

    # Re-registering starts a new session.
    store.register_worker("w1", "linux", ["x"], T0 + 100)
    again = store.register_worker("w1", "linux-arm", [], T0 + 200)
    assert (again.registered_at, again.platform, again.tags, again.active_builds) == (T0 + 200, "linux-arm", (), 0)
    assert len(store.list_workers()) == 1


# -- components ---------------------------------------------------------------


def test_components_upsert_keeps_paused(store: Store) -> None:
    store.register_component(component("scheduler", pid=100))
    store.register_component(component("gc", pid=101))
    paused = store.set_component_paused("scheduler", True)
    assert paused.paused is True
    store.heartbeat_component("scheduler", T0 + 10, T0 + 9)

    # The member restarts: a new pid, a record saying paused=False, no run yet.
    store.register_component(component("scheduler", pid=200, paused=False))
    c = store.get_component("scheduler")
    assert (c.pid, c.paused, c.heartbeat_at, c.last_run_at) == (200, True, T0, T0 + 9)
    assert store.set_component_paused("scheduler", False).paused is False
    assert store.get_component("scheduler").paused is False

    store.heartbeat_component("gc", T0 + 5, None)
    gc = store.get_component("gc")
    assert (gc.heartbeat_at, gc.last_run_at) == (T0 + 5, None)
    store.heartbeat_component("gc", T0 + 6, T0 + 6)
    store.heartbeat_component("gc", T0 + 7, None)  # None: no new run, keep the last one
    assert store.get_component("gc").last_run_at == T0 + 6

    assert [c.name for c in store.list_components()] == ["gc", "scheduler"]
    assert store.list_components()[1].to_json()["group"] == "backend"


def test_new_component_may_start_paused(store: Store) -> None:
    store.register_component(component("gc", paused=True))
    assert store.get_component("gc").paused is True


# -- list_all_jobs --------------------------------------------------------------


def test_list_all_jobs_latest_build(store: Store) -> None:
    store.set_pipeline("beta", {}, [job("unit"), job("deploy")])
    store.set_pipeline("alpha", {}, [job("unit"), job("never-built")])
    # Interleaved builds; the same job name in two pipelines must not mix.
    a1 = store.create_build("alpha", "unit", "manual", T0)
    b1 = store.create_build("beta", "unit", "manual", T0)
    a2 = store.create_build("alpha", "unit", "manual", T0 + 1)
    d1 = store.create_build("beta", "deploy", "manual", T0 + 2)
    b2 = store.create_build("beta", "unit", "manual", T0 + 3)
    store.claim_pending_build("w", T0 + 4)  # a1 starts: still not the latest of alpha/unit

    rows = store.list_all_jobs()
    assert [(s.job.pipeline, s.job.name) for s in rows] == [
        ("alpha", "unit"), ("alpha", "never-built"), ("beta", "unit"), ("beta", "deploy"),
    ]
    latest = {(s.job.pipeline, s.job.name): s.latest_build for s in rows}
    assert latest[("alpha", "unit")] == store.get_build(a2.id)
    assert latest[("alpha", "never-built")] is None
    assert latest[("beta", "unit")] == store.get_build(b2.id)
    assert latest[("beta", "deploy")] == store.get_build(d1.id)
    assert rows[0].job == store.get_job("alpha", "unit")

    # The latest build is gone: the one before becomes the latest.
    store.finish_build(b2.id, "errored", T0 + 5)
    store.finish_build(a1.id, "failed", T0 + 5)
    store.finish_build(b1.id, "failed", T0 + 50)
    assert store.delete_builds_finished_before(T0 + 10) == 2
    latest = {(s.job.pipeline, s.job.name): s.latest_build for s in store.list_all_jobs()}
    assert latest[("beta", "unit")] == store.get_build(b1.id)
    assert latest[("alpha", "unit")] == store.get_build(a2.id)


def test_list_all_jobs_empty(store: Store) -> None:
    assert store.list_all_jobs() == []


def test_list_all_jobs_of_one_pipeline(store: Store) -> None:
    store.set_pipeline("beta", {}, [job("unit"), job("deploy")])
    store.set_pipeline("alpha", {}, [job("unit")])
    b1 = store.create_build("beta", "unit", "manual", T0)
    store.create_build("alpha", "unit", "manual", T0 + 1)  # same job name, other pipeline: must not show
    rows = store.list_all_jobs("beta")
    assert [(s.job.pipeline, s.job.name) for s in rows] == [("beta", "unit"), ("beta", "deploy")]
    assert rows[0].latest_build == store.get_build(b1.id)
    assert rows[1].latest_build is None
    assert store.list_all_jobs("no-such-pipeline") == []


# -- migrations -------------------------------------------------------------------


def test_migrations_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert LATEST_VERSION == len(MIGRATIONS)
    for dialect in ("sqlite", "postgresql"):
        for m in MIGRATIONS:
            assert all("$" not in s for s in m.render(dialect))


def test_migrate_is_idempotent(store: SqlStore, database: str, tmp_path: Path) -> None:
    assert store.schema_version() == LATEST_VERSION
    store.set_pipeline("keep", {"x": 1}, [job("a")])
    store.migrate()
    store.migrate()
    again = open_store(database, str(tmp_path))
    assert isinstance(again, SqlStore)
    with again:
        again.migrate()
        assert again.get_pipeline("keep").config == {"x": 1}
        assert again.schema_version() == LATEST_VERSION
    assert store.list_jobs("keep")[0].name == "a"


def test_refuses_newer_schema(store: SqlStore) -> None:
    store._run(
        lambda tx: tx.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)", (LATEST_VERSION + 1, "future", T0)
        ),
        write=True,
    )
    with pytest.raises(StoreError, match="newer than"):
        store.migrate()


def test_closed_store_raises_store_error(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_pipelines()
    store.close()  # twice is fine
