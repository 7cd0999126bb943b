"""Plain helpers of the tests (no fixtures): free ports, cgroup roots of a test's
own, and real web-node processes that are always stopped, process group and all.

tests/conftest.py builds its fixtures on these; helper modules of the test
folders import them with ``from node_helpers import ...`` (tests/ is on
sys.path: pytest's default "prepend" import mode and tests/conftest.py)."""

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import cgroups


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


#: Set to 1 to skip (instead of fail) the tests that need real, writable cgroups.
NO_CGROUPS_ENV = "WEB_NODE_TEST_NO_CGROUPS"
#: Stretches the waits for nodes and groups to come up (not the assertions on how long something
#: took): tools/v2-guest-tests sets it, as Python starts ~10x slower under QEMU's emulation there.
TIME_SCALE = float(os.environ.get("WEB_NODE_TEST_TIME_SCALE", "1"))
#: Set to 1 by tools/v2-guest-tests inside the pure cgroup v2 guest: every selected test must run there.
REQUIRE_V2_ENV = "WEB_NODE_REQUIRE_V2"


def real_cgroups_problem() -> str | None:
    """Why this process cannot make real cgroups with memory limits here, or None when it can.

    Any layout will do (v2, hybrid, v1): the tests read the kernel through
    the ``cgroups`` library, which knows where each layout keeps a file."""
    import cgroups

    if os.geteuid() != 0:
        return "not root (the tests create cgroups and move processes into them)"
    layout = cgroups.detect_layout()
    if layout.kind == "none":
        return "no cgroup filesystem is mounted"
    if not layout.writable:
        return "cgroups are not writable here: " + " ".join(layout.problems)
    if "memory" not in layout.controllers:
        return "no memory controller is usable here: " + " ".join(layout.problems)
    return None


def require_real_cgroups() -> None:
    """Fail the calling test when real cgroups are unavailable; skip only on the explicit opt-out."""
    import pytest

    problem = real_cgroups_problem()
    if problem is None:
        return
    if os.environ.get(NO_CGROUPS_ENV) == "1":
        pytest.skip(f"needs real cgroups: {problem} ({NO_CGROUPS_ENV}=1)")
    pytest.fail(f"this test needs real cgroups, and {problem}. Run the tests as root on a host with writable "
                f"cgroups (v2, hybrid or v1), or set {NO_CGROUPS_ENV}=1 to skip them", pytrace=False)


def group_cgroup(root: str, group: str) -> cgroups.Cgroup:
    """The ``cgroups.Cgroup`` of ``group`` below the absolute cgroup root ``root``, on whatever layout this host has."""
    import cgroups

    return cgroups.CgroupTree(cgroups.detect_layout(), root).leaf(group)


def cgroup_dirs_left(root: str) -> list[str]:
    """Every directory still there below (or at) the absolute cgroup root ``root``, in every hierarchy."""
    import cgroups

    left = []
    for top_dir in dict.fromkeys(cgroups.CgroupTree(cgroups.detect_layout(), root).paths().values()):
        top = Path(top_dir)
        if top.is_dir():
            left += [str(top)] + [str(p) for p in top.rglob("*") if p.is_dir()]
    return left


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
        stop_session(self.proc, 15)
        self._log.close()


def stop_session(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """End the session ``proc`` leads (it was started with ``start_new_session=True``):
    SIGTERM the process group, wait up to ``timeout`` s, then SIGKILL the group
    whatever happened, so that no grandchild outlives the test."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # Also after a clean exit of the leader: children it left in its group get the SIGKILL.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def have(command: str) -> bool:
    return shutil.which(command) is not None
