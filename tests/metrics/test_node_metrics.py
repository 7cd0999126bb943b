"""The page of a real supervised node (``python -m web_node web --config CFG``):
each group a child in its own cgroup (a cgroup root of this test's own), its
cgroup read by the node, its members' metrics fetched from the child and
merged, the kernel's OOM kill counted, a stopped child left out without
breaking the scrape, and a real Prometheus server scraping it all."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from metrics_helpers import (
    Page,
    get_page,
    prometheus,
    promtool_check_metrics,
    running_node,
    wait_page,
)
from node_helpers import free_port, group_cgroup, unique_cgroup_root

from web_node.metrics import CHILD_TIMEOUT_S

pytestmark = pytest.mark.real_kernel


@dataclass(frozen=True)
class SupervisedNode:
    process: Any
    cgroup_root: str
    api: str
    metrics: str  # HOST:PORT

    @property
    def page_url(self) -> str:
        return f"http://{self.metrics}/metrics"

    def pids(self, group: str) -> list[int]:
        return sorted(group_cgroup(self.cgroup_root, group).pids())


def group_up(page: Page, group: str) -> bool:
    return page.get("web_node_group_up", group=group) == 1


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupervisedNode]:
    work = tmp_path_factory.mktemp("node")
    root = unique_cgroup_root()
    api, metrics = free_port(), free_port()
    config = (
        f'[node]\ndata_dir = "{work / "data"}"\ncgroup_root = "{root}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        'shutdown_grace = "3s"\n'
        f'[members.api]\nlisten = "127.0.0.1:{api}"\n'
        '[members.ui]\nenabled = false\n[members.gateway]\nenabled = false\n[members.syslog-drainer]\nenabled = false\n'
        # Two members sharing one process: their CPU is still told apart.
        '[groups.backend]\nmembers = ["scheduler", "build-tracker"]\n'
        # python + trio + quart need ~35 MB: 20M is OOM-killed at start-up, every time.
        '[groups.gc]\nmemory_max = "20M"\nrestart_limit = 1\nrestart_window = "60s"\n'
    )
    with running_node(work, ["web"], config, cgroup_root=root) as process:
        n = SupervisedNode(process, root, f"http://127.0.0.1:{api}", f"127.0.0.1:{metrics}")
        process.wait_http(n.page_url, timeout=30)
        wait_page(n.page_url, lambda p: group_up(p, "api") and group_up(p, "backend"), timeout=60, what="api and backend up")
        for _ in range(3):
            assert httpx.get(f"{n.api}/api/v1/info", timeout=5).status_code == 200
        yield n


def test_real_kernel_group_metrics_read_from_each_group_cgroup(node: SupervisedNode) -> None:
    page = get_page(node.page_url)
    for group in ("api", "backend"):
        assert page.value("web_node_group_up", group=group) == 1
        assert page.value("web_node_group_state", group=group, state="up") == 1
        # The child was placed in its cgroup before exec: the whole interpreter is charged there.
        assert page.value("web_node_group_memory_usage_bytes", group=group) > 20 * 1024**2
        assert page.value("web_node_group_memory_peak_bytes", group=group) >= page.value("web_node_group_memory_usage_bytes",
                                                                                          group=group) * 0.5
        assert page.value("web_node_group_cpu_seconds_total", group=group, mode="user") > 0
        assert page.value("web_node_group_pids", group=group) >= 1
        assert page.value("web_node_group_start_time_seconds", group=group) > time.time() - 600
        assert page.get("web_node_group_memory_limit_bytes", group=group) is None  # no memory_max: unlimited
    assert page.value("web_node_group_memory_limit_bytes", group="gc") == 20 * 1024**2


def test_real_kernel_member_metrics_come_from_the_children(node: SupervisedNode) -> None:
    page = wait_page(node.page_url, lambda p: p.get("web_node_http_requests_total", member="api", endpoint="GetInfo",
                                                     method="GET", code="200") is not None, what="api's requests")
    assert page.value("web_node_http_requests_total", member="api", endpoint="GetInfo", method="GET", code="200") >= 3
    assert page.value("web_node_http_endpoint_enabled", member="api", endpoint="GetJob") == 1
    assert page.value("web_node_endpoint_cpu_seconds_total", member="api", endpoint="GetInfo") > 0
    for member in ("api", "scheduler", "build-tracker"):
        assert page.value("web_node_member_enabled", member=member) == 1
    # scheduler and build-tracker share the backend process, and each has its own CPU time.
    assert page.value("web_node_member_cpu_seconds_total", member="scheduler") > 0
    assert page.value("web_node_member_cpu_seconds_total", member="build-tracker") > 0
    assert page.value("web_node_scrape_errors_total", group="api") == 0


def test_real_kernel_full_page_passes_promtool(node: SupervisedNode) -> None:
    text = httpx.get(node.page_url, timeout=10).text
    assert text.count("# TYPE web_node_member_enabled gauge") == 1
    promtool_check_metrics(text)


def test_real_kernel_oom_kill_counted(node: SupervisedNode) -> None:
    page = wait_page(node.page_url, lambda p: p.get("web_node_group_state", group="gc", state="gave-up") == 1, timeout=40,
                     what="group gc gave up after its OOM kills")
    assert page.value("web_node_group_oom_kills_total", group="gc") >= 2  # the first start and the one restart
    assert page.value("web_node_group_restarts_total", group="gc") == 1
    assert page.value("web_node_group_up", group="gc") == 0
    assert page.value("web_node_group_oom_kills_total", group="api") == 0


def test_real_kernel_a_stopped_child_costs_the_timeout_and_is_counted(node: SupervisedNode) -> None:
    pids = node.pids("api")
    assert pids, "no process in the api group's cgroup"
    before = get_page(node.page_url).value("web_node_scrape_errors_total", group="api")
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        r = httpx.get(node.page_url, timeout=CHILD_TIMEOUT_S + 10)
        took = time.monotonic() - began
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert r.status_code == 200
    assert took < CHILD_TIMEOUT_S + 1.5, f"the scrape took {took:.1f} s"
    page = Page.parse(r.text)
    assert page.value("web_node_scrape_errors_total", group="api") == before + 1
    assert page.value("web_node_group_memory_usage_bytes", group="api") > 0  # the node still reads its cgroup
    assert page.get("web_node_member_enabled", member="api") is None
    assert page.value("web_node_member_enabled", member="scheduler") == 1  # other children still merged
    assert "group api" in node.process.wait_log("its member metrics are left out of this scrape (timeout")


def test_real_kernel_prometheus_scrapes_the_node(node: SupervisedNode, tmp_path: Path) -> None:
    with prometheus(tmp_path / "prometheus", [node.metrics]) as server:
        assert server.wait_value('web_node_group_memory_usage_bytes{group="api"}') > 0
        assert server.wait_value('web_node_group_oom_kills_total{group="gc"}', timeout=40) >= 1
        assert server.wait_value('web_node_member_enabled{member="build-tracker"}') == 1
        assert [t["health"] for t in server.targets()] == ["up"], server.targets()
