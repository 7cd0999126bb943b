"""The node's own life: SIGTERM leaves nothing behind, SIGKILL takes the
children along and the next start cleans up, one node per data_dir (and per
cgroup root), and a node whose every group gave up exits 1."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from supervisor_nodes import (
    BACKEND,
    GRACE_S,
    Node,
    alive,
    cgroup_dirs_left,
    cgroup_procs,
    disabled,
    group_exists,
    new_ports,
    start,
    wait_until,
)

TWO_GROUPS: dict[str, Any] = {
    "members": disabled("ui", "gateway"),
    "groups": {"backend": {"members": list(BACKEND), "memory_max": "256M"}},
}


def test_real_kernel_sigterm_stops_every_group_and_removes_the_cgroups(new_node: Callable[..., Node]) -> None:
    node = new_node("web", **TWO_GROUPS)
    pids = [g["pid"] for g in node.wait_up(["api", "backend"], timeout=60).values()]
    assert group_exists(node.cgroup_root, "api")
    began = time.monotonic()
    code = node.proc.terminate(timeout=GRACE_S + 15)
    took = time.monotonic() - began
    assert code == 0, node.log()
    assert took < GRACE_S + 0.5, f"the node took {took:.1f} s to stop with a grace of {GRACE_S} s"
    assert [p for p in pids if alive(p)] == []
    assert cgroup_dirs_left(node.cgroup_root) == []
    assert not (node.data_dir / "node.sock").exists()
    log = node.log()
    assert "received SIGTERM" in log and "stopped: every group ended, cgroups removed" in log


def test_real_kernel_a_group_that_does_not_stop_on_sigterm_is_killed_after_the_grace(
        new_node: Callable[..., Node]) -> None:
    """The one escalation path: SIGTERM, the grace, then everything in the cgroup is killed."""
    node = new_node("api")
    api = node.wait_up(["api"], timeout=60)["api"]["pid"]
    os.kill(api, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    began = time.monotonic()
    code = node.proc.terminate(timeout=GRACE_S + 15)
    took = time.monotonic() - began
    log = node.log()
    assert code == 0, log
    assert GRACE_S - 0.2 < took < GRACE_S + 1.5, f"stopped after {took:.1f} s with a grace of {GRACE_S} s"
    assert f"group api (pid {api}) did not stop within {GRACE_S:.1f} s of SIGTERM: killing everything in its cgroup" in log
    assert not alive(api)
    assert cgroup_dirs_left(node.cgroup_root) == []


def test_real_kernel_sigkill_of_the_node_takes_the_children_and_the_next_start_cleans_up(
        new_node: Callable[..., Node]) -> None:
    first = new_node("web", **TWO_GROUPS)
    old = {name: g["pid"] for name, g in first.wait_up(["api", "backend"], timeout=60).items()}
    os.kill(first.pid, signal.SIGKILL)
    killed = time.monotonic()
    first.proc.proc.wait(5)
    # Each child notices EOF on its lifeline socket and exits by itself.
    wait_until(lambda: not any(alive(p) for p in old.values()), 2.0,
               f"every child of the SIGKILLed node gone ({old})")
    assert time.monotonic() - killed < 2.0
    assert "the node process is gone: this group stops now" in first.log()
    left = [name for name in old if group_exists(first.cgroup_root, name)]

    second = new_node("web", like=first)
    new = {name: g["pid"] for name, g in second.wait_up(["api", "backend"], timeout=60).items()}
    log = second.log()
    if left:
        assert "removed stale cgroups of an earlier run" in log, log
        for name in left:
            assert name in log.split("removed stale cgroups", 1)[1].splitlines()[0]
    for name, pid in new.items():
        assert pid != old[name]
        assert cgroup_procs(second.cgroup_root, name) == [pid]
    assert httpx.get(second.url("api", "/api/v1/info"), timeout=10).json()["pid"] == new["api"]


def test_real_kernel_a_second_node_on_the_same_data_dir_is_refused(
        new_node: Callable[..., Node], start_node: Any, tmp_path: Path) -> None:
    first = new_node("api")
    api = first.wait_up(["api"], timeout=60)["api"]["pid"]
    # Same data_dir and cgroup root, other ports: only the data_dir lock can refuse it.
    second = start(tmp_path, "api", data_dir=first.data_dir, cgroup_root=first.cgroup_root, ports=new_ports(),
                   launch=start_node)
    code = second.proc.proc.wait(20)
    assert code == 1, second.log()
    log = second.log()
    assert f"another web-node (pid {first.pid}) is already running with data_dir {first.data_dir}" in log, log
    assert "Traceback" not in log
    # The first node did not notice.
    assert first.groups()["api"]["pid"] == api and alive(api)
    assert cgroup_procs(first.cgroup_root, "api") == [api]
    assert httpx.get(first.url("api", "/api/v1/info"), timeout=10).json()["pid"] == api


def test_real_kernel_a_second_node_on_the_same_cgroup_root_leaves_the_first_alone(
        new_node: Callable[..., Node], start_node: Any, tmp_path: Path) -> None:
    """Another data_dir but the same cgroup_root (two copies of one config, or the
    default "web-node" root for two nodes started from one shell): the second
    node must not take the first one's live groups for stale ones and kill them."""
    first = new_node("api")
    api = first.wait_up(["api"], timeout=60)["api"]["pid"]
    other_dir = tmp_path / "other-data"
    other_dir.mkdir()
    second = start(tmp_path, "api", data_dir=other_dir, cgroup_root=first.cgroup_root, ports=new_ports(),
                   launch=start_node)
    # Refused (exits), or runs: then it has either killed the first one's group or it says it is up.
    wait_until(lambda: second.proc.proc.poll() is not None or not alive(api) or "groups up in" in second.log(),
               30.0, "the second node to exit or come up")
    time.sleep(0.5)  # a wrong cleanup would show by now
    code = second.proc.proc.poll()
    assert alive(api) and first.groups()["api"]["pid"] == api, (
        f"the second node killed the first one's api group:\n--- first ---\n{first.log()}\n--- second ---\n{second.log()}")
    assert cgroup_procs(first.cgroup_root, "api") == [api]
    assert code not in (None, 0), f"the second node runs on a cgroup root in use:\n{second.log()}"
    assert first.cgroup_root in second.log()


def test_real_kernel_the_node_exits_1_when_every_group_gave_up(new_node: Callable[..., Node]) -> None:
    node = new_node("gc", groups={"gc": {"memory_max": "20M", "restart_limit": 0}})
    code = node.proc.proc.wait(60)
    log = node.log()
    assert code == 1, log
    assert "killed by SIGKILL: OOM at limit 20 MiB" in log
    assert "every group gave up (gc)" in log
    assert cgroup_dirs_left(node.cgroup_root) == []
