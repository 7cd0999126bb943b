"""Who may read the node's files: the data dir 0700, the SQLite database, its WAL and
shared-memory files 0600, also when an older version left them readable by all."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from web_node.privilege import current_user, prepare_data_dir
from web_node.store import JobConfig, StepConfig, open_store


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_something(db: Path) -> None:
    store = open_store(f"sqlite:///{db}", str(db.parent))
    try:
        store.set_pipeline("p", {}, [JobConfig("j", (StepConfig("true"),), timeout_s=60)])
        store.create_build("p", "j", "manual", time.time())
        assert (db.parent / f"{db.name}-wal").exists()  # still open: WAL and SHM are there to be looked at
        for name in (db.name, f"{db.name}-wal", f"{db.name}-shm"):
            assert _mode(db.parent / name) == 0o600, name
    finally:
        store.close()


def test_a_new_database_and_its_wal_are_private(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # what a shell gives: without our care the files would be 0644
    try:
        _write_something(tmp_path / "node.db")
    finally:
        os.umask(old_umask)


def test_a_database_left_readable_is_narrowed(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    _write_something(db)
    for name in ("node.db", "node.db-wal", "node.db-shm"):
        if (tmp_path / name).exists():
            (tmp_path / name).chmod(0o644)
    _write_something(db)


def test_the_data_dir_is_made_private_and_stays_its_owners(tmp_path: Path) -> None:
    fresh = tmp_path / "a" / "data"
    prepare_data_dir(str(fresh), None)
    assert _mode(fresh) == 0o700 and fresh.stat().st_uid == current_user().uid
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    prepare_data_dir(str(loose), None)
    assert _mode(loose) == 0o700
