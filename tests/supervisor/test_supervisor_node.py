"""One real node (`web-node web`, four groups) shared by the module: each
group in its own cgroup with its limit in the kernel's file, a killed group
coming back alone, clients that never see a refused connection, and the
operator's views (`web-node status`, `web-node top`)."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from supervisor_nodes import (
    BACKEND,
    Node,
    alive,
    cgroup_procs,
    cli,
    group_cgroup,
    memory_limit,
    module_node,
    placed_in_group,
)

MiB = 1024**2
GROUPS = ["api", "ui", "backend", "gateway"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    groups = {"backend": {"members": list(BACKEND), "memory_max": "256M"}}
    with module_node(tmp_path_factory.mktemp("node"), "web", groups=groups) as n:
        n.wait_up(GROUPS, timeout=60)
        yield n


def listening_inode(port: int) -> str:
    """The inode of the socket listening on 127.0.0.1:PORT, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            return inode
    raise AssertionError(f"nothing listens on port {port}")


def holds_socket(pid: int, inode: str) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    return any(os.readlink(fd_dir / fd) == f"socket:[{inode}]" for fd in os.listdir(fd_dir))


def test_real_kernel_each_group_runs_in_its_own_cgroup_with_its_limit(node: Node) -> None:
    groups = node.wait_up(GROUPS)
    root = node.cgroup_root.strip("/")
    assert sorted(groups) == sorted(GROUPS)
    for name, g in groups.items():
        pid = g["pid"]
        assert placed_in_group(pid, node.cgroup_root, name) == {}, name
        assert all(d.endswith(f"/{root}/{name}") for d in group_cgroup(node.cgroup_root, name).paths().values())
        assert pid in cgroup_procs(node.cgroup_root, name)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert cmdline.startswith(f"web-node: {name}"), (name, cmdline)
        # Placed before exec: the interpreter's own start-up was charged to the group
        # (v2 memory.peak, v1 memory.max_usage_in_bytes).
        peak = group_cgroup(node.cgroup_root, name).stats().memory_peak_bytes
        assert peak is not None and peak > 15 * MiB, (name, peak)
    assert memory_limit(node.cgroup_root, "backend") == 256 * MiB
    # No limit configured: the kernel's "unlimited" (v2 "max", v1 a huge page-rounded number).
    assert memory_limit(node.cgroup_root, "api") is None
    # The node itself stays outside its groups.
    assert all(node.pid not in cgroup_procs(node.cgroup_root, name) for name in GROUPS)


def test_real_kernel_the_node_holds_the_listening_sockets(node: Node) -> None:
    node.wait_up(GROUPS)
    for member in ("api", "ui", "gateway"):
        assert holds_socket(node.pid, listening_inode(node.ports[member])), member


def test_real_kernel_kill_9_of_one_group_restarts_it_alone(node: Node) -> None:
    before = node.wait_up(GROUPS)
    old = before["ui"]["pid"]
    os.kill(old, signal.SIGKILL)
    after = node.wait_restarted("ui", old, timeout=20)
    assert after["restarts"] == 1
    assert "SIGKILL" in after["last_exit"], after
    assert not alive(old)
    assert after["pid"] in cgroup_procs(node.cgroup_root, "ui")
    assert cgroup_procs(node.cgroup_root, "ui") == [after["pid"]]
    now = node.groups()
    for name in GROUPS:
        if name != "ui":
            assert now[name]["pid"] == before[name]["pid"], f"{name} was restarted too"
            assert now[name]["restarts"] == before[name]["restarts"]
    assert f"group ui (pid {old}) killed by SIGKILL" in node.log()
    httpx.get(node.url("ui"), timeout=5)  # answers again (any status)


def test_real_kernel_clients_see_no_refused_connection_while_api_restarts(node: Node) -> None:
    """A new connection per request, for at most ~8 s, while the api group is
    killed and restarted: new connections wait in the node's backlog, so the
    client sees slower answers, never a refused connection."""
    old = node.wait_up(GROUPS)["api"]["pid"]
    url = node.url("api", "/api/v1/info")
    connect_errors: list[str] = []
    other_errors: list[str] = []
    before_kill: list[float] = []
    after_kill: list[float] = []
    pids: set[int] = set()
    began = time.monotonic()
    killed_at: float | None = None
    while time.monotonic() - began < 8.0:
        if killed_at is None and time.monotonic() - began > 1.0:
            os.kill(old, signal.SIGKILL)
            killed_at = time.monotonic()
        t0 = time.monotonic()
        try:
            r = httpx.get(url, timeout=10)
        except httpx.ConnectError as e:
            connect_errors.append(repr(e))
        except httpx.TransportError as e:
            # A request the dead child had accepted but not answered is reset: not a refusal.
            other_errors.append(repr(e))
        else:
            assert r.status_code == 200, r.text
            (after_kill if killed_at is not None else before_kill).append(time.monotonic() - t0)
            pids.add(r.json()["pid"])
            if killed_at is not None and r.json()["pid"] != old and time.monotonic() - killed_at > 1.0:
                break
        time.sleep(0.005)
    assert killed_at is not None
    assert connect_errors == [], f"refused while api restarted: {connect_errors[:3]}\n{node.log()}"
    assert len(other_errors) <= 1, other_errors
    new = node.wait_restarted("api", old, timeout=10)["pid"]
    assert new in pids, f"no answer came from the restarted api (pid {new}); answers from {pids}"
    baseline = statistics.median(before_kill)
    slowest = max(after_kill)
    assert slowest > max(0.15, 3 * baseline), (baseline, slowest)
    assert node.groups()["api"]["restarts"] >= 1


def test_real_kernel_status_text_shows_state_pid_restarts_memory(node: Node) -> None:
    groups = node.wait_up(GROUPS)
    result = cli("status", "--config", str(node.config_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"node pid {node.pid}"), lines[0]
    header = next(line for line in lines if line.startswith("GROUP"))
    for column in ("STATE", "PID", "RESTARTS", "MEMORY", "PEAK", "LIMIT", "CPU", "MEMBERS", "LAST EXIT"):
        assert column in header
    rows = {line.split()[0]: line.split() for line in lines[lines.index(header) + 1:]}
    assert sorted(rows) == sorted(GROUPS)
    for name, row in rows.items():
        assert row[1] == "up", row
        assert row[2] == str(groups[name]["pid"]), row
        assert row[3] == str(groups[name]["restarts"]), row
        assert re.fullmatch(r"\d+(\.\d)?", row[4]) and row[5] in ("MiB", "KiB"), row  # memory, e.g. "35.5 MiB"
    assert "256 MiB" in " ".join(rows["backend"])
    assert "scheduler,build-tracker,gc,syslog-drainer" in rows["backend"]


def test_real_kernel_status_json_parses(node: Node) -> None:
    node.wait_up(GROUPS)
    result = cli("status", "--json", "--config", str(node.config_path))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["node"]["pid"] == node.pid
    assert status["node"]["cgroups"] == "hybrid"
    groups = {g["name"]: g for g in status["groups"]}
    assert sorted(groups) == sorted(GROUPS)
    for name, g in groups.items():
        assert g["state"] == "up"
        assert isinstance(g["pid"], int) and alive(g["pid"])
        assert g["memory_bytes"] > 10 * MiB
        assert g["cgroup"].endswith(f"{node.cgroup_root}/{name}")
    assert groups["backend"]["memory_limit_bytes"] == 256 * MiB
    assert groups["backend"]["members"] == list(BACKEND)
    assert groups["api"]["memory_limit_bytes"] is None


def test_real_kernel_top_prints_cpu_percent_rows(node: Node) -> None:
    node.wait_up(GROUPS)
    result = cli("top", "--config", str(node.config_path), "--iterations", "2", "--interval", "0.5")
    assert result.returncode == 0, result.stderr
    blocks = [b for b in re.split(r"^(?=web-node top)", result.stdout, flags=re.M) if b.strip()]
    assert len(blocks) == 2, result.stdout
    lines = blocks[1].splitlines()
    header = lines[1].split()
    assert header[:4] == ["GROUP", "STATE", "PID", "CPU%"], header
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert sorted(rows) == sorted(GROUPS)
    for name, row in rows.items():
        assert re.fullmatch(r"\d+\.\d", row[3]), (name, row)  # a rate over the 0.5 s between refreshes


def test_status_without_a_running_node_names_the_control_socket(tmp_path: Path) -> None:
    result = cli("status", "--data-dir", str(tmp_path))
    assert result.returncode != 0
    assert str(tmp_path / "node.sock") in result.stderr, result.stderr
    assert "no web-node is running" in result.stderr
    top = cli("top", "--data-dir", str(tmp_path), "--iterations", "1")
    assert top.returncode != 0 and str(tmp_path / "node.sock") in top.stderr, top.stderr
