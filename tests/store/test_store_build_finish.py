"""One truth per build, on SQLite and on a real PostgreSQL: a build ends once, in one
transaction with its finish event; a worker's event batch is stored once; a worker
name belongs to the credential that registered it."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_helpers import race

from web_node.errors import Conflict, NotFound
from web_node.store import Build, JobConfig, StepConfig, open_store
from web_node.store._sql import SqlStore

T0 = 1_700_000_000.0


def _started_build(store: SqlStore, worker: str = "w1") -> Build:
    store.set_pipeline("p", {}, [JobConfig(name="j", steps=(StepConfig(run="true"),))])
    store.create_build("p", "j", "manual", T0)
    claimed = store.claim_pending_build(worker, T0 + 1)
    assert claimed is not None
    return claimed


@contextlib.contextmanager
def connections(database: str, data_dir: Path, n: int) -> Iterator[list[SqlStore]]:
    """``n`` stores on one database, each with its own connection: the racers of one test, as separate
    processes (gateway, api, build-tracker) would be. One store shared by threads would serialize them."""
    opened: list[SqlStore] = []
    try:
        for _ in range(n):
            s = open_store(database, str(data_dir))
            assert isinstance(s, SqlStore)
            opened.append(s)
        yield opened
    finally:
        for s in opened:
            s.close()


def _finishes(store: SqlStore, build_id: int) -> list[dict[str, Any]]:
    return [e.payload for e in store.list_events(build_id) if e.type == "finish"]


def test_an_abort_racing_the_workers_finish_leaves_one_finish_event(store: SqlStore, database: str,
                                                                   tmp_path: Path) -> None:
    store.set_pipeline("p", {}, [JobConfig(name="j", steps=(StepConfig(run="true"),))])
    with connections(database, tmp_path, 2) as (api, gateway):
        _race_abort_and_finish(store, api, gateway)


def _race_abort_and_finish(store: SqlStore, api: SqlStore, gateway: SqlStore) -> None:
    for round_ in range(20):
        store.create_build("p", "j", "manual", T0)
        build = store.claim_pending_build("w1", T0 + 1)
        assert build is not None
        store.append_worker_events(build.id, "w1", 1, [("log", {"output": "hello\n", "step": 0})], T0 + 2)

        def end(i: int, build_id: int = build.id) -> bool:
            if i == 0:  # the API's AbortBuild
                return api.end_build(build_id, "aborted", T0 + 3, events=[("status", {"status": "aborted"})]).ended
            # the gateway's FinishBuild for the worker that runs it
            return gateway.end_build(build_id, "succeeded", T0 + 3, worker="w1").ended

        won = race(2, end)
        assert won.count(True) == 1, (round_, won)
        final = store.get_build(build.id)
        finishes = _finishes(store, build.id)
        assert finishes == [{"status": final.status}], (round_, finishes, final.status)
        assert final.status == ("aborted" if won[0] else "succeeded")
        events = store.list_events(build.id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[-1].type == "finish"  # nothing after the end


def test_many_enders_one_winner(store: SqlStore, database: str, tmp_path: Path) -> None:
    build = _started_build(store)
    statuses = ["aborted", "failed", "errored", "succeeded"] * 2
    with connections(database, tmp_path, len(statuses)) as enders:
        won = race(len(statuses), lambda i: enders[i].end_build(
            build.id, statuses[i], T0 + 5, events=[("error", {"message": f"ender {i}"})]).ended)  # type: ignore[arg-type]
    assert won.count(True) == 1
    winner = won.index(True)
    assert [(e.type, e.payload) for e in store.list_events(build.id)] == [
        ("error", {"message": f"ender {winner}"}), ("finish", {"status": statuses[winner]})]
    assert store.get_build(build.id).status == statuses[winner]


def test_the_status_and_its_events_commit_together_or_not_at_all(store: SqlStore) -> None:
    build = _started_build(store)
    # An event the database refuses (type is NOT NULL) after the status UPDATE ran in the same transaction.
    with pytest.raises(Exception):  # noqa: B017 - the driver's own error, as StoreError
        store.end_build(build.id, "failed", T0 + 2, events=[(None, {})])  # type: ignore[list-item]
    after = store.get_build(build.id)
    assert after.status == "started" and after.end_time is None
    assert store.list_events(build.id) == []
    assert store.end_build(build.id, "failed", T0 + 3).ended
    assert _finishes(store, build.id) == [{"status": "failed"}]


def test_finish_build_writes_the_finish_event_and_a_second_end_writes_nothing(store: SqlStore) -> None:
    build = _started_build(store)
    assert store.finish_build(build.id, "errored", T0 + 2).status == "errored"
    again = store.end_build(build.id, "succeeded", T0 + 3, events=[("error", {"message": "late"})])
    assert not again.ended and again.build.status == "errored" and again.build.end_time == T0 + 2
    assert [e.type for e in store.list_events(build.id)] == ["finish"]
    with pytest.raises(NotFound):
        store.end_build(999_999, "failed", T0)
    with pytest.raises(ValueError, match="final status"):
        store.end_build(build.id, "started", T0)


def test_only_the_builds_worker_may_end_it(store: SqlStore) -> None:
    build = _started_build(store, "w1")
    with pytest.raises(Conflict, match="run by worker w1, not by w2"):
        store.end_build(build.id, "succeeded", T0 + 2, worker="w2")
    assert store.get_build(build.id).status == "started" and store.list_events(build.id) == []
    assert store.end_build(build.id, "succeeded", T0 + 2, worker="w1").ended


# -- numbered event batches -----------------------------------------------------


def test_a_resent_batch_is_stored_once(store: SqlStore, database: str, tmp_path: Path) -> None:
    build = _started_build(store)
    first = [("log", {"output": "one\n", "step": 0}), ("log", {"output": "two\n", "step": 0})]
    stored = store.append_worker_events(build.id, "w1", 1, first, T0 + 2)
    assert (stored.accepted, stored.duplicate, stored.status) == (2, False, "started")
    again = store.append_worker_events(build.id, "w1", 1, first, T0 + 3)  # the answer was lost: sent again
    assert (again.accepted, again.duplicate) == (0, True)

    # Another process (a restarted gateway) on the same database knows the batch too.
    other = open_store(database, str(tmp_path))
    try:
        assert other.append_worker_events(build.id, "w1", 1, first, T0 + 4).duplicate
        assert other.append_worker_events(build.id, "w1", 2, [("log", {"output": "three\n", "step": 0})], T0 + 4).accepted == 1
    finally:
        other.close()
    assert store.append_worker_events(build.id, "w1", 2, [], T0 + 5).duplicate
    empty = store.append_worker_events(build.id, "w1", 3, [], T0 + 5)  # an empty batch: counted, nothing stored
    assert (empty.accepted, empty.duplicate) == (0, False)
    assert [(e.seq, e.payload["output"]) for e in store.list_events(build.id)] == [
        (1, "one\n"), (2, "two\n"), (3, "three\n")]


def test_the_same_batch_racing_itself_is_stored_once(store: SqlStore, database: str, tmp_path: Path) -> None:
    build = _started_build(store)
    with connections(database, tmp_path, 4) as gateways:
        results = race(4, lambda i: gateways[i].append_worker_events(
            build.id, "w1", 1, [("log", {"output": "x"})], T0 + 2))
    assert sorted(r.accepted for r in results) == [0, 0, 0, 1]
    assert len(store.list_events(build.id)) == 1


def test_batches_to_a_finished_or_foreign_build_store_nothing(store: SqlStore) -> None:
    build = _started_build(store, "w1")
    with pytest.raises(Conflict, match="not by w2"):
        store.append_worker_events(build.id, "w2", 1, [("log", {"output": "x"})], T0 + 2)
    with pytest.raises(NotFound):
        store.append_worker_events(999_999, "w1", 1, [], T0 + 2)
    store.end_build(build.id, "aborted", T0 + 3)
    late = store.append_worker_events(build.id, "w1", 1, [("log", {"output": "after the end"})], T0 + 4)
    assert (late.accepted, late.duplicate, late.status) == (0, False, "aborted")
    assert [e.type for e in store.list_events(build.id)] == ["finish"]


# -- worker credentials -----------------------------------------------------------


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def test_one_name_one_credential(store: SqlStore) -> None:
    worker, issued = store.register_worker_credential("w1", "linux", ["a"], T0, new_hash=_hash("s1"), presented_hash=None)
    assert issued and worker.name == "w1"
    assert store.worker_for_credential(_hash("s1")).name == "w1"
    # Someone else, with the shared token but not w1's credential: refused, and w1 keeps its credential.
    for presented in (None, _hash("guess")):
        with pytest.raises(Conflict, match="worker name w1 is taken"):
            store.register_worker_credential("w1", "linux", [], T0 + 1, new_hash=_hash("s2"), presented_hash=presented)
    with pytest.raises(Conflict):
        store.register_worker("w1", "linux", [], T0 + 1)
    with pytest.raises(NotFound):
        store.worker_for_credential(_hash("s2"))
    # The same worker restarting with its credential: a new session, the credential kept.
    again, issued = store.register_worker_credential("w1", "linux", ["b"], T0 + 2, new_hash=_hash("s3"),
                                                     presented_hash=_hash("s1"))
    assert not issued and again.registered_at == T0 + 2 and again.tags == ("b",)
    assert store.worker_for_credential(_hash("s1")).name == "w1"
    # Pruned by gc: the name is free again, and the old credential is worth nothing.
    assert store.delete_workers_stalled_before(T0 + 100) == ["w1"]
    with pytest.raises(NotFound):
        store.worker_for_credential(_hash("s1"))
    _, issued = store.register_worker_credential("w1", "linux", [], T0 + 200, new_hash=_hash("s4"),
                                                 presented_hash=_hash("s1"))
    assert issued and store.worker_for_credential(_hash("s4")).name == "w1"


def test_two_registrations_racing_for_a_new_name_one_wins(database: str, tmp_path: Path) -> None:
    with connections(database, tmp_path, 4) as gateways:
        results = race(4, lambda i: _register_contested(gateways[i], i))
    assert sorted(results) == ["refused", "refused", "refused", "won"]


def _register_contested(store: SqlStore, i: int) -> str:
    try:
        store.register_worker_credential("contested", "linux", [], T0, new_hash=_hash(f"s{i}"), presented_hash=None)
    except Conflict:
        return "refused"
    return "won"


# -- syslog shipping marks ----------------------------------------------------------


def test_gc_can_keep_unshipped_builds(store: SqlStore) -> None:
    store.set_pipeline("p", {}, [JobConfig(name="j", steps=(StepConfig(run="true"),))])
    ids = [store.create_build("p", "j", "manual", T0).id for _ in range(3)]
    for build_id in ids:
        store.finish_build(build_id, "succeeded", T0 + 1)
    assert [b.id for b in store.list_unshipped_builds(10)] == ids
    assert [b.id for b in store.list_unshipped_builds(2)] == ids[:2]
    store.mark_build_shipped(ids[1], T0 + 2)
    store.mark_build_shipped(999_999, T0 + 2)  # gone already: nothing to do
    assert [b.id for b in store.list_unshipped_builds(10)] == [ids[0], ids[2]]

    assert store.delete_builds_finished_before(T0 + 10, keep_unshipped=True) == 1
    assert [b.id for b in store.list_builds()] == [ids[2], ids[0]]
    assert store.delete_builds_finished_before(T0 + 10) == 2
    assert store.list_builds() == []


def test_upgrading_a_database_of_schema_1(database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds that ended before the upgrade count as shipped; workers of before may be registered again."""
    from web_node.store import _sql
    from web_node.store._migrations import LATEST_VERSION, MIGRATIONS

    with monkeypatch.context() as patch:
        patch.setattr(_sql, "MIGRATIONS", MIGRATIONS[:1])
        patch.setattr(_sql, "LATEST_VERSION", 1)
        old = open_store(database, str(tmp_path))
        try:
            assert isinstance(old, SqlStore) and old.schema_version() == 1
            old.set_pipeline("p", {}, [JobConfig(name="j", steps=(StepConfig(run="true"),))])
            ended = old.create_build("p", "j", "manual", T0).id
            old._run(lambda tx: tx.execute(
                "UPDATE builds SET status = 'succeeded', end_time = ? WHERE id = ?", (T0 + 1, ended)), write=True)
            waiting = old.create_build("p", "j", "manual", T0).id
            old._run(lambda tx: tx.execute(
                "INSERT INTO workers (name, registered_at, heartbeat_at, platform, tags) VALUES ('w1', 0, 0, 'x', '[]')"),
                write=True)
        finally:
            old.close()
    upgraded = open_store(database, str(tmp_path))
    try:
        assert isinstance(upgraded, SqlStore) and upgraded.schema_version() == LATEST_VERSION
        assert upgraded.list_unshipped_builds(10) == []  # history is not re-sent to syslog
        upgraded.finish_build(waiting, "failed", T0 + 2)
        assert [b.id for b in upgraded.list_unshipped_builds(10)] == [waiting]
        _, issued = upgraded.register_worker_credential("w1", "linux", [], T0, new_hash=_hash("s"), presented_hash=None)
        assert issued
    finally:
        upgraded.close()
