"""The shipped alert rules and Grafana dashboard: valid for promtool, firing
when they should (``promtool test rules``), and naming only metrics the
node exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from metrics_helpers import ALERTS, DASHBOARD, SPEC_GROUP_METRICS, SPEC_MEMBER_METRICS, require

#: What the page has beyond SPEC.md.
EXTRA_METRICS = ("web_node_group_state", "web_node_group_pids_limit", "web_node_scrape_errors_total",
                 "web_node_member_run_duration_seconds")
KNOWN = {*SPEC_GROUP_METRICS, *SPEC_MEMBER_METRICS, *EXTRA_METRICS}
REQUESTS = "web_node_http_requests_total"
HISTOGRAMS = {"web_node_http_request_duration_seconds", "web_node_member_run_duration_seconds"}


def promtool(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([require("promtool"), *args], capture_output=True, timeout=60, cwd=cwd)
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, f"promtool {' '.join(args)} (status {done.returncode}):\n{out}"
    return out


def metric_names(expr: str) -> set[str]:
    names = set()
    for name in re.findall(r"\bweb_node_[a-z_]+", expr):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        names.add(base if base in HISTOGRAMS else name)
    return names


def test_alert_rules_pass_promtool_check() -> None:
    assert "SUCCESS: 8 rules found" in promtool("check", "rules", str(ALERTS))


def test_alert_rules_cover_memory_oom_crash_loop_and_errors() -> None:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"WebNodeGroupNearMemoryLimit", "WebNodeGroupOOMKilled", "WebNodeGroupCrashLooping",
            "WebNodeEndpointErrorRate"} <= names
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        unknown = metric_names(rule["expr"]) - KNOWN
        assert not unknown, f"{rule['alert']} uses metrics the node does not export: {unknown}"


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    all_labels = {"instance": "n1", "job": "web-node", **labels}
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in all_labels.items()) + "}", "values": values}


def _alert(at: str, name: str, *fired: dict[str, Any]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": list(fired)}


def _fired(severity: str, summary: str, **labels: str | None) -> dict[str, Any]:
    """An alert expected to fire; a label given as None is expected to be absent (aggregated away)."""
    expected = {"instance": "n1", "job": "web-node", "severity": severity, **labels}
    return {"exp_labels": {k: v for k, v in expected.items() if v is not None}, "exp_annotations": {"summary": summary}}


def test_alert_rules_fire_when_they_should(tmp_path: Path) -> None:
    # The descriptions are long prose; compare the summaries (promtool check rules parsed every template).
    doc = yaml.safe_load(ALERTS.read_text())
    for rule in doc["groups"][0]["rules"]:
        del rule["annotations"]["description"]
    rules = tmp_path / "alerts.yml"
    rules.write_text(yaml.safe_dump(doc))
    mib = 1024 * 1024
    cases: dict[str, Any] = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {   # near the memory limit: api at 95 % for long enough, ui at 50 %, backend unlimited
                "interval": "1m",
                "input_series": [
                    _series("web_node_group_memory_working_set_bytes", f"{95 * mib}x20", group="api"),
                    _series("web_node_group_memory_limit_bytes", f"{100 * mib}x20", group="api"),
                    _series("web_node_group_memory_working_set_bytes", f"{50 * mib}x20", group="ui"),
                    _series("web_node_group_memory_limit_bytes", f"{100 * mib}x20", group="ui"),
                    _series("web_node_group_memory_working_set_bytes", f"{500 * mib}x20", group="backend"),
                ],
                "alert_rule_test": [
                    _alert("3m", "WebNodeGroupNearMemoryLimit"),  # not yet: "for: 5m"
                    _alert("10m", "WebNodeGroupNearMemoryLimit",
                           _fired("warning", "web-node group api is at 95% of its memory limit", group="api")),
                ],
            },
            {   # an OOM kill, then none for a while; a counter reset (node restart) is not a kill
                "interval": "1m",
                "input_series": [
                    _series("web_node_group_oom_kills_total", "0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", group="gc"),
                    _series("web_node_group_oom_kills_total", "3 3 3 0 0 0", group="api"),
                ],
                "alert_rule_test": [
                    _alert("1m", "WebNodeGroupOOMKilled"),
                    _alert("3m", "WebNodeGroupOOMKilled", _fired("critical", "web-node group gc was OOM-killed", group="gc")),
                    _alert("16m", "WebNodeGroupOOMKilled"),
                ],
            },
            {   # crash loop: restarts climbing every minute; then given up
                "interval": "1m",
                "input_series": [
                    _series("web_node_group_restarts_total", "0+1x15", group="ui"),
                    _series("web_node_group_restarts_total", "0x15", group="api"),
                    _series("web_node_group_state", "0x5 1x10", group="ui", state="gave-up"),
                    _series("web_node_group_state", "0x15", group="api", state="gave-up"),
                ],
                "alert_rule_test": [
                    _alert("10m", "WebNodeGroupCrashLooping",
                           _fired("warning", "web-node group ui restarted 10 times in 15 minutes", group="ui")),
                    _alert("4m", "WebNodeGroupGaveUp"),
                    _alert("8m", "WebNodeGroupGaveUp",
                           _fired("critical", "web-node group ui is down: the supervisor gave up restarting it",
                                  group="ui", state="gave-up")),
                ],
            },
            {   # endpoint errors: GetJob 20 % 5xx at 10 req/s; GetInfo fine; a tiny endpoint with one error ignored
                "interval": "1m",
                "input_series": [
                    _series(REQUESTS, "0+480x20", member="api", endpoint="GetJob", method="GET", code="200"),
                    _series(REQUESTS, "0+120x20", member="api", endpoint="GetJob", method="GET", code="500"),
                    _series(REQUESTS, "0+600x20", member="api", endpoint="GetInfo", method="GET", code="200"),
                    _series(REQUESTS, "0x10 1x10", member="api", endpoint="ListWorkers", method="GET", code="503"),
                ],
                "alert_rule_test": [
                    _alert("15m", "WebNodeEndpointErrorRate",
                           # summed by instance, member and endpoint: no job label
                           _fired("warning", "api endpoint GetJob answers 20% with 5xx", member="api", endpoint="GetJob",
                                  job=None)),
                ],
            },
            {   # periodic members: gc failing, scheduler stalled, build-tracker paused (skipping) is not an alert
                "interval": "1m",
                "input_series": [
                    _series("web_node_member_runs_total", "0+1x40", member="gc", outcome="error"),
                    _series("web_node_member_runs_total", "0x40", member="gc", outcome="ok"),
                    _series("web_node_member_last_run_timestamp_seconds", "0x40", member="scheduler"),
                    _series("web_node_member_runs_total", "0x40", member="scheduler", outcome="ok"),
                    _series("web_node_member_last_run_timestamp_seconds", "0x40", member="build-tracker"),
                    _series("web_node_member_runs_total", "0+1x40", member="build-tracker", outcome="skipped_paused"),
                ],
                "alert_rule_test": [
                    _alert("30m", "WebNodeMemberRunsFailing",
                           _fired("warning", "periodic member gc fails most of its runs", member="gc")),
                    _alert("30m", "WebNodeMemberRunsStalled",
                           _fired("warning", "periodic member scheduler has not run for 30m 0s", member="scheduler")),
                ],
            },
            {
                "interval": "1m",
                "input_series": [_series("web_node_scrape_errors_total", "0+1x20", group="api")],
                "alert_rule_test": [
                    _alert("12m", "WebNodeMetricsIncomplete",
                           _fired("info", "web-node cannot get the metrics of group api", group="api")),
                ],
            },
        ],
    }
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(cases, sort_keys=False))
    out = promtool("test", "rules", str(test_file))
    assert "SUCCESS" in out


# ---------------------------------------------------------------- dashboard


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dash["panels"] for target in panel.get("targets", [])]


def test_dashboard_is_importable_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "web-node" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "instance", "group", "member"} <= variables
    for panel in dash["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]


def test_dashboard_queries_are_valid_promql_on_exported_metrics(tmp_path: Path) -> None:
    rules = []
    for i, (title, expr) in enumerate(dashboard_exprs()):
        unknown = metric_names(expr) - KNOWN
        assert not unknown, f"panel {title!r} uses metrics the node does not export: {unknown}"
        # Grafana's variables, as Grafana would fill them in.
        concrete = (expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
                    .replace("$instance", ".*").replace("$group", ".*").replace("$member", ".*"))
        rules.append({"record": f"dashboard:panel_{i}", "expr": concrete})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", str(path))


def test_dashboard_shows_every_spec_metric() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_exprs()))
    missing = {*SPEC_GROUP_METRICS, *SPEC_MEMBER_METRICS} - used
    assert not missing, f"no panel shows {sorted(missing)}"
