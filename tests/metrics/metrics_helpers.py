"""Helpers of the metrics tests: pages parsed into samples, promtool, a real
Prometheus server on loopback, and real nodes (``python -m web_node ...``)
that are always stopped, also when a test fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from node_helpers import NodeProcess, free_port, remove_cgroup_root, stop_session

REPO_ROOT = Path(__file__).resolve().parents[2]
# tests/cgroups would otherwise shadow the real ``cgroups`` package (a namespace
# package found first on sys.path); the metrics code imports it.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
for _name in [n for n in sys.modules if n == "cgroups" or n.startswith("cgroups.")]:
    if getattr(sys.modules[_name], "__file__", None) is None:
        del sys.modules[_name]

CGROUP_FIXTURES = REPO_ROOT / "tests" / "cgroups" / "fixtures"
ALERTS = REPO_ROOT / "web_node" / "metrics" / "alerts.yml"
DASHBOARD = REPO_ROOT / "web_node" / "metrics" / "grafana-dashboard.json"

#: Every metric SPEC.md names, as it appears in a "# TYPE" line of the text format.
SPEC_GROUP_METRICS = (
    "web_node_group_up", "web_node_group_restarts_total", "web_node_group_start_time_seconds",
    "web_node_group_memory_usage_bytes", "web_node_group_memory_working_set_bytes", "web_node_group_memory_peak_bytes",
    "web_node_group_memory_limit_bytes", "web_node_group_oom_kills_total", "web_node_group_cpu_seconds_total",
    "web_node_group_cpu_throttled_seconds_total", "web_node_group_pressure_waiting_seconds_total",
    "web_node_group_pressure_stalled_seconds_total", "web_node_group_pids",
)
SPEC_MEMBER_METRICS = (
    "web_node_member_enabled", "web_node_member_cpu_seconds_total", "web_node_member_runs_total",
    "web_node_member_last_run_timestamp_seconds", "web_node_http_requests_total", "web_node_http_request_duration_seconds",
    "web_node_http_requests_in_flight", "web_node_http_endpoint_enabled", "web_node_endpoint_cpu_seconds_total",
)


def require(command: str) -> str:
    path = shutil.which(command) or (f"/usr/bin/{command}" if os.path.exists(f"/usr/bin/{command}") else None)
    if path is None:
        pytest.fail(f"{command} is not installed (Debian package prometheus); run make deps")
    return path


# ---------------------------------------------------------------- pages


Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Page:
    """A parsed exposition page: {(sample name, labels): value} plus the raw text."""

    text: str
    samples: dict[tuple[str, Labels], float]

    @classmethod
    def parse(cls, text: str) -> Page:
        from prometheus_client.parser import text_string_to_metric_families

        samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = (s.name, frozenset(s.labels.items()))
                assert key not in samples, f"duplicate series {s.name}{s.labels} on the page"
                samples[key] = s.value
        return cls(text, samples)

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def value(self, name: str, **labels: str) -> float:
        v = self.get(name, **labels)
        assert v is not None, f"no sample {name}{labels} on the page:\n" + "\n".join(
            line for line in self.text.splitlines() if name in line)
        return v

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for (n, labels) in self.samples if n == name]

    def declares(self, family: str) -> bool:
        return f"# TYPE {family} " in self.text


def promtool_check_metrics(text: str) -> None:
    promtool = require("promtool")
    done = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0 and not out.strip(), f"promtool check metrics (status {done.returncode}):\n{out}"


# ---------------------------------------------------------------- a real Prometheus


class Prometheus:
    """A real Prometheus server on loopback with a temp config and storage, scraping ``targets`` every second."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        binary = require("prometheus")
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: web-node\n    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in targets)}]\n")
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        try:
            r = httpx.get(f"{self.url}/api/v1/targets", timeout=5)
            active: list[dict[str, Any]] = r.json()["data"]["activeTargets"]
            return active
        except (httpx.HTTPError, ValueError, KeyError):
            return []

    def wait_value(self, expr: str, timeout: float = 40.0) -> float:
        """The value of the first series ``expr`` returns, once Prometheus has one."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            try:
                result = self.query(expr)
            except httpx.HTTPError as e:
                last = e
            else:
                if result:
                    return float(result[0]["value"][1])
                last = result
            time.sleep(0.3)
        raise AssertionError(f"prometheus had no value for {expr} within {timeout} s (last: {last}); "
                             f"targets: {self.targets()}\n{self.log()}")

    def stop(self) -> None:
        stop_session(self.proc, 10)
        self._log.close()


@contextlib.contextmanager
def prometheus(workdir: Path, targets: list[str]) -> Iterator[Prometheus]:
    server = Prometheus(workdir, targets)
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- nodes


@contextlib.contextmanager
def running_node(workdir: Path, args: list[str], config_text: str, *, cgroup_root: str | None = None,
                 env: dict[str, str] | None = None) -> Iterator[Any]:
    """``python -m web_node ARGS --config CFG``, stopped (and its cgroup root removed) whatever happens."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.toml"
    config.write_text(config_text)
    node = NodeProcess([*args, "--config", str(config)], cwd=workdir, env=env)
    try:
        yield node
    finally:
        node.stop()
        if cgroup_root is not None:
            remove_cgroup_root(cgroup_root)


def get_page(url: str, accept: str | None = None, timeout: float = 10.0) -> Page:
    headers = {"Accept": accept} if accept else {}
    r = httpx.get(url, headers=headers, timeout=timeout)
    assert r.status_code == 200, f"{url}: {r.status_code} {r.text}"
    return Page.parse(r.text)


def wait_page(url: str, ready: Callable[[Page], bool], timeout: float = 30.0, what: str = "") -> Page:
    deadline = time.monotonic() + timeout
    page = None
    while time.monotonic() < deadline:
        try:
            page = get_page(url)
        except httpx.HTTPError:
            page = None
        if page is not None and ready(page):
            return page
        time.sleep(0.2)
    raise AssertionError(f"{url} never showed {what or 'what the test waits for'} within {timeout} s; last page:\n"
                         + (page.text if page else "(no answer)"))
