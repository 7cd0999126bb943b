"""SIGHUP: the config file is read again and applied to one running node:
limits in place (same pid), a bad file refused, members switched off and on,
a group that gave up brought back, a member's new settings applied by a restart."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from node_helpers import free_port
from supervisor_nodes import (
    GRACE_S,
    Node,
    alive,
    cgroup_procs,
    disabled,
    group_exists,
    memory_limit,
    module_node,
    node_toml,
)

MiB = 1024**2


def config(*, backend_max: str = "256M", gateway: bool = True, ui_max: str = "20M",
           backend_key: str = "memory_max", api_port: int | None = None) -> dict[str, Any]:
    members: dict[str, dict[str, Any]] = {**disabled("build-tracker", "gc", "syslog-drainer"), "gateway": {"enabled": gateway}}
    if api_port is not None:
        members["api"] = {"listen": f"127.0.0.1:{api_port}"}
    return {
        "members": members,
        "groups": {
            "backend": {"members": ["scheduler"], backend_key: backend_max},
            # Too small to start: gives up at once (restart_limit = 0) until a reload gives it room.
            "ui": {"memory_max": ui_max, "restart_limit": 0},
        },
    }


def render(node: Node, **kwargs: Any) -> str:
    return node_toml(data_dir=node.data_dir, cgroup_root=node.cgroup_root, ports=node.ports, grace=f"{GRACE_S:g}s",
                     **config(**kwargs))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    members = {**disabled("build-tracker", "gc", "syslog-drainer")}
    groups = {"backend": {"members": ["scheduler"], "memory_max": "256M"}, "ui": {"memory_max": "20M", "restart_limit": 0}}
    with module_node(tmp_path_factory.mktemp("node"), "web", members=members, groups=groups) as n:
        n.wait_up(["api", "backend", "gateway"], timeout=60)
        n.wait_state("ui", "gave-up", timeout=30)
        yield n


def test_real_kernel_sighup_with_a_new_memory_max_changes_the_kernel_limit_in_place(node: Node) -> None:
    before = node.wait_up(["api", "backend", "gateway"])
    new_lines = node.reload(render(node, backend_max="300M"))
    assert memory_limit(node.cgroup_root, "backend") == 300 * MiB
    after = node.groups()
    assert after["backend"]["pid"] == before["backend"]["pid"], new_lines
    assert after["backend"]["memory_limit_bytes"] == 300 * MiB
    assert after["backend"]["limits"] == "memory_max=300 MiB"
    assert f"group backend limits changed in place (pid {before['backend']['pid']} kept)" in new_lines
    assert "memory_max=300 MiB" in new_lines
    for name in ("api", "gateway"):
        assert after[name]["pid"] == before[name]["pid"]

    node.reload(render(node, backend_max="128M"))
    assert memory_limit(node.cgroup_root, "backend") == 128 * MiB
    assert node.groups()["backend"]["pid"] == before["backend"]["pid"]


def test_real_kernel_sighup_with_a_bad_config_is_refused_and_the_old_limits_stay(node: Node) -> None:
    before = node.wait_up(["api", "backend", "gateway"])
    limit = memory_limit(node.cgroup_root, "backend")
    new_lines = node.reload(render(node, backend_max="64M", backend_key="memry_max"))
    assert "reload refused, the node keeps its running configuration" in new_lines, new_lines
    assert "memry_max" in new_lines and "did you mean 'memory_max'" in new_lines, new_lines
    assert node.proc.proc.poll() is None
    assert memory_limit(node.cgroup_root, "backend") == limit
    after = node.groups()
    assert {n: g["pid"] for n, g in after.items()} == {n: g["pid"] for n, g in before.items()}
    assert after["backend"]["memory_limit_bytes"] == limit
    # A good file is taken again afterwards.
    node.reload(render(node, backend_max="200M"))
    assert memory_limit(node.cgroup_root, "backend") == 200 * MiB


def test_real_kernel_sighup_disabling_a_member_stops_its_group_and_enabling_starts_it(node: Node) -> None:
    before = node.wait_up(["api", "backend", "gateway"])
    old = before["gateway"]["pid"]
    limit = f"{memory_limit(node.cgroup_root, 'backend') // MiB}M"

    new_lines = node.reload(render(node, backend_max=limit, gateway=False))
    assert "reload: group gateway stops" in new_lines, new_lines
    groups = node.wait_groups(lambda g: "gateway" not in g, "gateway gone from the status")
    assert not alive(old)
    assert not group_exists(node.cgroup_root, "gateway")
    assert groups["api"]["pid"] == before["api"]["pid"] and groups["backend"]["pid"] == before["backend"]["pid"]

    new_lines = node.reload(render(node, backend_max=limit, gateway=True))
    assert "reload: group gateway starts" in new_lines, new_lines
    new = node.wait_up(["gateway"], timeout=30)["gateway"]["pid"]
    assert new != old
    assert cgroup_procs(node.cgroup_root, "gateway") == [new]
    httpx.get(node.url("gateway"), timeout=10)  # its socket answers again (any status)
    after = node.groups()
    assert after["api"]["pid"] == before["api"]["pid"] and after["backend"]["pid"] == before["backend"]["pid"]


def test_real_kernel_sighup_brings_back_a_group_that_gave_up_once_its_limit_is_fixed(node: Node) -> None:
    """The give-up line tells the operator: "fix the cause, then restart the node
    or send it SIGHUP". Raising the too-small memory_max and sending SIGHUP must
    start the group again."""
    ui = node.wait_state("ui", "gave-up", timeout=30)
    assert "OOM at limit 20 MiB" in ui["last_exit"]
    assert "send it SIGHUP" in node.log()
    limit = f"{memory_limit(node.cgroup_root, 'backend') // MiB}M"
    node.reload(render(node, backend_max=limit, ui_max="200M"))
    assert memory_limit(node.cgroup_root, "ui") == 200 * MiB
    node.wait_up(["ui"], timeout=10)
    httpx.get(node.url("ui"), timeout=10)


def test_real_kernel_sighup_with_a_new_listen_address_restarts_the_member_there(node: Node) -> None:
    before = node.wait_up(["api", "backend"])
    old_port = node.ports["api"]
    new_port = free_port()
    limit = f"{memory_limit(node.cgroup_root, 'backend') // MiB}M"
    ui_max = f"{memory_limit(node.cgroup_root, 'ui') // MiB}M"
    new_lines = node.reload(render(node, backend_max=limit, ui_max=ui_max, api_port=new_port))
    assert "group api restarts" in new_lines, new_lines
    api = node.wait_restarted("api", before["api"]["pid"], timeout=30)
    r = httpx.get(f"http://127.0.0.1:{new_port}/api/v1/info", timeout=10)
    assert r.status_code == 200 and r.json().get("pid") == api["pid"], (r.status_code, r.text, new_lines)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{old_port}/api/v1/info", timeout=5)
    assert node.groups()["backend"]["pid"] == before["backend"]["pid"]
    node.ports["api"] = new_port  # what the config file now says
