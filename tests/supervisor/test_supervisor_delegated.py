"""A node run the way a systemd service with ``Delegate=yes`` has it.

systemd starts the node as the only process of its service cgroup
(``<slice>/web-node.service``), which the slice offers controllers to but
which enables none itself. The node must make its groups below that cgroup
(``cgroup_root = "web-node"``, relative), enable the controllers it needs
there (on cgroup v2 after moving itself into ``web-node/supervisor``: the
"no internal processes" rule), and on stop leave the service cgroup as it
found it: no cgroup below it, nothing enabled in it. It speaks sd_notify to
the socket systemd would bind (READY=1 once both groups are up, STOPPING=1).

The whole of it is cgroup v2's and runs in the pure-v2 QEMU guest of ``make
test-v2`` (tests/v2_guest_tests.txt). On a hybrid or v1 host the same test
checks what that kernel has: groups made below the service cgroup in every
hierarchy, the limit written by the v1 controller, the tree given back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_helpers import remove_cgroup_root, stop_session, unique_cgroup_root
from supervisor_nodes import REPO_ROOT, alive, disabled, new_ports, node_toml

import cgroups

NODE_CONTROLLERS = {"memory", "cpu", "pids", "io"}
MiB = 1 << 20


@pytest.fixture
def service() -> Iterator[cgroups.Cgroup]:
    """``/<unique>.slice/web-node.service`` in every hierarchy, the slice offering the
    controllers to it as systemd's system.slice does; killed and removed afterwards."""
    layout = cgroups.detect_layout()
    slice_tree = cgroups.CgroupTree(layout, unique_cgroup_root() + ".slice")
    try:
        slice_tree.create(move_self=False)
        unit = slice_tree.leaf("web-node.service")
        unit.create()
        yield unit
    finally:
        with contextlib.suppress(Exception):
            slice_tree.destroy()
        remove_cgroup_root(slice_tree.root)


def proc_cgroups(pid: int) -> dict[str, str]:
    """/proc/PID/cgroup as {hierarchy: path}, the cgroup2 line under "unified" (the library's keys)."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for key in controllers.split(",") if controllers else ["unified"]:
            out[key] = path
    return out


def words(path: Path) -> set[str]:
    return set(path.read_text().split())


def status(data_dir: Path) -> dict[str, Any] | None:
    from web_node.errors import WebNodeError
    from web_node.supervisor import request_status

    try:
        return request_status(str(data_dir / "node.sock"))
    except (WebNodeError, OSError, ValueError):
        return None


def test_real_kernel_a_delegated_service_node_makes_its_groups_below_its_cgroup_and_gives_it_back(
        service: cgroups.Cgroup, tmp_path: Path) -> None:
    layout = cgroups.detect_layout()
    v2 = layout.kind == "v2"
    unit_dirs = service.paths()  # hierarchy -> the service cgroup's directory
    unified = Path(unit_dirs["unified"]) if "unified" in unit_dirs else None
    if v2:
        assert unified is not None
        assert NODE_CONTROLLERS <= words(unified / "cgroup.controllers")  # delegated: offered to the service ...
        assert words(unified / "cgroup.subtree_control") == set()  # ... and not enabled in it
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = tmp_path / "node.toml"
    # Two groups that need no web stack (the guest emulates its CPU): gc and scheduler, one cgroup each.
    config.write_text(node_toml(data_dir=data_dir, cgroup_root="web-node", ports=new_ports(), grace="10s",
                                members=disabled("build-tracker", "syslog-drainer"),
                                groups={"gc": {"memory_max": "200M"}}))
    log_path = tmp_path / "node.log"
    # systemd's notify socket (Type=notify), bound here as systemd binds its own.
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    with open(log_path, "wb") as log_file:
        # As systemd starts it: the node is placed in the service cgroup before it execs.
        node = subprocess.Popen(
            service.placement_argv([sys.executable, "-m", "web_node", "backend", "--config", str(config)]),
            cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    try:
        deadline = time.monotonic() + 180  # the pure-v2 guest emulates the CPU: ~10x slower
        groups: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert node.poll() is None, f"the node exited with {node.returncode}:\n{log_path.read_text()}"
            current = status(data_dir)
            groups = {g["name"]: g for g in (current or {}).get("groups", [])}
            if groups and all(g["state"] == "up" for g in groups.values()):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"groups not up: {groups}\n{log_path.read_text()}")
        assert sorted(groups) == ["gc", "scheduler"]
        notify.settimeout(60)
        assert notify.recv(4096) == b"READY=1\nSTATUS=2 of 2 groups up\n"

        # Each group's process is in <service>/web-node/<group>, in every hierarchy.
        for name, g in groups.items():
            where = proc_cgroups(g["pid"])
            for key, unit_dir in unit_dirs.items():
                mount = layout.mount_of(key)
                assert mount is not None
                expected = "/" + os.path.relpath(os.path.join(unit_dir, "web-node", name), mount)
                assert where[key] == expected, (name, key, where)
        gc = cgroups.CgroupTree(layout, "/" + os.path.relpath(unit_dirs[layout.hierarchies()[0]],
                                                                   layout.mount_of(layout.hierarchies()[0]))
                                     + "/web-node").leaf("gc")
        assert gc.memory_limit_bytes() == 200 * MiB  # memory.max on v2, memory.limit_in_bytes on v1

        if v2:
            assert unified is not None
            # The node left the service cgroup for its own leaf and enabled the controllers down to the groups.
            assert proc_cgroups(node.pid)["unified"].endswith("/web-node.service/web-node/supervisor")
            assert (unified / "cgroup.procs").read_text() == ""
            assert NODE_CONTROLLERS <= words(unified / "cgroup.subtree_control")
            assert NODE_CONTROLLERS <= words(unified / "web-node" / "cgroup.subtree_control")
        else:
            for key, unit_dir in unit_dirs.items():  # v1 has no such rule: the node stays where systemd put it
                assert node.pid in [int(p) for p in Path(unit_dir, "cgroup.procs").read_text().split()], key

        node.send_signal(signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1\nSTATUS=stopping 2 group(s)\n"
        code = node.wait(120)
        log = log_path.read_text()
        assert code == 0, log
        assert [g["pid"] for g in groups.values() if alive(g["pid"])] == []
    finally:
        stop_session(node, 15)
        notify.close()
    # As found: nothing below the service cgroup, nothing enabled in it.
    for key, unit_dir in unit_dirs.items():
        assert [p.name for p in Path(unit_dir).iterdir() if p.is_dir()] == [], (key, log_path.read_text())
    if v2:
        assert unified is not None
        assert words(unified / "cgroup.subtree_control") == set()
    assert "refusing cgroup_root" not in log_path.read_text()
