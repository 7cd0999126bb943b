"""Real-kernel tests: real cgroups below this process's own, real children.

Each test gets a tree with a unique root (``real_tree``) that is killed and
removed afterwards, also on failure; children started with ``spawn`` are
killed and reaped before that. Skipped only when not root or cgroups are
not writable here.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cgroups import (
    PLACEMENT_FAILED,
    Cgroup,
    CgroupControllerMissing,
    CgroupTree,
    Limits,
    _cgroup,
    detect_layout,
)
from cgroups._detect import parse_proc_cgroup

pytestmark = pytest.mark.real_kernel

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
PIPE = subprocess.PIPE
Spawn = Callable[..., "subprocess.Popen[Any]"]

# Touch `mib` MiB of anonymous memory, burn `burn` s of CPU, say "ready",
# then live until stdin closes.
CHILD = """
import sys, time
mib, burn = int(sys.argv[1]), float(sys.argv[2])
block = bytearray(mib << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
end = time.process_time() + burn
while time.process_time() < end:
    pass
print("ready", flush=True)
sys.stdin.read()
"""

SPIN = "import sys\nprint('ready', flush=True)\nwhile True:\n    pass\n"


def child(mib: int = 0, burn: float = 0.0) -> list[str]:
    return [sys.executable, "-c", CHILD, str(mib), str(burn)]


def assert_ready(proc: subprocess.Popen[Any]) -> None:
    """Wait for the child's "ready" line: it is placed and running."""
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"


def rss_anon_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


def read(path: str) -> str:
    return Path(path).read_text().strip()


def test_real_kernel_tree_create_is_idempotent_and_destroy_removes_everything(real_tree: CgroupTree) -> None:
    real_tree.create()  # again: nothing changes
    paths = real_tree.paths()
    assert paths and all(os.path.isdir(d) for d in paths.values())
    api = real_tree.leaf("api")
    api.create()
    api.create()
    assert all(os.path.isdir(d) for d in api.paths().values())
    # A cgroup a group's process made below its leaf goes too, deepest first.
    nested = os.path.join(api.path(), "inner", "deeper")
    os.makedirs(nested)
    assert [leaf.name for leaf in real_tree.leaves()] == ["api"]
    real_tree.destroy()
    assert not any(os.path.exists(d) for d in paths.values())
    real_tree.destroy()  # idempotent
    gone = api.stats()  # a removed group reads as all None, no exception
    assert all(getattr(gone, f.name) is None for f in dataclasses.fields(gone))


def test_real_kernel_stats_follow_a_group_removed_and_made_again(real_tree: CgroupTree, spawn: Spawn) -> None:
    api = real_tree.leaf("api")
    api.create()
    first = spawn(api.placement_argv(child(burn=0.2)), stdin=PIPE, stdout=PIPE)
    assert_ready(first)
    busy = api.stats().cpu_usage_seconds
    assert busy is not None and busy >= 0.15
    first.kill()
    first.wait()
    api.remove()
    api.create()  # same name, a new cgroup: the kept descriptors are stale (ENODEV)
    fresh = api.stats()
    assert fresh.cpu_usage_seconds is not None and fresh.cpu_usage_seconds < 0.05
    assert fresh.memory_usage_bytes is not None
    api.close()
    assert api.stats().pids_current == 0


def test_real_kernel_child_is_inside_before_exec_and_counted(real_tree: CgroupTree, spawn: Spawn) -> None:
    api = real_tree.leaf("api")
    api.create()
    proc = spawn(api.placement_argv(child(mib=64, burn=0.3)), stdin=PIPE, stdout=PIPE)
    assert_ready(proc)

    membership = parse_proc_cgroup(Path(f"/proc/{proc.pid}/cgroup").read_text())
    for key, directory in api.paths().items():
        assert directory.endswith(membership[key]), (key, directory, membership[key])
    assert api.pids() == [proc.pid]
    assert api.populated()

    s = api.stats()
    # Placed before exec: every anonymous page the interpreter touched,
    # from its first instruction, is charged to the group (1 MiB slack
    # for the kernel's per-CPU charge batches).
    assert s.memory_anon_bytes is not None and s.memory_anon_bytes >= rss_anon_bytes(proc.pid) - MiB
    assert s.memory_usage_bytes is not None and s.memory_usage_bytes >= 64 * MiB
    assert s.memory_working_set_bytes is not None and s.memory_working_set_bytes <= s.memory_usage_bytes
    assert s.memory_peak_bytes is not None and s.memory_peak_bytes >= s.memory_usage_bytes - MiB
    assert s.cpu_usage_seconds is not None and s.cpu_usage_seconds >= 0.25
    assert s.cpu_user_seconds is not None and s.cpu_system_seconds is not None
    assert s.cpu_user_seconds + s.cpu_system_seconds >= 0.2
    assert s.pids_current == 1
    if real_tree.layout.unified_mount is not None:
        assert s.pressure_cpu_some_seconds is not None and s.pressure_memory_some_seconds is not None
    assert s.memory_limit_bytes is None  # no limit set


def test_real_kernel_memory_charged_before_a_move_stays_behind(real_tree: CgroupTree, spawn: Spawn) -> None:
    """Why placement happens before exec: a child moved after start leaves its startup memory behind."""
    late = real_tree.leaf("late")
    late.create()
    proc = spawn(child(mib=16), stdin=PIPE, stdout=PIPE)
    assert_ready(proc)
    for procs in late.procs_files():
        Path(procs).write_text(str(proc.pid))
    anon = late.stats().memory_anon_bytes
    assert anon is not None and anon < rss_anon_bytes(proc.pid) - 8 * MiB


def test_real_kernel_oom_kill_seen_and_counted(real_tree: CgroupTree, spawn: Spawn) -> None:
    api = real_tree.leaf("api")
    api.create()
    swap_in_use = len(Path("/proc/swaps").read_text().splitlines()) > 1
    api.apply_limits(Limits(memory_max_bytes=32 * MiB, swap_max_bytes=0 if swap_in_use else None))
    assert api.memory_limit_bytes() == 32 * MiB
    before = api.oom_kill_count()
    assert before == 0

    proc = spawn(api.placement_argv(child(mib=256)), stdin=PIPE, stdout=PIPE)
    assert proc.wait(timeout=30) == -signal.SIGKILL

    assert api.oom_kill_count() == before + 1
    s = api.stats()
    assert s.memory_events_oom_kill == before + 1
    assert s.memory_events_max is not None and s.memory_events_max > 0
    assert s.memory_peak_bytes is not None and s.memory_peak_bytes <= 32 * MiB + MiB
    assert api.wait_empty(5)


def test_real_kernel_limits_change_live(real_tree: CgroupTree, spawn: Spawn) -> None:
    api = real_tree.leaf("api")
    api.create()
    proc = spawn(api.placement_argv([sys.executable, "-c", SPIN]), stdout=PIPE)
    assert_ready(proc)

    started = time.monotonic()
    api.apply_limits(Limits(cpu_max_cores=0.2, cpu_weight=50, pids_max=20,
                            memory_max_bytes=256 * MiB, memory_high_bytes=200 * MiB))
    paths = api.paths()
    if "cpu" in paths:  # v1 cpu controller (this hybrid machine)
        assert read(paths["cpu"] + "/cpu.cfs_quota_us") == "20000"
        assert read(paths["cpu"] + "/cpu.cfs_period_us") == "100000"
        assert read(paths["cpu"] + "/cpu.shares") == "512"
    else:
        assert read(paths["unified"] + "/cpu.max") == "20000 100000"
        assert read(paths["unified"] + "/cpu.weight") == "50"
    pids_dir = paths.get("pids", paths.get("unified", ""))
    assert read(pids_dir + "/pids.max") == "20"
    assert api.memory_limit_bytes() == 256 * MiB
    if "memory" in paths:
        assert read(paths["memory"] + "/memory.soft_limit_in_bytes") == str(200 * MiB)
    else:
        assert read(paths["unified"] + "/memory.high") == str(200 * MiB)

    time.sleep(0.5)  # let the spinning child run into its quota
    s = api.stats()
    elapsed = time.monotonic() - started
    assert s.cpu_throttled_seconds is not None and s.cpu_throttled_seconds > 0.1
    assert s.pids_max == 20

    # Raising the limit while it runs.
    api.apply_limits(Limits(cpu_max_cores=1.0))
    if "cpu" in paths:
        assert read(paths["cpu"] + "/cpu.cfs_quota_us") == "100000"
    assert elapsed < 5


def test_real_kernel_v1_memory_and_swap_limits_keep_their_order(real_tree: CgroupTree) -> None:
    api = real_tree.leaf("api")
    api.create()
    paths = api.paths()
    if "memory" not in paths or not os.path.exists(paths["memory"] + "/memory.memsw.limit_in_bytes"):
        pytest.skip("needs the v1 memory controller with swap accounting (memory.memsw.*)")
    memsw = paths["memory"] + "/memory.memsw.limit_in_bytes"
    api.apply_limits(Limits(memory_max_bytes=64 * MiB, swap_max_bytes=0))
    assert read(memsw) == str(64 * MiB)
    # Raising memory above the current memsw: memsw must be raised first, or the kernel says EINVAL.
    api.apply_limits(Limits(memory_max_bytes=128 * MiB))
    assert api.memory_limit_bytes() == 128 * MiB
    assert read(memsw) == str(128 * MiB)
    # And lowering both: memory first.
    api.apply_limits(Limits(memory_max_bytes=48 * MiB, swap_max_bytes=16 * MiB))
    assert (api.memory_limit_bytes(), read(memsw)) == (48 * MiB, str(64 * MiB))
    with pytest.raises(CgroupControllerMissing, match=r"memory\.low"):
        api.apply_limits(Limits(memory_low_bytes=MiB))


def test_real_kernel_kill_empties_a_group_with_grandchildren(real_tree: CgroupTree, spawn: Spawn) -> None:
    api = real_tree.leaf("api")
    api.create()
    proc = spawn(api.placement_argv(["/bin/sh", "-c", "sleep 60 & sleep 60 & echo ready; wait"]), stdout=PIPE)
    assert_ready(proc)
    assert len(api.pids()) == 3
    api.kill()
    # Not reaped yet: a zombie does not count as a live process.
    assert api.wait_empty(5)
    assert not api.populated()
    assert proc.wait(timeout=5) == -signal.SIGKILL
    api.remove()
    assert not api.exists()


def test_real_kernel_sigkill_loop_without_cgroup_kill(real_tree: CgroupTree, spawn: Spawn) -> None:
    """The v1-only path: freeze, SIGKILL every listed pid through pidfds, thaw; wait by re-reading cgroup.procs."""
    api = real_tree.leaf("api")
    api.create()
    v1_only = Cgroup("api", {k: d for k, d in api.paths().items() if k != "unified"})
    if not v1_only.paths():
        pytest.skip("no v1 hierarchies on this machine")
    proc = spawn(api.placement_argv(["/bin/sh", "-c", "sleep 60 & sleep 60 & echo ready; wait"]), stdout=PIPE)
    assert_ready(proc)
    assert len(v1_only.pids()) == 3
    v1_only.kill()
    assert v1_only.wait_empty(5)
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert api.wait_empty(1)


def test_real_kernel_freeze_and_thaw(real_tree: CgroupTree, spawn: Spawn) -> None:
    api = real_tree.leaf("api")
    api.create()
    proc = spawn(api.placement_argv([sys.executable, "-c", SPIN]), stdout=PIPE)
    assert_ready(proc)

    def cpu_used_over(seconds: float) -> float:
        first = api.stats().cpu_usage_seconds
        time.sleep(seconds)
        last = api.stats().cpu_usage_seconds
        assert first is not None and last is not None
        return last - first

    api.freeze()
    if api.paths().get("unified"):
        assert "frozen 1" in read(api.paths()["unified"] + "/cgroup.events")
    assert cpu_used_over(0.2) < 0.02
    api.thaw()
    # Running again; other load on the machine may leave it less than a full CPU.
    assert cpu_used_over(0.3) > 0.03

    v1_only = Cgroup("api", {k: d for k, d in api.paths().items() if k != "unified"})
    if "freezer" in v1_only.paths():
        v1_only.freeze()
        assert read(v1_only.paths()["freezer"] + "/freezer.state") == "FROZEN"
        v1_only.thaw()
        assert read(v1_only.paths()["freezer"] + "/freezer.state") == "THAWED"


def test_real_kernel_wait_empty_wakes_on_exit_and_times_out(
    real_tree: CgroupTree, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the safety cap at 30 s, only the kernel's notification can wake it in time.
    monkeypatch.setattr(_cgroup, "EVENTS_POLL_CAP_S", 30.0)
    api = real_tree.leaf("api")
    api.create()
    # "ready" comes from inside: the shim has placed the process by then.
    sleeper = spawn(api.placement_argv(["/bin/sh", "-c", "echo ready; exec sleep 60"]), stdout=PIPE)
    assert_ready(sleeper)
    t0 = time.monotonic()
    assert not api.wait_empty(0.1)
    assert 0.09 <= time.monotonic() - t0 < 0.5
    sleeper.kill()
    sleeper.wait()

    quick = spawn(api.placement_argv(["/bin/sh", "-c", "echo ready; exec sleep 0.2"]), stdout=PIPE)
    assert_ready(quick)
    t0 = time.monotonic()
    assert api.wait_empty(5)
    waited = time.monotonic() - t0
    assert 0.15 <= waited < 5, waited
    quick.wait()


_CRASHED_NODE = """
import os, subprocess, sys
sys.path.insert(0, sys.argv[1])
import cgroups
tree = cgroups.CgroupTree(cgroups.detect_layout(), sys.argv[2])
tree.create()
api = tree.leaf("api")
api.create()
child = subprocess.Popen(api.placement_argv(["sleep", "60"]), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while child.pid not in api.pids():
    pass
print(child.pid, flush=True)
os._exit(0)   # a crash: no cleanup, the child lives on
"""


def test_real_kernel_cleanup_stale_after_a_crashed_run(real_tree: CgroupTree) -> None:
    out = subprocess.run([sys.executable, "-c", _CRASHED_NODE, str(REPO_ROOT), real_tree.root],
                         capture_output=True, text=True, check=True).stdout
    orphan = int(out)
    assert orphan in real_tree.leaf("api").pids()

    restarted = CgroupTree(detect_layout(), real_tree.root)
    assert restarted.cleanup_stale() == ["api"]
    assert not real_tree.leaf("api").exists()
    assert restarted.leaves() == []
    assert restarted.cleanup_stale() == []
    state = Path(f"/proc/{orphan}/stat").read_text().split()[2] if os.path.exists(f"/proc/{orphan}") else "gone"
    assert state in ("Z", "X", "gone")


def test_real_kernel_placement_failure_exits_125_before_running(real_tree: CgroupTree, tmp_path: Path) -> None:
    never = real_tree.leaf("never-created")
    marker = tmp_path / "ran"
    done = subprocess.run(never.placement_argv(["touch", str(marker)]), capture_output=True, text=True)
    assert done.returncode == PLACEMENT_FAILED
    assert never.procs_files()[0] in done.stderr
    assert not marker.exists()
