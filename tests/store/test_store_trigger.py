"""trigger_due_job: the scheduler's check, mark and build in one transaction, on both backends."""

from __future__ import annotations

from pathlib import Path

from store_helpers import race

from web_node.store import JobConfig, StepConfig, Store, open_store
from web_node.store._sql import SqlStore

T0 = 1_700_000_000.0
EVERY = 60.0


def setup_job(store: Store, every: float | None = EVERY) -> None:
    store.set_pipeline("p", {}, [JobConfig(name="tick", steps=(StepConfig(run="true"),), trigger_every_s=every)])


def test_due_job_is_triggered_once(store: Store) -> None:
    setup_job(store)
    build = store.trigger_due_job("p", "tick", T0)
    assert build is not None
    assert (build.pipeline, build.job, build.trigger, build.status, build.created_at) == (
        "p", "tick", "scheduler", "pending", T0)
    assert build.steps == (StepConfig(run="true"),)
    assert store.get_job("p", "tick").last_triggered_at == T0
    assert [b.id for b in store.list_builds()] == [build.id]
    # Triggered at T0: not due again at the same instant, nor before the interval elapsed.
    assert store.trigger_due_job("p", "tick", T0) is None
    store.claim_pending_build("w", T0)  # not blocked by a pending build either way
    assert store.trigger_due_job("p", "tick", T0 + EVERY - 1) is None
    assert len(store.list_builds()) == 1
    again = store.trigger_due_job("p", "tick", T0 + EVERY)
    assert again is not None and again.id != build.id
    assert store.get_job("p", "tick").last_triggered_at == T0 + EVERY


def test_not_due_is_none_and_changes_nothing(store: Store) -> None:
    setup_job(store)
    store.mark_triggered("p", "tick", T0)
    assert store.trigger_due_job("p", "tick", T0 + 10) is None
    assert store.list_builds() == []
    assert store.get_job("p", "tick").last_triggered_at == T0


def test_job_without_trigger_is_never_due(store: Store) -> None:
    setup_job(store, every=None)
    assert store.trigger_due_job("p", "tick", T0) is None
    assert store.list_builds() == []
    assert store.get_job("p", "tick").last_triggered_at is None


def test_pending_newest_build_blocks_and_keeps_last_triggered(store: Store) -> None:
    setup_job(store)
    store.mark_triggered("p", "tick", T0 - 2 * EVERY)  # due
    pending = store.create_build("p", "tick", "manual", T0 - 1)
    assert store.trigger_due_job("p", "tick", T0) is None
    assert [b.id for b in store.list_builds()] == [pending.id]
    assert store.get_job("p", "tick").last_triggered_at == T0 - 2 * EVERY  # still due: triggers once a worker takes it
    assert store.claim_pending_build("w", T0) is not None
    build = store.trigger_due_job("p", "tick", T0 + 1)
    assert build is not None and build.created_at == T0 + 1


def test_removed_job_or_pipeline_is_none(store: Store) -> None:
    setup_job(store)
    assert store.trigger_due_job("p", "gone", T0) is None
    assert store.trigger_due_job("nope", "tick", T0) is None
    store.set_pipeline("p", {}, [])  # the job is removed
    assert store.trigger_due_job("p", "tick", T0) is None
    assert store.list_builds() == []


def test_racing_schedulers_create_one_build(store: SqlStore, database: str, tmp_path: Path) -> None:
    """Eight schedulers, each on its own connection, see the same job due at the same instant."""
    setup_job(store)
    n, rounds = 8, 5
    schedulers = [open_store(database, str(tmp_path)) for _ in range(n)]  # connected before the race starts
    try:
        for r in range(rounds):  # each round a fresh race, at the job's next due time
            now = T0 + r * EVERY
            results = race(n, lambda i, now=now: schedulers[i].trigger_due_job("p", "tick", now))
            won = [b for b in results if b is not None]
            assert len(won) == 1, f"round {r}: {len(won)} of {n} schedulers created a build"
            builds = store.list_builds(limit=1000)
            assert len(builds) == r + 1
            assert (builds[0].id, builds[0].created_at) == (won[0].id, now)
            assert store.get_job("p", "tick").last_triggered_at == now
            store.claim_pending_build("w", now)  # a worker takes it: the next round is not blocked by it
    finally:
        for s in schedulers:
            s.close()
