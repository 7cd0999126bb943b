"""Fixtures for the cgroups tests: fixture hosts (v2, v1, hybrid) and real-kernel trees.

Real-kernel fixtures fail when this host has no real, writable cgroups
(``WEB_NODE_TEST_NO_CGROUPS=1`` skips them instead; tests/conftest.py), and
create a tree with a unique root name per test
(``web-node-test-<pid>-<random>``, other people run tests on the same
machine) and tear it down in a ``finally`` that kills and removes whatever
is left, also when the test failed half-way.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _import_the_real_package() -> None:
    """This directory is named like the package. With tests/ on sys.path
    (pytest's default "prepend" import mode and a tests/conftest.py),
    ``import cgroups`` finds tests/cgroups as a namespace package before the
    editable install's finder is asked. Put the repository first."""
    cached = sys.modules.get("cgroups")
    if cached is not None and getattr(cached, "__file__", None) is None:
        for name in [n for n in sys.modules if n == "cgroups" or n.startswith("cgroups.")]:
            del sys.modules[name]
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


_import_the_real_package()

from node_helpers import require_real_cgroups  # noqa: E402

from cgroups import CgroupTree, Layout, detect_layout  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass(frozen=True)
class FixtureHost:
    """A copy of a fixture tree: ``sys_root`` stands for /sys/fs/cgroup, ``proc_root`` for /proc."""

    base: Path

    @property
    def sys_root(self) -> str:
        return str(self.base / "sys" / "fs" / "cgroup")

    @property
    def proc_root(self) -> str:
        return str(self.base / "proc")

    def layout(self) -> Layout:
        return detect_layout(sys_root=self.sys_root, proc_root=self.proc_root)

    def path(self, rel: str) -> Path:
        """A file below sys_root."""
        return Path(self.sys_root) / rel

    def read(self, rel: str) -> str:
        return self.path(rel).read_text()

    def write(self, rel: str, text: str) -> None:
        self.path(rel).write_text(text)

    def proc(self, rel: str) -> Path:
        return Path(self.proc_root) / rel


def _copy(name: str, tmp_path: Path) -> FixtureHost:
    dest = tmp_path / name
    shutil.copytree(FIXTURES / name, dest, symlinks=True)
    return FixtureHost(dest)


@pytest.fixture
def v2_host(tmp_path: Path) -> FixtureHost:
    """A pure cgroup v2 host (systemd, node in /system.slice/web-node.service)."""
    return _copy("v2", tmp_path)


@pytest.fixture
def v1_host(tmp_path: Path) -> FixtureHost:
    """A cgroup v1 host (cpu,cpuacct co-mounted, name=systemd, no cgroup2)."""
    return _copy("v1", tmp_path)


@pytest.fixture
def hybrid_host(tmp_path: Path) -> FixtureHost:
    """A hybrid host: v1 controllers plus a controller-less cgroup2 at /sys/fs/cgroup/unified."""
    return _copy("hybrid", tmp_path)


# -- real kernel -------------------------------------------------------------------


@pytest.fixture
def real_layout() -> Layout:
    require_real_cgroups()
    return detect_layout()


def unique_root() -> str:
    return f"web-node-test-{os.getpid()}-{secrets.token_hex(4)}"


@pytest.fixture
def real_tree(real_layout: Layout) -> Iterator[CgroupTree]:
    """A created tree with a unique root; destroyed (and scrubbed) afterwards."""
    tree = CgroupTree(real_layout, unique_root())
    try:
        tree.create()
        yield tree
    finally:
        scrub(tree)


def scrub(tree: CgroupTree) -> None:
    """Remove the tree whatever state a failed test left it in; fail if that is impossible."""
    try:
        tree.destroy()
    except Exception:
        pass
    for d in tree.paths().values():
        _force_remove(d)
    left = [d for d in tree.paths().values() if os.path.exists(d)]
    assert not left, f"test cgroups left behind: {left}"


def _force_remove(d: str) -> None:
    if not os.path.isdir(d):
        return
    for _ in range(100):
        pids: set[int] = set()
        for root, _dirs, _files in os.walk(d):
            try:
                pids.update(int(p) for p in Path(root, "cgroup.procs").read_text().split())
            except OSError:
                pass
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    for root, _dirs, _files in os.walk(d, topdown=False):
        try:
            os.rmdir(root)
        except OSError:
            pass


@pytest.fixture
def spawn(real_tree: CgroupTree) -> Iterator[Callable[..., subprocess.Popen[Any]]]:
    """Start processes that are killed and reaped before the tree is torn down."""
    started: list[subprocess.Popen[Any]] = []

    def start(argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(argv, **kwargs)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
