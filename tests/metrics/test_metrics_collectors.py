"""The group collector on fixture cgroup trees (v2, hybrid, v1: this machine
shows only one of them), the page merge, the histogram, and the own-cgroup
helper of ``--in-process``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from metrics_helpers import CGROUP_FIXTURES, Page, promtool_check_metrics
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

import cgroups
from web_node.metrics import IN_PROCESS_GROUP, own_cgroup
from web_node.metrics._exposition import PageWriter
from web_node.metrics._groups import GroupReading, read_stats, write_group_families
from web_node.metrics._histogram import Histogram
from web_node.metrics._page import merge_pages
from web_node.supervisor import GroupSnapshot, GroupState


def fixture_tree(kind: str, tmp_path: Path) -> cgroups.CgroupTree:
    base = tmp_path / kind
    shutil.copytree(CGROUP_FIXTURES / kind, base, symlinks=True)
    layout = cgroups.detect_layout(sys_root=str(base / "sys" / "fs" / "cgroup"), proc_root=str(base / "proc"))
    assert layout.kind == kind
    return cgroups.CgroupTree(layout, "web-node")


def snapshot(name: str, cgroup: cgroups.Cgroup | None, *, state: GroupState = "up", restarts: int = 0,
             start_time: float | None = 1_700_000_000.0, socket: str | None = None) -> GroupSnapshot:
    return GroupSnapshot(name=name, members=(name,), state=state,
                         pid=4242 if state == "up" else None,
                         restarts=restarts, start_time=start_time, last_exit=None, cgroup=cgroup, metrics_socket=socket)


def render(readings: list[GroupReading]) -> Page:
    writer = PageWriter(openmetrics=False)
    write_group_families(writer, readings)
    return Page.parse(writer.finish().decode())


def test_fixture_v2_every_group_metric_from_the_cgroup_files(tmp_path: Path) -> None:
    tree = fixture_tree("v2", tmp_path)
    page = render(read_stats([snapshot("api", tree.leaf("api"), restarts=3)]))
    g = {"group": "api"}
    assert page.value("web_node_group_up", **g) == 1
    assert page.value("web_node_group_state", group="api", state="up") == 1
    assert page.value("web_node_group_state", group="api", state="gave-up") == 0
    assert page.value("web_node_group_restarts_total", **g) == 3
    assert page.value("web_node_group_start_time_seconds", **g) == 1_700_000_000
    assert page.value("web_node_group_memory_usage_bytes", **g) == 150994944  # memory.current
    assert page.value("web_node_group_memory_working_set_bytes", **g) == 119537664  # minus inactive_file
    assert page.value("web_node_group_memory_peak_bytes", **g) == 201326592  # memory.peak
    assert page.value("web_node_group_memory_limit_bytes", **g) == 256 * 1024**2  # memory.max
    assert page.value("web_node_group_oom_kills_total", **g) == 1  # memory.events oom_kill
    assert page.value("web_node_group_cpu_seconds_total", group="api", mode="user") == 10.0
    assert page.value("web_node_group_cpu_seconds_total", group="api", mode="system") == pytest.approx(2.345678)
    assert page.value("web_node_group_cpu_throttled_seconds_total", **g) == 2.5
    assert page.value("web_node_group_pressure_waiting_seconds_total", group="api", resource="memory") == 0.45
    assert page.value("web_node_group_pressure_waiting_seconds_total", group="api", resource="cpu") == 3.2
    assert page.value("web_node_group_pressure_waiting_seconds_total", group="api", resource="io") == 0.09
    assert page.value("web_node_group_pressure_stalled_seconds_total", group="api", resource="memory") == 0.25
    assert page.value("web_node_group_pressure_stalled_seconds_total", group="api", resource="io") == 0.08
    assert page.value("web_node_group_pids", **g) == 7
    assert page.get("web_node_group_pids_limit", **g) is None  # pids.max "max"
    promtool_check_metrics(page.text)


def test_fixture_v2_unlimited_and_missing_files_leave_samples_out(tmp_path: Path) -> None:
    """ui has memory.max "max" and no memory.peak (kernel < 5.19): no sample rather than a misleading 0."""
    tree = fixture_tree("v2", tmp_path)
    page = render(read_stats([snapshot("ui", tree.leaf("ui"))]))
    assert page.get("web_node_group_memory_limit_bytes", group="ui") is None
    assert page.get("web_node_group_memory_peak_bytes", group="ui") is None
    assert page.value("web_node_group_memory_usage_bytes", group="ui") == 52428800
    assert page.get("web_node_group_pressure_stalled_seconds_total", group="ui", resource="cpu") is None
    assert page.value("web_node_group_pids_limit", group="ui") == 100
    assert page.declares("web_node_group_memory_limit_bytes")  # the family is still described
    promtool_check_metrics(page.text)


def test_fixture_hybrid_memory_from_v1_cpu_and_pressure_from_the_cgroup2_tree(tmp_path: Path) -> None:
    tree = fixture_tree("hybrid", tmp_path)
    page = render(read_stats([snapshot("api", tree.leaf("api"))]))
    assert page.value("web_node_group_memory_usage_bytes", group="api") == 150994944
    assert page.value("web_node_group_oom_kills_total", group="api") == 1  # memory.oom_control oom_kill
    assert page.value("web_node_group_cpu_seconds_total", group="api", mode="user") == 10.0
    assert page.value("web_node_group_pressure_waiting_seconds_total", group="api", resource="memory") == 0.45
    assert page.value("web_node_group_pids_limit", group="api") == 64
    promtool_check_metrics(page.text)


def test_fixture_v1_has_no_pressure_metrics(tmp_path: Path) -> None:
    tree = fixture_tree("v1", tmp_path)
    page = render(read_stats([snapshot("api", tree.leaf("api"))]))
    assert page.value("web_node_group_memory_limit_bytes", group="api") == 256 * 1024**2  # memory.limit_in_bytes
    assert page.value("web_node_group_cpu_seconds_total", group="api", mode="system") == pytest.approx(2.34)
    assert page.series("web_node_group_pressure_waiting_seconds_total") == []
    assert page.series("web_node_group_pressure_stalled_seconds_total") == []
    promtool_check_metrics(page.text)


def test_fixture_group_without_cgroup_has_only_supervisor_metrics(tmp_path: Path) -> None:
    """Degraded mode (no cgroups) and a group that gave up: up 0, its restarts and state still shown."""
    page = render(read_stats([snapshot("gc", None, state="gave-up", restarts=5, start_time=None)]))
    assert page.value("web_node_group_up", group="gc") == 0
    assert page.value("web_node_group_state", group="gc", state="gave-up") == 1
    assert page.value("web_node_group_restarts_total", group="gc") == 5
    assert page.get("web_node_group_start_time_seconds", group="gc") is None
    assert page.series("web_node_group_memory_usage_bytes") == []


def test_fixture_cgroup_removed_under_the_reader_gives_no_cgroup_samples(tmp_path: Path) -> None:
    """A group restarting or removed by reload: its cgroup directory is gone mid-scrape; the scrape still works."""
    tree = fixture_tree("v2", tmp_path)
    leaf = tree.leaf("api")
    shutil.rmtree(leaf.path())
    errors: dict[str, int] = {}
    page = render(read_stats([snapshot("api", leaf)], errors))
    assert page.value("web_node_group_up", group="api") == 1
    assert page.series("web_node_group_memory_usage_bytes") == []


def test_fixture_own_cgroup_of_an_in_process_run(tmp_path: Path) -> None:
    """--in-process: the process's own cgroup (from /proc/self/cgroup), under group="in-process"."""
    base = tmp_path / "v2"
    shutil.copytree(CGROUP_FIXTURES / "v2", base, symlinks=True)
    layout = cgroups.detect_layout(sys_root=str(base / "sys" / "fs" / "cgroup"), proc_root=str(base / "proc"))
    cg = own_cgroup(layout)
    assert cg is not None and cg.name == IN_PROCESS_GROUP
    assert cg.path() == str(base / "sys" / "fs" / "cgroup" / "system.slice" / "web-node.service")


def test_own_cgroup_on_this_machine_reads_memory() -> None:
    layout = cgroups.detect_layout()
    if layout.kind == "none":
        pytest.skip("this machine has no cgroup filesystem")
    cg = own_cgroup(layout)
    assert cg is not None
    stats = cg.stats()
    assert stats.memory_usage_bytes is not None and stats.memory_usage_bytes > 0


def test_own_cgroup_without_cgroups_is_none(tmp_path: Path) -> None:
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text("")
    (tmp_path / "proc" / "self" / "mountinfo").write_text("")
    layout = cgroups.detect_layout(sys_root=str(tmp_path / "nothing"), proc_root=str(tmp_path / "proc"))
    assert own_cgroup(layout) is None


# ---------------------------------------------------------------- merging pages


CHILD_A = b"""# HELP web_node_member_enabled 1 when enabled
# TYPE web_node_member_enabled gauge
web_node_member_enabled{member="api"} 1.0
# HELP web_node_http_requests_total HTTP requests
# TYPE web_node_http_requests_total counter
web_node_http_requests_total{code="200",endpoint="GetInfo",member="api",method="GET"} 3.0
"""
CHILD_B = b"""# HELP web_node_member_enabled 1 when enabled
# TYPE web_node_member_enabled gauge
web_node_member_enabled{member="gc"} 1.0
web_node_member_enabled{member="scheduler"} 1.0
# HELP web_node_member_runs_total Runs
# TYPE web_node_member_runs_total counter
web_node_member_runs_total{member="gc",outcome="ok"} 2.0
"""


def test_merge_names_each_family_once_and_keeps_every_sample() -> None:
    merged = merge_pages([CHILD_A, CHILD_B], openmetrics=False).decode()
    assert merged.count("# TYPE web_node_member_enabled gauge") == 1
    assert merged.count("# HELP web_node_member_enabled") == 1
    page = Page.parse(merged)
    assert page.value("web_node_member_enabled", member="api") == 1
    assert page.value("web_node_member_enabled", member="gc") == 1
    assert page.value("web_node_member_enabled", member="scheduler") == 1
    assert page.value("web_node_member_runs_total", member="gc", outcome="ok") == 2
    # The samples of a family are together, right after its TYPE line.
    lines = merged.splitlines()
    start = lines.index("# TYPE web_node_member_enabled gauge")
    assert all(line.startswith("web_node_member_enabled{") for line in lines[start + 1:start + 4])
    promtool_check_metrics(merged)


def test_merge_openmetrics_pages_end_with_one_eof() -> None:
    from prometheus_client import CollectorRegistry, Counter, Gauge

    pages = []
    for member in ("api", "ui"):
        reg = CollectorRegistry()
        Gauge("web_node_member_enabled", "1 when enabled", ["member"], registry=reg).labels(member).set(1)
        Counter("web_node_member_cpu_seconds", "cpu", ["member"], registry=reg).labels(member).inc(0.5)
        pages.append(generate_openmetrics(reg))
    merged = merge_pages(pages, openmetrics=True).decode()
    assert merged.count("# EOF") == 1 and merged.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(merged)}  # the strict OpenMetrics parser
    assert {s.labels["member"] for s in families["web_node_member_enabled"].samples} == {"api", "ui"}


def test_merge_label_values_with_escaped_newlines_and_quotes_survive() -> None:
    page = b'# HELP m a "quoted"\\nhelp\n# TYPE m gauge\nm{path="a\\nb\\"c"} 1.0\n'
    merged = merge_pages([page, b"# HELP m other\n# TYPE m gauge\nm{path=\"x\"} 2.0\n"], openmetrics=False).decode()
    parsed = Page.parse(merged)
    assert parsed.value("m", path='a\nb"c') == 1.0
    assert parsed.value("m", path="x") == 2.0


# ---------------------------------------------------------------- histogram


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    assert h.buckets() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert h.count == 5
    assert h.sum == pytest.approx(8.65)


def test_histogram_rejects_unsorted_bounds() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram((1.0, 0.5))


# ---------------------------------------------------------------- the page writer


def test_writer_text_format_escapes_and_names_counters_with_total() -> None:
    from prometheus_client import CollectorRegistry, Gauge

    from web_node.metrics._exposition import labels

    w = PageWriter(openmetrics=False)
    w.family("x_requests_total", "counter", 'help with "quotes" and a \\ backslash\nand a newline')
    w.sample("x_requests_total", labels(path='a"b\\c\nd'), 3)
    w.family("x_latency_seconds", "histogram", "latency")
    w.histogram("x_latency_seconds", labels(member="api"), ("0.1", "+Inf"), (1, 2), 0.25)
    reg = CollectorRegistry()
    Gauge("x_enabled", "enabled", ["member"], registry=reg).labels("api").set(1)
    for metric in reg.collect():
        w.metric(metric)
    text = w.finish().decode()
    promtool_check_metrics(text)
    page = Page.parse(text)
    assert page.value("x_requests_total", path='a"b\\c\nd') == 3
    assert page.value("x_latency_seconds_bucket", member="api", le="0.1") == 1
    assert page.value("x_latency_seconds_count", member="api") == 2
    assert page.value("x_enabled", member="api") == 1


def test_writer_openmetrics_is_valid_for_the_strict_parser() -> None:
    from web_node.metrics._exposition import labels

    w = PageWriter(openmetrics=True)
    w.family("x_requests_total", "counter", 'requests "all"')
    w.sample("x_requests_total", labels(code="200"), 3)
    w.family("x_start_time_seconds", "gauge", "start")
    w.sample("x_start_time_seconds", "", 1_795_928_590.1597931)
    w.family("x_latency_seconds", "histogram", "latency")
    w.histogram("x_latency_seconds", "", ("0.1", "1.0", "+Inf"), (0, 1, 1), 0.5)
    text = w.finish().decode()
    assert "# TYPE x_requests counter" in text and text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["x_requests"].samples[0].value == 3
    assert families["x_start_time_seconds"].samples[0].value == pytest.approx(1_795_928_590.16)
    assert [s.value for s in families["x_latency_seconds"].samples if s.name.endswith("_bucket")] == [0, 1, 1]


def test_writer_histogram_template_keeps_percent_signs_and_checks_lengths() -> None:
    from web_node.metrics._exposition import labels

    w = PageWriter(openmetrics=False)
    w.family("x_latency_seconds", "histogram", "latency at 100%")
    w.histogram("x_latency_seconds", labels(member="50%d", endpoint="%s"), ("0.1", "+Inf"), (1, 3), 0.75)
    text = w.finish().decode()
    promtool_check_metrics(text)
    page = Page.parse(text)
    assert page.value("x_latency_seconds_bucket", member="50%d", endpoint="%s", le="+Inf") == 3
    assert page.value("x_latency_seconds_count", member="50%d", endpoint="%s") == 3
    assert page.value("x_latency_seconds_sum", member="50%d", endpoint="%s") == 0.75
    assert "latency at 100%" in text
    with pytest.raises(ValueError, match="2 buckets but 1 counts"):
        w.histogram("x_latency_seconds", "", ("0.1", "+Inf"), (1,), 0.0)


def test_front_door_exports() -> None:
    import web_node.metrics as metrics

    assert sorted(metrics.__all__) == sorted([
        "CHILD_TIMEOUT_S", "ENV_TASK_ACCOUNTING", "IN_PROCESS_GROUP", "NodePage", "ProcessMetrics", "own_cgroup",
        "serve_node_metrics",
    ])
    for name in metrics.__all__:
        assert getattr(metrics, name) is not None
