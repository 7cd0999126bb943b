"""Persistence: pipelines, jobs, builds and their events, workers, components.

The front door of the store package::

    store = open_store(config.node.database, config.node.data_dir)   # migrated, ready
    astore = AsyncStore(store)                                       # for trio code
    build = await astore.create_build("main", "unit", "manual", time.time())

Backends: :class:`SqliteStore` (embedded default, one file shared by every
group of a node) and :class:`PostgresStore` (several nodes on one database).
Both implement :class:`Store` and raise :class:`web_node.errors.StoreError`
(:class:`~web_node.errors.NotFound` for a missing record).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._async import AsyncStore
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
    Store,
    Worker,
)
from ._open import open_store
from ._redact import redact_database_url
from ._sqlite import SqliteStore

if TYPE_CHECKING:
    from ._postgres import PostgresStore

__all__ = [
    "FINISHED_STATUSES",
    "AsyncStore",
    "Build",
    "BuildEnd",
    "BuildEvent",
    "BuildStatus",
    "Component",
    "EventBatch",
    "Job",
    "JobConfig",
    "JobSummary",
    "Pipeline",
    "PostgresStore",
    "SqliteStore",
    "StepConfig",
    "Store",
    "Worker",
    "open_store",
    "redact_database_url",
]


def __getattr__(name: str) -> object:
    # PostgresStore imports psycopg (0.15 s, several MB): only processes that
    # use PostgreSQL pay for it.
    if name == "PostgresStore":
        from ._postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
