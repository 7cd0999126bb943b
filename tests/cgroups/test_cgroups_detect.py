"""Layout detection on fixture hosts (v2, v1, hybrid, none) and on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cgroups import CgroupError, CgroupPermissionError, CgroupTree, detect_layout
from cgroups._detect import parse_mountinfo, parse_proc_cgroup

if TYPE_CHECKING:
    from conftest import FixtureHost

REPO_ROOT = Path(__file__).resolve().parents[2]
SVC = "/system.slice/web-node.service"


def test_v2_fixture_detected_as_pure_v2(v2_host: FixtureHost) -> None:
    layout = v2_host.layout()
    assert layout.kind == "v2"
    assert layout.unified_mount == v2_host.sys_root
    assert dict(layout.v1_mounts) == {}
    # What the own cgroup may hand out: its cgroup.controllers.
    assert layout.controllers == {"cpu", "io", "memory", "pids"}
    assert layout.v2_available == {"cpu", "io", "memory", "pids"}
    assert layout.v2_enabled == frozenset()
    assert dict(layout.own_paths) == {"unified": SVC}
    assert layout.writable
    assert layout.problems == ()


def test_v1_fixture_detected_with_comounted_cpu_cpuacct(v1_host: FixtureHost) -> None:
    layout = v1_host.layout()
    assert layout.kind == "v1"
    assert layout.unified_mount is None
    s = v1_host.sys_root
    assert layout.v1_mounts["cpu"] == f"{s}/cpu,cpuacct"
    assert layout.v1_mounts["cpuacct"] == f"{s}/cpu,cpuacct"
    assert layout.v1_mounts["memory"] == f"{s}/memory"
    # name=systemd is a hierarchy without a controller: not listed.
    assert "systemd" not in layout.v1_mounts and "name=systemd" not in layout.v1_mounts
    assert layout.controllers == {"blkio", "cpu", "cpuacct", "devices", "freezer", "memory", "pids"}
    assert layout.own_paths["memory"] == SVC
    assert layout.own_paths["freezer"] == "/"
    assert layout.writable
    assert layout.problems == ()


def test_hybrid_fixture_detected_as_hybrid(hybrid_host: FixtureHost) -> None:
    layout = hybrid_host.layout()
    assert layout.kind == "hybrid"
    assert layout.unified_mount == f"{hybrid_host.sys_root}/unified"
    assert layout.v2_available == frozenset()
    assert {"memory", "cpu", "cpuacct", "pids", "blkio", "freezer"} <= layout.controllers
    assert layout.own_paths["unified"] == SVC
    assert layout.hierarchies() == ["unified", "memory", "cpu", "cpuacct", "pids", "blkio", "freezer"]
    assert layout.writable


def test_none_fixture_says_it_can_do_nothing(tmp_path: Path) -> None:
    sys_root = tmp_path / "sys" / "fs" / "cgroup"
    sys_root.mkdir(parents=True)
    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text("0::/\n")
    (proc / "mountinfo").write_text("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n")
    layout = detect_layout(sys_root=str(sys_root), proc_root=str(tmp_path / "proc"))
    assert layout.kind == "none"
    assert not layout.writable
    assert layout.controllers == frozenset()
    assert any("no cgroup filesystem" in p for p in layout.problems)
    tree = CgroupTree(layout, "web-node")
    assert tree.paths() == {}
    with pytest.raises(CgroupError, match="no cgroup filesystem"):
        tree.create()
    assert "cgroup layout: none" in layout.describe()


def test_v2_fixture_read_only_mount_is_reported(v2_host: FixtureHost) -> None:
    mountinfo = v2_host.proc("self/mountinfo")
    mountinfo.write_text(mountinfo.read_text().replace("/sys/fs/cgroup rw,", "/sys/fs/cgroup ro,"))
    layout = v2_host.layout()
    assert layout.kind == "v2"
    assert not layout.writable
    (problem,) = [p for p in layout.problems if "read-only" in p]
    assert v2_host.sys_root in problem
    assert "Delegate=yes" in problem
    with pytest.raises(CgroupPermissionError, match="not writable"):
        CgroupTree(layout).create()


def test_v2_fixture_undelegated_controllers_are_named(v2_host: FixtureHost) -> None:
    v2_host.write("system.slice/web-node.service/cgroup.controllers", "cpu pids\n")
    layout = v2_host.layout()
    assert layout.controllers == {"cpu", "pids"}
    text = " ".join(layout.problems)
    assert "memory controller unavailable" in text
    assert "io controller unavailable" in text
    assert "cgroup.subtree_control" in text


def test_v1_fixture_detected_without_mountinfo_by_looking_at_the_tree(v1_host: FixtureHost) -> None:
    v1_host.proc("self/mountinfo").unlink()
    layout = v1_host.layout()
    assert layout.kind == "v1"
    # The cpu and cpuacct symlinks are skipped; "cpu,cpuacct" names both.
    assert layout.v1_mounts["cpu"] == layout.v1_mounts["cpuacct"] == f"{v1_host.sys_root}/cpu,cpuacct"
    assert layout.own_paths["memory"] == SVC


def test_v2_fixture_detected_without_mountinfo(v2_host: FixtureHost) -> None:
    v2_host.proc("self/mountinfo").unlink()
    layout = v2_host.layout()
    assert layout.kind == "v2"
    assert layout.unified_mount == v2_host.sys_root


def test_v2_fixture_container_mount_showing_only_own_subtree(v2_host: FixtureHost) -> None:
    # Docker without a cgroup namespace: /proc/self/cgroup names the host
    # path, the mount's root field says the mount shows that very cgroup.
    mountinfo = v2_host.proc("self/mountinfo")
    mountinfo.write_text(mountinfo.read_text().replace(" / /sys/fs/cgroup ", f" {SVC} /sys/fs/cgroup "))
    layout = v2_host.layout()
    assert layout.own_paths["unified"] == "/"
    assert CgroupTree(layout).paths()["unified"] == f"{v2_host.sys_root}/web-node"


def test_v2_fixture_own_cgroup_outside_the_namespace_is_a_problem(v2_host: FixtureHost) -> None:
    v2_host.proc("self/cgroup").write_text("0::/../../other.service\n")
    layout = v2_host.layout()
    assert "unified" not in layout.own_paths
    assert not layout.writable
    assert any("outside what the mount" in p for p in layout.problems)


def test_v1_fixture_describe_names_layout_mounts_and_writability(v1_host: FixtureHost) -> None:
    text = v1_host.layout().describe()
    assert text.splitlines()[0].startswith("cgroup layout: v1")
    assert f"{v1_host.sys_root}/memory" in text
    assert f"own cgroup: {SVC}" in text
    assert "can write (create groups, set limits): yes" in text
    assert "problems: none" in text


def test_python_m_cgroups_on_fixture(v2_host: FixtureHost) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cgroups", "--sys-root", v2_host.sys_root, "--proc-root", v2_host.proc_root],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout
    assert out.startswith("cgroup layout: v2")
    assert "v2 controllers available: cpu io memory pids" in out


# -- parsers ----------------------------------------------------------------------------


def test_parse_mountinfo_unescapes_and_rebases_fixture_paths() -> None:
    text = (
        "30 25 0:26 / /sys/fs/cgroup/my\\040dir rw,relatime shared:5 - cgroup cgroup rw,memory\n"
        "31 25 0:27 /docker/abc /sys/fs/cgroup/unified ro,relatime - cgroup2 cgroup2 rw\n"
        "32 25 0:28 / /mnt/elsewhere rw - cgroup2 cgroup2 rw\n"
        "33 25 0:29 / /proc rw - proc proc rw\n"
    )
    mounts = parse_mountinfo(text, "/fixture/sys/fs/cgroup")
    assert [m.directory for m in mounts] == ["/fixture/sys/fs/cgroup/my dir", "/fixture/sys/fs/cgroup/unified"]
    assert mounts[0].options == {"rw", "memory"}
    assert mounts[1].root == "/docker/abc"
    assert mounts[1].read_only


def test_parse_proc_cgroup_all_forms() -> None:
    text = (
        "12:pids:/a\n"
        "4:cpu,cpuacct:/b\n"
        "1:name=systemd:/c\n"
        "0::/d/e (deleted)\n"
    )
    assert parse_proc_cgroup(text) == {"pids": "/a", "cpu": "/b", "cpuacct": "/b", "unified": "/d/e"}


# -- this machine -----------------------------------------------------------------------


def _expected_real_kind() -> str:
    root = Path("/sys/fs/cgroup")
    v2_nested = (root / "unified" / "cgroup.controllers").exists()
    v2_root = (root / "cgroup.controllers").exists()
    v1 = (root / "memory" / "tasks").exists() or (root / "cpu" / "tasks").exists()
    if v2_root:
        return "v2"
    if v2_nested and v1:
        return "hybrid"
    return "v1" if v1 else "none"


@pytest.mark.real_kernel
def test_real_kernel_detection_matches_this_machine() -> None:
    layout = detect_layout()
    assert layout.kind == _expected_real_kind()
    if layout.kind == "hybrid":
        assert layout.unified_mount == "/sys/fs/cgroup/unified"
        assert {"memory", "cpu", "cpuacct", "pids"} <= layout.controllers
    own = Path("/proc/self/cgroup").read_text()
    for key, path in layout.own_paths.items():
        wanted = "0::" + path if key == "unified" else path
        assert wanted in own


@pytest.mark.real_kernel
def test_real_kernel_python_m_cgroups_prints_layout() -> None:
    done = subprocess.run([sys.executable, "-m", "cgroups", "--check"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.stdout.startswith(f"cgroup layout: {_expected_real_kind()}")
    if os.geteuid() == 0 and detect_layout().writable:
        assert "can write (create groups, set limits): yes" in done.stdout
        assert done.returncode == 0


_UNPRIVILEGED = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import cgroups, cgroups._detect   # import while still root: /root is not readable by nobody
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
layout = cgroups.detect_layout()
print(json.dumps({"kind": layout.kind, "writable": layout.writable, "problems": layout.problems}))
"""


@pytest.mark.real_kernel
def test_real_kernel_unprivileged_process_is_told_it_cannot_write() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to uid nobody")
    if detect_layout().kind == "none":
        pytest.skip("no cgroup filesystem on this machine")
    out = subprocess.run([sys.executable, "-c", _UNPRIVILEGED, str(REPO_ROOT)], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["kind"] == _expected_real_kind()
    assert report["writable"] is False
    text = " ".join(report["problems"])
    assert "no write permission" in text and "uid 65534" in text and "Delegate=yes" in text
