"""``node.database`` URL to a ready store."""

from __future__ import annotations

import os

from ..errors import ConfigError
from ._interface import Store
from ._sqlite import SqliteStore

VALID_DATABASES = "sqlite:///path or postgresql://user@host/db"


def _redact(url: str) -> str:
    from ._redact import redact_database_url

    return redact_database_url(url)


def _sqlite_path(database: str, data_dir: str) -> str | None:
    rest = database[len("sqlite://") :]
    if rest == ":memory:":
        return rest
    if rest.startswith("/"):
        return rest if rest.strip("/") else None  # sqlite:/// names no file
    if not rest:
        return None
    return os.path.abspath(os.path.join(data_dir, rest))


def open_store(database: str, data_dir: str) -> Store:
    """Open the database named by ``node.database`` and bring its schema up to date.

    ``sqlite:///abs/path.db`` is an absolute path, ``sqlite://name.db`` a path
    relative to ``data_dir`` (``sqlite://:memory:`` a private in-memory
    database, for tests); ``postgresql://...`` or ``postgres://...`` is a
    libpq URL. Anything else raises :class:`~web_node.errors.ConfigError`.
    """
    store: Store
    if database.startswith("sqlite://"):
        path = _sqlite_path(database, data_dir)
        if path is None:
            raise ConfigError(
                f"node.database = {database!r} names no SQLite file; use sqlite:///absolute/path.db, "
                f"or sqlite://name.db for a file in node.data_dir ({data_dir})",
                key="node.database",
                value=database,
                valid=VALID_DATABASES,
            )
        store = SqliteStore(path)
    elif database.startswith(("postgresql://", "postgres://")):
        from ._postgres import PostgresStore

        store = PostgresStore(database)
    else:
        shown = _redact(database)
        raise ConfigError(
            f"node.database = {shown!r} is not a database URL web-node understands; use {VALID_DATABASES}",
            key="node.database",
            value=shown,
            valid=VALID_DATABASES,
        )
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store
