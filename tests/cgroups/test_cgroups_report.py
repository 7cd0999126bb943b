"""``tree_report`` / ``python -m cgroups`` / ``web-node plan``: exactly what groups get here.

On each fixture layout (named in the test) and on this host's real kernel:
where the groups are made, which controllers they get, and for every limit
whether the kernel enforces it. On the real kernel each claim is checked
against the kernel itself: an "enforced" limit is written and reads back,
a "NOT enforced" one is refused by ``Cgroup.apply_limits``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cgroups import CgroupControllerMissing, CgroupTree, Limits, detect_layout, tree_report

if TYPE_CHECKING:
    from conftest import FixtureHost

# Not imported from conftest at run time: which "conftest" module that name finds depends on
# which test folders pytest collected first (tests/supervisor has one too).
REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
SERVICE = "system.slice/web-node.service"


def lines(host: FixtureHost, root: str = "web-node") -> dict[str, str]:
    report = tree_report(host.layout(), root)
    return {e.setting: e.describe() for e in report.limits}


def test_v2_fixture_report_every_limit_enforced_by_the_controllers_delegated_to_the_service(v2_host: FixtureHost) -> None:
    report = tree_report(v2_host.layout())
    assert report.anchors == {"unified": f"{v2_host.sys_root}/{SERVICE}"}
    assert sorted(report.controllers) == ["cpu", "io", "memory", "pids"] and report.missing == {}
    assert report.limit("memory_max").describe() == "memory_max: enforced (cgroup v2 memory controller: memory.max)"
    assert report.limit("memory_low").describe() == "memory_low: enforced (cgroup v2 memory controller: memory.low)"
    assert report.limit("cpu_weight").describe() == "cpu_weight: enforced (cgroup v2 cpu controller: cpu.weight)"
    assert all(e.enforced for e in report.limits)


def test_v2_fixture_report_cpu_not_delegated(v2_host: FixtureHost) -> None:
    """systemd delegated only memory and pids (Delegate=memory pids): no CPU limit holds."""
    v2_host.write(f"{SERVICE}/cgroup.controllers", "memory pids\n")
    report = tree_report(v2_host.layout())
    assert report.limit("cpu_weight").describe() == "cpu_weight: NOT enforced: cpu controller not delegated"
    assert report.limit("cpu_max").describe() == "cpu_max: NOT enforced: cpu controller not delegated"
    assert report.limit("memory_max").enforced and report.limit("pids_max").enforced
    assert "does not list it" in report.missing["cpu"] and "Delegate=yes" in report.missing["cpu"]
    assert "cpu: NOT available:" in report.describe()


def test_v2_fixture_report_absolute_root_is_made_below_the_hierarchy_root(v2_host: FixtureHost) -> None:
    report = tree_report(v2_host.layout(), "/web-node")
    assert report.anchors == {"unified": v2_host.sys_root}
    # The fixture's root cgroup offers what the kernel has, not only what the service was given.
    assert report.limit("memory_max").enforced


def test_hybrid_fixture_report_v1_controllers_enforce_and_v1_cannot_do_memory_low(hybrid_host: FixtureHost) -> None:
    got = lines(hybrid_host)
    assert got["memory_max"] == "memory_max: enforced (v1 memory controller: memory.limit_in_bytes)"
    assert got["cpu_weight"] == "cpu_weight: enforced (v1 cpu controller: cpu.shares)"
    assert got["pids_max"] == "pids_max: enforced (v1 pids controller: pids.max)"
    assert got["memory_low"].startswith("memory_low: NOT enforced: cgroup v1 has no memory.low")
    assert got["memory_high"].startswith("memory_high: approximated: cgroup v1 has no memory.high")
    # The fixture kernel has neither swap accounting nor CFS bandwidth control ...
    assert got["swap_max"].startswith("swap_max: NOT enforced: no memory.memsw.limit_in_bytes")
    assert "swapaccount=1" in got["swap_max"]
    assert got["cpu_max"].startswith("cpu_max: NOT enforced: no cpu.cfs_quota_us")
    # ... a kernel that has them shows the files, and then they hold.
    hybrid_host.write(f"memory/{SERVICE}/memory.memsw.limit_in_bytes", "9223372036854771712\n")
    hybrid_host.write(f"cpu,cpuacct/{SERVICE}/cpu.cfs_quota_us", "-1\n")
    got = lines(hybrid_host)
    assert got["swap_max"] == "swap_max: enforced (v1 memory controller: memory.memsw.limit_in_bytes)"
    assert got["cpu_max"] == "cpu_max: enforced (v1 cpu controller: cpu.cfs_quota_us)"


def test_v1_fixture_report_groups_below_the_service_in_each_hierarchy(v1_host: FixtureHost) -> None:
    report = tree_report(v1_host.layout())
    assert "unified" not in report.anchors
    assert report.anchors["memory"] == f"{v1_host.sys_root}/memory/{SERVICE}"
    assert report.controllers["memory"] == f"v1 hierarchy {v1_host.sys_root}/memory"
    assert report.limit("memory_max").enforced and not report.limit("memory_low").enforced


def test_no_cgroups_report_nothing_is_enforced(tmp_path: Path) -> None:
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text("")
    report = tree_report(detect_layout(sys_root=str(tmp_path / "sys"), proc_root=str(tmp_path / "proc")))
    assert report.anchors == {} and report.controllers == {}
    assert report.limit("memory_max").describe() == "memory_max: NOT enforced: memory controller unavailable: no cgroup filesystem"
    assert not any(e.enforced for e in report.limits)


def test_v2_fixture_python_m_cgroups_prints_layout_own_cgroup_controllers_and_limits(v2_host: FixtureHost) -> None:
    v2_host.write(f"{SERVICE}/cgroup.controllers", "memory pids\n")
    out = subprocess.run([sys.executable, "-m", "cgroups", "--sys-root", v2_host.sys_root, "--proc-root",
                          v2_host.proc_root], capture_output=True, text=True, cwd=REPO_ROOT, check=True).stdout
    assert "cgroup layout: v2" in out
    assert "own cgroup: /system.slice/web-node.service" in out
    assert "  memory: cgroup v2, offered by" in out and "  cpu: NOT available:" in out
    assert "  memory_max: enforced (cgroup v2 memory controller: memory.max)" in out
    assert "  cpu_weight: NOT enforced: cpu controller not delegated" in out


# -- the real kernel ----------------------------------------------------------------

SAMPLE = {
    "memory_max": Limits(memory_max_bytes=64 * MiB),
    "memory_high": Limits(memory_high_bytes=48 * MiB),
    "memory_low": Limits(memory_low_bytes=8 * MiB),
    "swap_max": Limits(memory_max_bytes=64 * MiB, swap_max_bytes=16 * MiB),
    "cpu_max": Limits(cpu_max_cores=0.5),
    "cpu_weight": Limits(cpu_weight=50),
    "pids_max": Limits(pids_max=64),
}


@pytest.mark.real_kernel
def test_real_kernel_report_matches_what_the_kernel_takes(real_tree: CgroupTree) -> None:
    """Every "enforced" limit of the report is written into a real group; every "NOT enforced" one is refused."""
    report = tree_report(real_tree.layout, real_tree.root)
    leaf = real_tree.leaf("report")
    leaf.create()
    for enforcement in report.limits:
        limits = SAMPLE[enforcement.setting]
        if enforcement.status == "not enforced":
            with pytest.raises(CgroupControllerMissing):
                leaf.apply_limits(limits)
        else:
            leaf.apply_limits(limits)
    if report.limit("memory_max").enforced:
        assert leaf.memory_limit_bytes() == 64 * MiB
    leaf.remove()


@pytest.mark.real_kernel
def test_real_kernel_python_m_cgroups_and_web_node_plan_print_the_report(tmp_path: Path) -> None:
    layout = detect_layout()
    expected = tree_report(layout, "web-node")
    out = subprocess.run([sys.executable, "-m", "cgroups"], capture_output=True, text=True, cwd=REPO_ROOT,
                         check=True).stdout
    assert f"cgroup layout: {layout.kind}" in out
    for enforcement in expected.limits:
        assert f"  {enforcement.describe()}\n" in out
    (tmp_path / "node.toml").write_text(
        f'[node]\ndata_dir = "{tmp_path}"\n[groups.api]\nmembers = ["api"]\nmemory_max = "64M"\ncpu_weight = 50\n'
        'memory_low = "8M"\n')
    plan = subprocess.run([sys.executable, "-m", "web_node", "plan", "--config", str(tmp_path / "node.toml")],
                          capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert plan.returncode == 0, plan.stderr
    api = plan.stdout.split("\n  group api:", 1)[1].split("\n  group ", 1)[0] + "\n"
    for setting in ("memory_max", "cpu_weight", "memory_low"):
        assert f"      {expected.limit(setting).describe()}\n" in api, plan.stdout
    assert "pids_max:" not in api  # only the limits the group sets
    for controller, how in expected.controllers.items():
        assert f"  {controller}: {how}\n" in plan.stdout
