"""The embedded backend: one SQLite file, shared by every group of the node.

Several OS processes write the same file at once, so:

* WAL journal: readers never wait for the writer, and the writer never waits
  for readers.
* Every write transaction starts with ``BEGIN IMMEDIATE``: it takes the write
  lock up front, so two transactions never both read and then both try to
  upgrade to writing (a deadlock SQLite would answer with an immediate
  "database is locked" that no busy timeout can wait out).
* A busy timeout (10 s by default) lets SQLite wait for another process's write
  transaction; the few busy answers that skip that wait (WAL recovery, a
  stale snapshot) are retried here, with a short randomized backoff, until the
  same deadline. Past it the caller gets a :class:`StoreError` that names the
  file and says what to look for.
* Transactions are short: one store call each (retention deletes in batches).
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from ..errors import StoreError
from ._sql import Row, SqlStore, Tx

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_S = 10.0

_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _is_busy(error: sqlite3.OperationalError) -> bool:
    # sqlite_errorcode may be an extended code (SQLITE_BUSY_SNAPSHOT = 517):
    # the primary code is its low byte.
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _BUSY_CODES
    message = str(error)
    return "database is locked" in message or "database table is locked" in message


def _make_private(path: str) -> None:
    """The database file 0600 before SQLite opens it: SQLite gives the WAL and
    shared-memory files the database's own mode (and owner, when run as root).
    Files of ours left looser by an older version are narrowed; other users'
    files are left to SQLite's own error."""
    with contextlib.suppress(FileExistsError, PermissionError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    for name in (path, f"{path}-wal", f"{path}-shm"):
        with contextlib.suppress(OSError):
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return self._conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def execute_many(self, sql: str, params: Iterable[Sequence[object]]) -> None:
        self._conn.executemany(sql, params)


class SqliteStore(SqlStore):
    """The store in one SQLite file (``":memory:"`` for a private in-memory database).

    One connection per store; the store is safe to share between threads (a
    lock serializes calls) and between OS processes (SQLite's file locks).
    """

    backend = "sqlite"

    def __init__(self, path: str, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._conn = self._with_retry(self._connect)
        self._pid = os.getpid()
        self._inherited: list[sqlite3.Connection] = []

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            parent = os.path.dirname(os.path.abspath(self.path))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as e:
                raise StoreError(
                    f"cannot create the directory {parent} for the SQLite database {self.path}: {e.strerror}; "
                    "check node.database and node.data_dir",
                    backend=self.backend,
                ) from e
            _make_private(self.path)
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_s,
            # We issue BEGIN/COMMIT ourselves: the sqlite3 module's implicit
            # transactions would start them DEFERRED.
            isolation_level=None,
            # AsyncStore calls us from trio's worker threads; self._lock (and the
            # AsyncStore's limiter) make sure only one uses the connection.
            check_same_thread=False,
        )
        try:
            # Persistent in the file; the first process to open it switches it.
            conn.execute("PRAGMA journal_mode = WAL")
            # With WAL, NORMAL never corrupts the file; a power cut may lose
            # the last transactions, which for build records is acceptable.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def _with_retry(self, fn: Callable[[], T]) -> T:
        """Call ``fn``, retrying while SQLite answers busy, until the busy timeout has passed."""
        deadline = time.monotonic() + self.busy_timeout_s
        backoff_s = 0.002
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if not _is_busy(e):
                    raise self._error(e) from e
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"the SQLite database {self.path} stayed locked for more than {self.busy_timeout_s:g} s: "
                        "another process kept a write transaction open that long. Look for a stuck web-node "
                        "process or a tool (sqlite3 shell, backup) holding the file; for several nodes use "
                        "PostgreSQL (node.database = postgresql://...)",
                        backend=self.backend,
                    ) from e
                # Randomized so that processes that collided do not collide again.
                time.sleep(backoff_s * random.uniform(0.5, 1.5))
                backoff_s = min(backoff_s * 2, 0.1)
            except sqlite3.Error as e:
                raise self._error(e) from e

    def _error(self, e: sqlite3.Error) -> StoreError:
        return StoreError(f"SQLite database {self.path} failed: {e}", backend=self.backend)

    def _run(self, fn: Callable[[Tx], T], *, write: bool) -> T:
        with self._lock:
            if self._conn is None:
                raise StoreError(f"the store for {self.path} is closed", backend=self.backend)
            if self._pid != os.getpid():
                # Forked after opening: SQLite connections must not cross a
                # fork, so the child opens its own. The parent's is kept, never
                # used or closed here: closing it would act on the parent's locks.
                self._inherited.append(self._conn)
                self._conn = self._with_retry(self._connect)
                self._pid = os.getpid()
            conn = self._conn

            def attempt() -> T:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = fn(_SqliteTx(conn))
                    conn.execute("COMMIT")
                except BaseException:
                    # SQLite may already have rolled back on its own (e.g. disk full).
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result

            return self._with_retry(attempt)
