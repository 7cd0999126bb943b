"""The node kills and removes only below a cgroup root it made itself.

``cgroup_root = "/system.slice"`` must not kill every system service: a root
that exists, was not made by this node (not recorded in its data_dir) and
holds cgroups or processes is refused, with the path and the fix, and
whatever runs there survives. A root the node made is recorded, cleaned up
after a crash, and forgotten once removed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from supervisor_nodes import Node, alive, cgroup_dirs_left

import cgroups


@pytest.fixture
def foreign_service(cgroup_root: str) -> Iterator[tuple[cgroups.Cgroup, subprocess.Popen[bytes]]]:
    """The test's stand-in for /system.slice: a real cgroup root with one "service" cgroup
    holding a sleeping process the test started (both removed by the cgroup_root fixture)."""
    tree = cgroups.CgroupTree(cgroups.detect_layout(), cgroup_root)
    tree.create(move_self=False)
    service = tree.leaf("some.service")
    service.create()
    sleeper = subprocess.Popen(service.placement_argv(["sleep", "300"]))
    try:
        deadline = time.monotonic() + 10
        while sleeper.pid not in service.pids():
            assert time.monotonic() < deadline, "the sleeper never entered its cgroup"
            time.sleep(0.02)
        yield service, sleeper
    finally:
        sleeper.kill()
        sleeper.wait(10)


def test_real_kernel_a_foreign_root_holding_a_service_is_refused_and_the_service_survives(
        foreign_service: tuple[cgroups.Cgroup, subprocess.Popen[bytes]], new_node: Callable[..., Node]) -> None:
    service, sleeper = foreign_service
    node = new_node("gc")
    code = node.proc.proc.wait(60)
    log = node.log()
    root_dir = str(Path(service.path()).parent)
    assert code == 1, log
    assert f"refusing cgroup_root {node.cgroup_root!r}: {root_dir} already exists, was not made by this node" in log
    assert "cgroup(s) some.service" in log and "Fix: set [node] cgroup_root" in log
    assert "Traceback" not in log
    # Untouched: the process lives on in its cgroup, which still exists.
    assert alive(sleeper.pid) and sleeper.poll() is None
    assert service.exists() and service.pids() == [sleeper.pid]
    assert not (node.data_dir / "cgroup-roots.json").exists()


def test_real_kernel_a_root_the_node_made_is_recorded_cleaned_after_a_crash_and_forgotten_after_a_stop(
        new_node: Callable[..., Node]) -> None:
    first = new_node("gc")
    pid = first.wait_up(["gc"], timeout=60)["gc"]["pid"]
    marker = first.data_dir / "cgroup-roots.json"
    recorded = json.loads(marker.read_text())["roots"]
    tree_dirs = cgroups.CgroupTree(cgroups.detect_layout(), first.cgroup_root).paths().values()
    assert set(recorded) == set(tree_dirs)
    assert all(Path(d).stat().st_ino == ino for d, ino in recorded.items())

    first.proc.proc.send_signal(signal.SIGKILL)
    first.proc.proc.wait(10)
    # Its own leftovers (with the same data_dir): taken for stale and cleaned, not refused.
    second = new_node("gc", like=first)
    assert second.wait_up(["gc"], timeout=60)["gc"]["pid"] != pid
    assert second.proc.terminate(timeout=30) == 0, second.log()
    assert cgroup_dirs_left(first.cgroup_root) == []
    assert not marker.exists()
