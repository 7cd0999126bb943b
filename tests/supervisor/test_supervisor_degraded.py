"""Degraded mode: where cgroups cannot be written, groups still run as plain
processes; one clear warning says what is missing, and status shows it.

This machine's cgroups are writable, so the node is pointed at an empty
directory instead of /sys/fs/cgroup (``WEB_NODE_CGROUP_FS``), as in a
container that mounts no cgroup filesystem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from supervisor_nodes import BACKEND, GRACE_S, alive, cgroup_dirs_left, disabled, new_ports, start


def test_without_cgroups_groups_run_as_plain_processes_and_status_says_degraded(
        start_node: Any, cgroup_root: str, data_dir: Path, tmp_path: Path) -> None:
    no_cgroups = tmp_path / "no-cgroup-fs"
    no_cgroups.mkdir()
    node = start(tmp_path, "web", data_dir=data_dir, cgroup_root=cgroup_root, ports=new_ports(),
                 launch=lambda args: start_node(args, env={"WEB_NODE_CGROUP_FS": str(no_cgroups)}),
                 members=disabled("ui", "gateway"),
                 groups={"backend": {"members": list(BACKEND), "memory_max": "256M"}})
    groups = node.wait_up(["api", "backend"], timeout=60)
    api_pid = groups["api"]["pid"]
    assert httpx.get(f"http://127.0.0.1:{node.ports['api']}/api/v1/info", timeout=5).json()["pid"] == api_pid

    status = node.status()
    assert status["node"]["degraded"], status["node"]
    assert all(g["cgroup"] is None for g in status["groups"]), status["groups"]
    log = node.log()
    assert log.count("DEGRADED: groups run as plain processes without cgroups") == 1, log
    # Nothing was created, and the child is not in a cgroup of ours.
    assert cgroup_dirs_left(node.cgroup_root) == []
    assert cgroup_root.strip("/") not in Path(f"/proc/{api_pid}/cgroup").read_text()

    assert node.proc.terminate(timeout=GRACE_S + 15) == 0, node.log()
    assert [p for p in (api_pid, groups["backend"]["pid"]) if alive(p)] == []
