"""The tree on fixture hosts: paths, leaves, and the v2 "no internal processes" dance.

The fixture is a tree of plain files, so the directories the kernel would
fill with interface files on mkdir are pre-made here where a test needs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cgroups import PLACEMENT_FAILED, CgroupBusyError, CgroupTree

if TYPE_CHECKING:
    from conftest import FixtureHost

SVC = "system.slice/web-node.service"


def test_v2_fixture_tree_paths_relative_and_absolute(v2_host: FixtureHost) -> None:
    layout = v2_host.layout()
    s = v2_host.sys_root
    assert CgroupTree(layout).paths() == {"unified": f"{s}/{SVC}/web-node"}
    assert CgroupTree(layout, "/web-node").paths() == {"unified": f"{s}/web-node"}
    assert CgroupTree(layout, "a/b").leaf("api").paths() == {"unified": f"{s}/{SVC}/a/b/api"}


def test_v1_fixture_tree_paths_in_every_useful_hierarchy(v1_host: FixtureHost) -> None:
    s = v1_host.sys_root
    paths = CgroupTree(v1_host.layout()).paths()
    assert paths == {
        "memory": f"{s}/memory/{SVC}/web-node",
        "cpu": f"{s}/cpu,cpuacct/{SVC}/web-node",
        "cpuacct": f"{s}/cpu,cpuacct/{SVC}/web-node",
        "pids": f"{s}/pids/{SVC}/web-node",
        "blkio": f"{s}/blkio/{SVC}/web-node",
        "freezer": f"{s}/freezer/web-node",  # the node's freezer cgroup is "/"
    }
    assert CgroupTree(v1_host.layout()).leaf("api").path() == f"{s}/memory/{SVC}/web-node/api"


def test_v2_fixture_leaves_are_the_existing_groups_but_not_supervisor(v2_host: FixtureHost) -> None:
    v2_host.path(f"{SVC}/web-node/supervisor").mkdir()
    assert [leaf.name for leaf in CgroupTree(v2_host.layout()).leaves()] == ["api", "ui"]


def test_tree_refuses_bad_names(v2_host: FixtureHost) -> None:
    layout = v2_host.layout()
    for bad in ("", "/", "../x", "a/../b", ".hidden"):
        with pytest.raises(ValueError, match="cgroup"):
            CgroupTree(layout, bad)
    tree = CgroupTree(layout)
    for bad in ("a/b", "..", "", "-x", "x" * 256):
        with pytest.raises(ValueError, match="invalid cgroup name"):
            tree.leaf(bad)


def _prepare_supervisor_leaf(host: FixtureHost) -> Path:
    # What the kernel would create on mkdir: an empty cgroup.procs.
    leaf = host.path(f"{SVC}/web-node/supervisor")
    leaf.mkdir()
    (leaf / "cgroup.procs").write_text("")
    return leaf


def test_v2_fixture_create_moves_the_node_into_supervisor_before_enabling(v2_host: FixtureHost) -> None:
    v2_host.write(f"{SVC}/cgroup.procs", f"{os.getpid()}\n")  # the node is in its own cgroup
    supervisor = _prepare_supervisor_leaf(v2_host)
    tree = CgroupTree(v2_host.layout())
    tree.create()
    assert (supervisor / "cgroup.procs").read_text() == str(os.getpid())
    # The own cgroup now hands out the controllers; the tree root had them already.
    assert v2_host.read(f"{SVC}/cgroup.subtree_control") == "+memory +cpu +pids +io"
    assert v2_host.read(f"{SVC}/web-node/cgroup.subtree_control") == "cpu io memory pids\n"


def test_v2_fixture_create_enables_only_what_the_host_offers(v2_host: FixtureHost) -> None:
    v2_host.write(f"{SVC}/cgroup.procs", "")
    v2_host.write(f"{SVC}/cgroup.controllers", "cpu memory\n")
    CgroupTree(v2_host.layout()).create(enable_controllers=["memory", "cpu", "pids", "io", "memory"])
    assert v2_host.read(f"{SVC}/cgroup.subtree_control") == "+memory +cpu"


def test_v2_fixture_create_refuses_when_other_processes_share_the_node_cgroup(v2_host: FixtureHost) -> None:
    v2_host.write(f"{SVC}/cgroup.procs", f"{os.getpid()}\n777\n")
    with pytest.raises(CgroupBusyError, match="no internal processes") as caught:
        CgroupTree(v2_host.layout()).create()
    assert "777" in str(caught.value) and "Delegate=yes" in str(caught.value)
    assert caught.value.path == f"{v2_host.sys_root}/{SVC}"


def test_v2_fixture_create_without_move_self_explains_the_rule(v2_host: FixtureHost) -> None:
    v2_host.write(f"{SVC}/cgroup.procs", f"{os.getpid()}\n")
    with pytest.raises(CgroupBusyError, match=r"move_self=True"):
        CgroupTree(v2_host.layout()).create(move_self=False)


def test_v2_fixture_tree_found_again_when_detected_from_the_supervisor_leaf(v2_host: FixtureHost) -> None:
    v2_host.proc("self/cgroup").write_text(f"0::/{SVC}/web-node/supervisor\n")
    layout = v2_host.layout()
    assert CgroupTree(layout).paths() == {"unified": f"{v2_host.sys_root}/{SVC}/web-node"}


def test_v2_fixture_move_back_gives_back_the_controllers_first(v2_host: FixtureHost) -> None:
    own = f"{v2_host.sys_root}/{SVC}"
    v2_host.write(f"{SVC}/cgroup.procs", f"{os.getpid()}\n")
    _prepare_supervisor_leaf(v2_host)
    tree = CgroupTree(v2_host.layout())
    tree.create()
    v2_host.write(f"{SVC}/cgroup.procs", "")  # what the kernel shows once we moved
    tree._move_back(tree.paths()["unified"])
    # The kernel refuses a process in a non-root cgroup that hands out
    # controllers: they are switched off (root first) before the move.
    assert v2_host.read(f"{SVC}/web-node/cgroup.subtree_control") == "-cpu -io -memory -pids"
    assert v2_host.read(f"{SVC}/cgroup.subtree_control") == "-memory -cpu -pids -io"
    assert v2_host.read(f"{SVC}/cgroup.procs") == str(os.getpid())
    assert tree._moved_from is None and own


def test_v2_fixture_cleanup_stale_refuses_a_tree_in_use(v2_host: FixtureHost) -> None:
    supervisor = _prepare_supervisor_leaf(v2_host)
    (supervisor / "cgroup.procs").write_text("31337\n")
    with pytest.raises(CgroupBusyError, match="another node"):
        CgroupTree(v2_host.layout()).cleanup_stale()


# -- placement shim, run by the real /bin/sh on plain files -----------------------


def test_v1_fixture_placement_argv_shape(v1_host: FixtureHost) -> None:
    api = CgroupTree(v1_host.layout()).leaf("api")
    argv = api.placement_argv(["python3", "-c", "pass"])
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[3] == "cgroups-place"
    assert argv[4:-4] == api.procs_files()
    assert argv[-4:] == ["--", "python3", "-c", "pass"]
    with pytest.raises(ValueError):
        api.placement_argv([])


def test_placement_shim_writes_the_pid_that_then_runs_the_program(tmp_path: Path) -> None:
    files = [tmp_path / "a.procs", tmp_path / "b.procs"]
    for f in files:
        f.write_text("")
    from cgroups._placement import placement_argv

    argv = placement_argv([str(f) for f in files], [sys.executable, "-c", "import os; print(os.getpid())"])
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    # exec keeps the pid: what the shim wrote is the program's own pid.
    assert [f.read_text().strip() for f in files] == [out.strip()] * 2


def test_placement_shim_failure_names_the_file_and_runs_nothing(tmp_path: Path) -> None:
    from cgroups._placement import placement_argv

    missing = tmp_path / "gone" / "cgroup.procs"
    marker = tmp_path / "ran"
    argv = placement_argv([str(missing)], ["touch", str(marker)])
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == PLACEMENT_FAILED == 125
    assert str(missing) in done.stderr
    assert "the program was not started" in done.stderr
    assert not marker.exists()
