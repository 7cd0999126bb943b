"""Groups that fail, on one shared node: the kernel's OOM killer, a crash
loop, restart = "never", a clean exit under on-failure, while api keeps
answering. Each test fails a different group."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from supervisor_nodes import Node, alive, cgroup_procs, cli, disabled, module_node, oom_kills


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    groups = {
        # python + trio + quart need ~35 MB: 20M is OOM-killed at start-up, every time.
        "gc": {"memory_max": "20M", "restart_limit": 2, "restart_window": "60s"},
        "ui": {"restart": "always", "restart_limit": 1, "restart_window": "60s"},
        "gateway": {"restart": "never"},
        "scheduler": {"restart": "on-failure"},
    }
    members = disabled("build-tracker", "syslog-drainer")
    with module_node(tmp_path_factory.mktemp("node"), "web", members=members, groups=groups) as n:
        n.wait_up(["api", "ui", "gateway", "scheduler"], timeout=60)
        yield n


def api_answers(node: Node) -> None:
    r = httpx.get(node.url("api", "/api/v1/info"), timeout=10)
    assert r.status_code == 200 and r.json()["member"] == "api"


def test_real_kernel_a_group_below_its_memory_needs_is_oom_killed_then_given_up(node: Node) -> None:
    api_pid = node.wait_up(["api"])["api"]["pid"]
    gc = node.wait_state("gc", "gave-up", timeout=30)
    assert gc["last_exit"] == "killed by SIGKILL: OOM at limit 20 MiB", gc
    assert gc["restarts"] == 2
    assert gc["pid"] is None
    assert gc["memory_limit_bytes"] == 20 * 1024**2
    assert gc["oom_kills"] >= 3
    kernel_count = oom_kills(node.cgroup_root, "gc")  # v2 memory.events, v1 memory.oom_control
    assert kernel_count is not None and kernel_count >= 3, kernel_count
    assert cgroup_procs(node.cgroup_root, "gc") == []

    log = node.log()
    deaths = re.findall(r"group gc \(pid \d+\) killed by SIGKILL: OOM at limit 20 MiB after running [\d.]+ s; (.*)", log)
    assert len(deaths) == 3, log
    # Backs off (0.1 s, then 0.2 s, +-20 %), then gives up after restart_limit = 2 restarts.
    delays = [float(m) for d in deaths[:2] for m in re.findall(r"restarting in ([\d.]+) s", d)]
    assert len(delays) == 2 and delays[0] < delays[1], deaths
    assert deaths[2].startswith("giving up"), deaths[2]
    assert "restart_limit = 2" in deaths[2]

    # Meanwhile another group keeps serving, untouched.
    api_answers(node)
    assert node.groups()["api"]["pid"] == api_pid


def test_real_kernel_crash_loop_gives_up_and_others_keep_running(node: Node) -> None:
    before = node.wait_up(["api", "ui"])
    first = before["ui"]["pid"]
    os.kill(first, signal.SIGKILL)
    second = node.wait_restarted("ui", first, timeout=20)["pid"]
    os.kill(second, signal.SIGKILL)  # restart_limit = 1 within 60 s: a crash loop
    ui = node.wait_state("ui", "gave-up", timeout=20)
    assert ui["restarts"] == 1
    assert ui["pid"] is None and "SIGKILL" in ui["last_exit"]
    assert not alive(first) and not alive(second)
    assert cgroup_procs(node.cgroup_root, "ui") == []
    log = node.log()
    assert re.search(rf"group ui \(pid {second}\) killed by SIGKILL after running [\d.]+ s; giving up", log), log
    time.sleep(0.5)
    assert node.groups()["ui"]["state"] == "gave-up", "a group that gave up came back by itself"
    assert node.groups()["api"]["pid"] == before["api"]["pid"]
    api_answers(node)


def test_real_kernel_restart_never_stays_down(node: Node) -> None:
    before = node.wait_up(["api", "gateway"])
    old = before["gateway"]["pid"]
    os.kill(old, signal.SIGKILL)
    gateway = node.wait_state("gateway", "gave-up", timeout=20)
    assert gateway["restarts"] == 0 and gateway["pid"] is None
    assert gateway["last_exit"] == "killed by SIGKILL"
    log = node.log()
    assert re.search(rf"group gateway \(pid {old}\) killed by SIGKILL after running [\d.]+ s; "
                     r"not restarting: restart policy is never", log), log
    time.sleep(0.5)
    assert node.groups()["gateway"]["state"] == "gave-up"
    assert not alive(old) and cgroup_procs(node.cgroup_root, "gateway") == []
    assert node.groups()["api"]["pid"] == before["api"]["pid"]
    api_answers(node)


def test_real_kernel_clean_exit_under_on_failure_is_not_restarted(node: Node) -> None:
    """SIGTERM straight to a group's process: it stops gracefully with status 0,
    which on-failure accepts as a deliberate stop."""
    old = node.wait_up(["scheduler"])["scheduler"]["pid"]
    os.kill(old, signal.SIGTERM)
    scheduler = node.wait_state("scheduler", "stopped", timeout=20)
    assert scheduler["last_exit"] == "exited cleanly (status 0)"
    assert scheduler["restarts"] == 0 and scheduler["pid"] is None
    assert "not restarting: it exited cleanly and restart policy is on-failure" in node.log()
    assert node.proc.proc.poll() is None, "the node must keep running while api is up"
    api_answers(node)


def test_real_kernel_status_shows_the_failures(node: Node) -> None:
    node.wait_state("gc", "gave-up", timeout=30)
    result = cli("status", "--config", str(node.config_path))
    assert result.returncode == 0, result.stderr
    gc_row = next(line for line in result.stdout.splitlines() if line.startswith("gc "))
    assert "gave-up" in gc_row and "killed by SIGKILL: OOM at limit 20 MiB" in gc_row, gc_row
