"""The package's public face: exports, open_store URLs, AsyncStore."""

from __future__ import annotations

import inspect
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import web_node.store
from web_node.errors import ConfigError, NotFound
from web_node.store import AsyncStore, JobConfig, SqliteStore, StepConfig, Store, open_store

T0 = 1_700_000_000.0


def test_exported_members() -> None:
    assert sorted(web_node.store.__all__) == sorted([
        "FINISHED_STATUSES", "AsyncStore", "Build", "BuildEnd", "BuildEvent", "BuildStatus", "Component", "EventBatch",
        "Job", "JobConfig",
        "JobSummary", "Pipeline", "PostgresStore", "SqliteStore", "StepConfig", "Store", "Worker", "open_store",
        "redact_database_url",
    ])
    for name in web_node.store.__all__:
        assert getattr(web_node.store, name) is not None
    assert web_node.store.FINISHED_STATUSES == {"succeeded", "failed", "errored", "aborted"}


def test_sqlite_users_do_not_import_psycopg() -> None:
    code = "import sys, web_node.store; assert 'psycopg' not in sys.modules, 'psycopg imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- open_store -----------------------------------------------------------------


def test_open_store_sqlite_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "node.db"  # missing directories are made
    store = open_store(f"sqlite://{path}", "/nonexistent-data-dir")
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == str(path)
        store.set_pipeline("p", {}, [])
        assert path.exists()
    finally:
        store.close()


def test_open_store_sqlite_relative_to_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    store = open_store("sqlite://sub/node.db", str(tmp_path))
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == str(tmp_path / "sub" / "node.db")
        assert store.list_pipelines() == []  # migrated
    finally:
        store.close()


def test_open_store_sqlite_memory(tmp_path: Path) -> None:
    store = open_store("sqlite://:memory:", str(tmp_path))
    store.set_pipeline("p", {}, [])
    assert [p.name for p in store.list_pipelines()] == ["p"]
    store.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "database",
    ["", "node.db", "/var/lib/node.db", "sqlite://", "sqlite:///", "sqlite:node.db", "mysql://u@h/db",
     "postgresql:/x", "SQLITE:///x.db"],
)
def test_open_store_refuses_other_urls(database: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        open_store(database, str(tmp_path))
    assert e.value.key == "node.database"
    assert e.value.value == database
    assert e.value.valid == "sqlite:///path or postgresql://user@host/db"
    assert "node.database" in str(e.value)
    assert e.value.exit_code == 2


def test_open_store_hides_passwords_in_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        open_store("mysql://admin:hunter2@db.example/ci", str(tmp_path))
    assert "hunter2" not in str(e.value)
    assert e.value.value == "mysql://admin:***@db.example/ci"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_store_postgres_urls(scheme: str, postgres_database: str, tmp_path: Path) -> None:
    url = scheme + postgres_database.removeprefix("postgresql")
    store = open_store(url, str(tmp_path))
    try:
        assert type(store).__name__ == "PostgresStore"
        assert store.list_pipelines() == []
    finally:
        store.close()


# -- signatures -----------------------------------------------------------------


def _store_methods() -> list[str]:
    return [name for name, value in vars(Store).items() if inspect.isfunction(value) and not name.startswith("_")]


def test_backends_match_the_protocol() -> None:
    from web_node.store import PostgresStore

    for backend in (SqliteStore, PostgresStore):
        for name in _store_methods():
            assert inspect.signature(getattr(backend, name)) == inspect.signature(getattr(Store, name)), (backend, name)


def test_async_mirrors_store() -> None:
    for name in _store_methods():
        method = getattr(AsyncStore, name)
        assert inspect.iscoroutinefunction(method), name
        assert inspect.signature(method) == inspect.signature(getattr(Store, name)), name


# -- AsyncStore -------------------------------------------------------------------


async def test_async_store_round_trip(tmp_path: Path) -> None:
    async with AsyncStore(open_store(f"sqlite://{tmp_path}/node.db", str(tmp_path))) as store:
        await store.set_pipeline("p", {}, [JobConfig(name="unit", steps=(StepConfig(run="true"),))])
        build = await store.create_build("p", "unit", "manual", T0)

        # Many tasks at once: the limiter runs one call at a time on the one connection.
        async def append(i: int) -> None:
            await store.append_event(build.id, "log", {"i": i}, T0)

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(append, i)
        events = await store.list_events(build.id)
        assert [e.seq for e in events] == list(range(1, 21))
        assert sorted(e.payload["i"] for e in events) == list(range(20))

        claimed = await store.claim_pending_build("w", T0 + 1)
        assert claimed is not None and claimed.id == build.id
        assert (await store.list_all_jobs())[0].latest_build == claimed
        with pytest.raises(NotFound):
            await store.get_build(build.id + 1)


async def test_async_store_keeps_the_loop_free(tmp_path: Path) -> None:
    """While a store call blocks (here: on a write lock another connection holds), other tasks run."""
    path = tmp_path / "node.db"
    store = AsyncStore(SqliteStore(str(path)))
    await store.migrate()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        async with trio.open_nursery() as writes:
            writes.start_soon(store.set_pipeline, "p", {}, [])
            await trio.sleep(0.2)
            assert ticks >= 5  # the loop ran while the write waited for the lock
            other.execute("COMMIT")
        nursery.cancel_scope.cancel()
    assert [p.name for p in await store.list_pipelines()] == ["p"]
    other.close()
    await store.close()
