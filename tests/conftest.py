"""Shared test seams: free ports, data dirs, and real web-node processes that
are always stopped (process group and cgroups) even when a test fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_cgroup_root() -> str:
    """An absolute cgroup root of this test's own, so parallel runs never meet."""
    return f"/web-node-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_cgroup_root(root: str) -> None:
    """Last-resort cleanup: kill what is left below ``root`` in every hierarchy, remove deepest first."""
    import cgroups

    for top_dir in cgroups.CgroupTree(cgroups.detect_layout(), root).paths().values():
        top = Path(top_dir)
        if not top.is_dir():
            continue
        dirs = [*sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True), top]
        for d in dirs:
            kill = d / "cgroup.kill"
            if kill.exists():
                with contextlib.suppress(OSError):
                    kill.write_text("1")
            procs = d / "cgroup.procs"
            for _ in range(50):
                try:
                    pids = [int(p) for p in procs.read_text().split()]
                except OSError:
                    break
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.02)
            with contextlib.suppress(OSError):
                d.rmdir()


class NodeProcess:
    """``web-node ARGS`` as a real child in its own session, with its log in a file."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = cwd / f"web-node-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "web_node", *args], cwd=cwd, env=full_env,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 30.0, **kwargs: Any) -> httpx.Response:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"web-node exited with {self.proc.returncode} before {url} answered:\n{self.log()}")
            try:
                return httpx.get(url, timeout=2.0, **kwargs)
            except httpx.HTTPError as e:
                last = e
                time.sleep(0.1)
        raise AssertionError(f"{url} did not answer within {timeout} s ({last}):\n{self.log()}")

    def wait_log(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not logged within {timeout} s:\n{self.log()}")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Whatever happened: end the whole session of processes we started."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def cgroup_root() -> Iterator[str]:
    root = unique_cgroup_root()
    try:
        yield root
    finally:
        remove_cgroup_root(root)


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Any]:
    """``start_node(args, config_text=None, env=None)`` -> NodeProcess, stopped at teardown."""
    started: list[NodeProcess] = []

    def start(args: list[str], config_text: str | None = None, env: dict[str, str] | None = None) -> NodeProcess:
        full = list(args)
        if config_text is not None:
            cfg = tmp_path / f"config-{len(started)}.toml"
            cfg.write_text(config_text)
            full += ["--config", str(cfg)]
        node = NodeProcess(full, cwd=tmp_path, env=env)
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            node.stop()


def have(command: str) -> bool:
    return shutil.which(command) is not None
