"""The shared backend: PostgreSQL through psycopg 3, for several nodes on one database.

One connection per store, opened at construction. Each store call is one
transaction (READ COMMITTED). A connection that the server dropped (restart,
failover, idle timeout) is replaced once per call: the call is retried on a
new connection when the failure came before COMMIT, because nothing was
applied then; a connection lost *during* COMMIT is reported, since the change
may or may not have been applied. Deadlocks and serialization failures, which
PostgreSQL rolls back as a whole, are retried too.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.errors

from ..errors import StoreError
from ._redact import redact_database_url
from ._sql import BUILD_COLUMNS, JOB_COLUMNS, Row, SqlStore, Tx, prefixed

T = TypeVar("T")

# pg_advisory_xact_lock key held while migrating: a constant of our own,
# halved to fit PostgreSQL's signed bigint.
MIGRATION_LOCK_KEY = int.from_bytes(b"web-node", "big") >> 1

_RETRIES_ON_CONFLICT = 3
_CONNECT_TIMEOUT_S = 10


def redact(url: str) -> str:
    """The URL with its password replaced by ``***``, for messages and logs (see :mod:`._redact`)."""
    return redact_database_url(url)


_QMARK = re.compile(r"\?")


@functools.lru_cache(maxsize=512)
def _to_pyformat(sql: str) -> str:
    # The shared queries use SQLite's "?" placeholders; psycopg wants "%s"
    # (and a literal "%" doubled). None of our SQL has "?" inside a literal.
    return _QMARK.sub("%s", sql.replace("%", "%%"))


class _PostgresTx:
    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self._conn = conn

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return self._conn.execute(_to_pyformat(sql), params).fetchall()

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return self._conn.execute(_to_pyformat(sql), params).rowcount

    def execute_many(self, sql: str, params: Iterable[Sequence[object]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(_to_pyformat(sql), params)


class PostgresStore(SqlStore):
    """The store in a PostgreSQL database, given as a ``postgresql://`` URL (libpq syntax)."""

    backend = "postgresql"
    _claim_lock = " FOR UPDATE SKIP LOCKED"
    _row_lock = " FOR UPDATE"
    # PostgreSQL would flatten the shared form into a hash join over every
    # build (a sequential scan of the whole table). LATERAL ... LIMIT 1 keeps
    # it at one backward index scan of builds_by_job per job.
    _list_all_jobs_sql = (
        f"SELECT {prefixed('b', BUILD_COLUMNS)}, {prefixed('j', JOB_COLUMNS)} FROM jobs j "
        "LEFT JOIN LATERAL ("
        "  SELECT * FROM builds l WHERE l.pipeline = j.pipeline AND l.job = j.name ORDER BY l.id DESC LIMIT 1"
        ") b ON TRUE"
    )

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._closed = False
        self._conn: psycopg.Connection[Row] | None = self._connect()
        self._pid = os.getpid()
        self._inherited: list[psycopg.Connection[Row]] = []

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r})"

    def _connect(self) -> psycopg.Connection[Row]:
        try:
            return psycopg.connect(
                self.url, autocommit=False, connect_timeout=_CONNECT_TIMEOUT_S, application_name="web-node"
            )
        except psycopg.Error as e:
            raise StoreError(
                f"cannot connect to PostgreSQL at {redact(self.url)}: {str(e).strip()}; "
                "check node.database and that the server is running and reachable",
                backend=self.backend,
            ) from e

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None and self._pid == os.getpid():  # not a connection inherited by fork
                self._conn.close()
            self._conn = None

    def _lock_schema(self, tx: Tx) -> None:
        # Held until the migration transaction ends; a second node migrating at
        # the same time waits here, then finds the schema up to date.
        tx.rows(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")

    def _error(self, e: BaseException, doing: str = "failed") -> StoreError:
        return StoreError(f"PostgreSQL at {redact(self.url)} {doing}: {str(e).strip()}", backend=self.backend)

    @staticmethod
    def _rollback(conn: psycopg.Connection[Any]) -> None:
        if conn.broken or conn.closed:
            return
        try:
            conn.rollback()
        except psycopg.Error:
            pass  # the connection is unusable; the next call reconnects

    def _run(self, fn: Callable[[Tx], T], *, write: bool) -> T:
        with self._lock:
            if self._closed:
                raise StoreError(f"the store for {redact(self.url)} is closed", backend=self.backend)
            if self._pid != os.getpid():
                # Forked after opening: the socket is shared with the parent.
                # Keep the inherited connection unused and unclosed (closing
                # would end the parent's session) and open one of our own.
                if self._conn is not None:
                    self._inherited.append(self._conn)
                self._conn = None
                self._pid = os.getpid()
            reconnected = False
            conflicts = 0
            while True:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                conn = self._conn
                try:
                    result = fn(_PostgresTx(conn))
                except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as e:
                    self._rollback(conn)
                    conflicts += 1
                    if conflicts < _RETRIES_ON_CONFLICT:
                        continue
                    raise self._error(e) from e
                except psycopg.OperationalError as e:
                    if conn.broken and not reconnected:
                        # Dropped before COMMIT: nothing was applied, safe to redo.
                        conn.close()
                        self._conn = None
                        reconnected = True
                        continue
                    self._rollback(conn)
                    raise self._error(e) from e
                except psycopg.Error as e:
                    self._rollback(conn)
                    raise self._error(e) from e
                except BaseException:
                    self._rollback(conn)
                    raise
                try:
                    conn.commit()
                except psycopg.Error as e:
                    self._rollback(conn)
                    if conn.broken:
                        raise self._error(
                            e, "dropped the connection during COMMIT (the change may or may not have been applied)"
                        ) from e
                    raise self._error(e) from e
                return result
