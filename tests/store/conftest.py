"""A real PostgreSQL server for the store tests, and the two-backend fixtures.

``postgres_url`` starts one throw-away server per test session from Debian's
``postgresql`` package binaries: a fresh cluster in a temporary directory,
listening on 127.0.0.1 on a free port (its unix socket inside that directory,
so nothing touches /var/run/postgresql), durability switched off for speed.
PostgreSQL refuses to run as root, so as root it runs as the ``postgres``
system user that the package creates. Teardown stops it with
``pg_ctl stop -m immediate`` and removes the directory, also when tests fail.

Missing binaries fail the tests (run ``make deps``); set
``WEB_NODE_TEST_NO_POSTGRES=1`` to skip the PostgreSQL half for a quick run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from node_helpers import free_port

from web_node.store import open_store
from web_node.store._sql import SqlStore

NO_POSTGRES_ENV = "WEB_NODE_TEST_NO_POSTGRES"
BACKENDS = ["sqlite", "postgresql"]


def _postgres_bindir() -> Path | None:
    """The newest installed server version's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if (d / "pg_ctl").exists() and (d / "postgres").exists()]
    if not found:
        return None
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


class _Cluster:
    def __init__(self, bindir: Path, base: Path) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.log = base / "server.log"
        self.started = False
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail(
                    "PostgreSQL refuses to run as root and there is no 'postgres' system user to run it as; "
                    "run `make deps` (the postgresql package creates it)",
                    pytrace=False,
                )
            os.chown(base, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        else:
            self.prefix = []

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *args], cwd=self.base, capture_output=True, text=True, timeout=timeout, check=False
        )

    def initdb(self) -> None:
        done = self.run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )
        if done.returncode != 0:
            pytest.fail(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}", pytrace=False)

    def start(self, port: int) -> bool:
        options = " ".join([
            "-c listen_addresses=127.0.0.1", f"-p {port}", f"-k {self.base}",
            # A throw-away cluster: durability buys nothing and costs seconds.
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c max_connections=50",
        ])
        done = self.run(
            str(self.bindir / "pg_ctl"), "start", "-w", "-t", "30", "-D", str(self.data),
            "-l", str(self.log), "-o", options,
        )
        self.started = self.started or done.returncode == 0 or (self.data / "postmaster.pid").exists()
        return done.returncode == 0

    def stop(self) -> None:
        if self.started:
            self.run(str(self.bindir / "pg_ctl"), "stop", "-m", "immediate", "-w", "-t", "30", "-D", str(self.data))

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no server log)"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a superuser connection to a PostgreSQL server started for this session."""
    if os.environ.get(NO_POSTGRES_ENV) == "1":
        pytest.skip(f"{NO_POSTGRES_ENV}=1: PostgreSQL backend not tested")
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.fail(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb, pg_ctl, postgres): "
            f"run `make deps` to install the postgresql package, or set {NO_POSTGRES_ENV}=1 to skip these tests",
            pytrace=False,
        )
    # Not pytest's tmp_path: its parents are mode 0700, closed to the postgres user.
    base = Path(tempfile.mkdtemp(prefix="web-node-pg-"))
    cluster = _Cluster(bindir, base)
    try:
        cluster.initdb()
        for _attempt in range(3):  # a free port can be taken before the server binds it
            port = free_port()
            if cluster.start(port):
                break
        else:
            pytest.fail(f"PostgreSQL did not start:\n{cluster.log_text()}", pytrace=False)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """URL of an empty database on the session's server, gone after the test.

    A schema of its own stands in for the database (``search_path`` in the
    URL): ten times faster to make than ``CREATE DATABASE``, and just as empty.
    """
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield f"{postgres_url}?options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``node.database`` of an empty database, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/node.db"
    url = request.getfixturevalue("postgres_database")
    assert isinstance(url, str)
    return url


@pytest.fixture
def store(database: str, tmp_path: Path) -> Iterator[SqlStore]:
    """An opened, migrated store of each backend."""
    s = open_store(database, str(tmp_path))
    assert isinstance(s, SqlStore)
    try:
        yield s
    finally:
        with contextlib.suppress(Exception):
            s.close()
