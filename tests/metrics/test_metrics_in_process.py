"""The page of a real ``python -m web_node web --in-process`` run: every
metric of SPEC.md, ``promtool check metrics`` clean, and a real Prometheus
server scraping it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from metrics_helpers import (
    SPEC_GROUP_METRICS,
    SPEC_MEMBER_METRICS,
    Page,
    get_page,
    prometheus,
    promtool_check_metrics,
    running_node,
    wait_page,
)
from node_helpers import free_port

PERIODIC = ("scheduler", "build-tracker", "gc", "syslog-drainer")


@dataclass(frozen=True)
class InProcessNode:
    process: Any
    api: str
    metrics: str  # HOST:PORT

    @property
    def page_url(self) -> str:
        return f"http://{self.metrics}/metrics"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessNode]:
    work = tmp_path_factory.mktemp("in-process")
    api, ui, gateway, metrics = free_port(), free_port(), free_port(), free_port()
    config = (
        f'[node]\ndata_dir = "{work / "data"}"\nmetrics_listen = "127.0.0.1:{metrics}"\nshutdown_grace = "2s"\n'
        f'[members.api]\nlisten = "127.0.0.1:{api}"\ndisabled_endpoints = ["ListAllJobs"]\n'
        f'[members.ui]\nlisten = "127.0.0.1:{ui}"\n'
        f'[members.gateway]\nlisten = "127.0.0.1:{gateway}"\n'
    )
    with running_node(work, ["web", "--in-process"], config) as process:
        n = InProcessNode(process, f"http://127.0.0.1:{api}", f"127.0.0.1:{metrics}")
        process.wait_http(f"{n.api}/api/v1/info")
        for _ in range(3):
            assert httpx.get(f"{n.api}/api/v1/info", timeout=5).status_code == 200
        httpx.get(f"{n.api}/api/v1/jobs", timeout=5)
        # Every periodic member runs once within about a second of its start.
        wait_page(n.page_url, lambda p: all(p.series("web_node_member_runs_total") and
                                            any(s["member"] == m for s in p.series("web_node_member_runs_total"))
                                            for m in PERIODIC), what="a run of every periodic member")
        yield n


def test_in_process_page_has_every_spec_metric_and_passes_promtool(node: InProcessNode) -> None:
    text = httpx.get(node.page_url, timeout=10).text
    page = Page.parse(text)
    missing = [m for m in (*SPEC_GROUP_METRICS, *SPEC_MEMBER_METRICS) if not page.declares(m)]
    assert not missing, f"families missing from the page: {missing}"
    promtool_check_metrics(text)


def test_in_process_cgroup_metrics_describe_the_process_own_cgroup(node: InProcessNode) -> None:
    page = get_page(node.page_url)
    g = {"group": "in-process"}
    assert page.value("web_node_group_up", **g) == 1
    assert page.value("web_node_group_memory_usage_bytes", **g) > 20 * 1024**2  # at least this python with the web stack
    assert page.value("web_node_group_cpu_seconds_total", mode="user", **g) > 0
    assert page.value("web_node_group_pids", **g) >= 1
    assert page.value("web_node_group_restarts_total", **g) == 0
    assert {s["group"] for s in page.series("web_node_group_up")} == {"in-process"}


def test_in_process_member_and_endpoint_metrics(node: InProcessNode) -> None:
    page = get_page(node.page_url)
    for member in ("api", "ui", "gateway", *PERIODIC):
        assert page.value("web_node_member_enabled", member=member) == 1
        assert page.value("web_node_member_cpu_seconds_total", member=member) > 0
    assert page.value("web_node_http_requests_total", member="api", endpoint="GetInfo", method="GET", code="200") >= 3
    assert page.value("web_node_endpoint_cpu_seconds_total", member="api", endpoint="GetInfo") > 0
    assert page.value("web_node_http_request_duration_seconds_count", member="api", endpoint="GetInfo") >= 3
    assert page.value("web_node_http_requests_in_flight", member="api", endpoint="GetInfo") == 0
    assert page.value("web_node_http_endpoint_enabled", member="api", endpoint="GetInfo") == 1
    assert page.value("web_node_http_endpoint_enabled", member="gateway", endpoint="RegisterWorker") == 1
    for member in PERIODIC:
        runs = [s for s in page.series("web_node_member_runs_total") if s["member"] == member]
        assert runs, f"no run of {member}"
        assert page.value("web_node_member_last_run_timestamp_seconds", member=member) > 0


def test_in_process_disabled_endpoint_reads_0(node: InProcessNode) -> None:
    page = get_page(node.page_url)
    assert page.value("web_node_http_endpoint_enabled", member="api", endpoint="ListAllJobs") == 0
    assert page.value("web_node_http_endpoint_enabled", member="api", endpoint="ListPipelines") == 1


def test_in_process_page_scraped_by_a_real_prometheus(node: InProcessNode, tmp_path: Path) -> None:
    with prometheus(tmp_path / "prometheus", [node.metrics]) as server:
        memory = server.wait_value('web_node_group_memory_usage_bytes{group="in-process"}')
        assert memory > 0
        assert server.wait_value('web_node_member_enabled{member="api"}') == 1
        # The target is healthy: the whole page was accepted (Prometheus negotiates OpenMetrics here).
        health = [t["health"] for t in server.targets()]
        assert health == ["up"], server.targets()
