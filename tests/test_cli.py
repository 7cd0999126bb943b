"""``web-node`` as operators call it: real ``python -m web_node`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from node_helpers import free_port, listening

CONFIGS = Path(__file__).parent / "fixtures" / "configs"
BACKEND_TOML = str(CONFIGS / "backend.toml")
MEMBERS = [
    ("api", "api", "http"), ("ui", "ui", "http"), ("scheduler", "backend", "periodic"),
    ("build-tracker", "backend", "periodic"), ("gc", "backend", "periodic"),
    ("syslog-drainer", "backend", "periodic"), ("gateway", "gateway", "http"),
]


def web_node(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m web_node ARGS`` to completion; the caller's WEB_NODE_* variables never leak in."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WEB_NODE_")}
    return subprocess.run([sys.executable, "-m", "web_node", *args], cwd=cwd, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=30)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("web-node: configuration error: ")
    return lines[0]


# ---------------------------------------------------------------- members


def test_members_table(tmp_path: Path) -> None:
    done = web_node(["members"], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["MEMBER", "ROLE", "KIND"]
    rows = [tuple(line.split()[:3]) for line in lines[1:]]
    assert rows == MEMBERS
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert "10s" in by_name["scheduler"] and "30s" in by_name["gc"]
    assert "127.0.0.1:8080" in by_name["api"] and "GetInfo" in by_name["api"]


def test_members_json(tmp_path: Path) -> None:
    done = web_node(["members", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["name"], r["role"], r["kind"]) for r in rows] == MEMBERS
    by_name = {r["name"]: r for r in rows}
    assert by_name["gc"]["interval"] == "30s"
    assert by_name["api"]["listen"] == "127.0.0.1:8080"
    assert "ListAllJobs" in by_name["api"]["endpoints"]
    assert by_name["gateway"]["endpoints"] and by_name["gc"]["endpoints"] == []
    assert all(r["description"] for r in rows)


# ---------------------------------------------------------------- plan


def test_plan_shows_the_backend_group_with_its_limit_and_cgroup(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = web_node(["plan", "--config", BACKEND_TOML, "--data-dir", str(data)], tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "4 group(s)" in out
    lines = out.splitlines()
    i = lines.index("  group backend: scheduler, build-tracker, gc, syslog-drainer")
    block = lines[i:i + 6]
    assert any("limits:" in line and "memory_max=256 MiB" in line for line in block), out
    cgroup = next(line for line in block if line.strip().startswith("cgroup:"))
    if "cgroups unavailable" not in cgroup:
        assert cgroup.rstrip().endswith("/backend"), cgroup
    for other in ("api", "ui", "gateway"):
        assert f"  group {other}: {other}" in lines
    assert "disabled members: none" in out
    assert "disabled endpoints: none" in out
    assert BACKEND_TOML in out
    assert not data.exists(), "plan must not create the data dir"


def test_plan_json_has_the_same_facts(tmp_path: Path) -> None:
    done = web_node(["plan", "--json", "--config", BACKEND_TOML, "--data-dir", str(tmp_path / "data"),
                     "--disable-endpoint", "ListAllJobs"], tmp_path, env={"WEB_NODE_DISABLE_GC": "1"})
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    groups = {g["name"]: g for g in plan["groups"]}
    assert list(groups) == ["api", "ui", "backend", "gateway"]
    backend = groups["backend"]
    assert backend["members"] == ["scheduler", "build-tracker", "syslog-drainer"]  # gc disabled by the env
    assert backend["limits"]["memory_max_bytes"] == 256 * 1024**2
    assert "256 MiB" in backend["limits_text"]
    assert backend["restart"]["policy"] == "on-failure"
    if plan["cgroups"]["layout"] != "none":
        assert backend["cgroup"].endswith("/backend")
        assert all(p.endswith("/backend") for p in backend["cgroup_paths"].values())
    assert groups["api"]["listen"] == {"api": "127.0.0.1:8080"}
    assert plan["disabled_members"] == ["gc"]
    assert plan["disabled_endpoints"] == {"api": ["ListAllJobs"]}
    assert plan["node"]["data_dir"] == str(tmp_path / "data")
    assert plan["sources"] == [BACKEND_TOML, "env WEB_NODE_DISABLE_GC", "flags"]


def test_plan_with_env_config_and_switches(tmp_path: Path) -> None:
    env = {"WEB_NODE_CONFIG": BACKEND_TOML, "WEB_NODE_DISABLE_GC": "1", "WEB_NODE_DISABLE_ENDPOINTS": "GetJob"}
    done = web_node(["plan", "--data-dir", str(tmp_path / "data"), "--disable-endpoint", "ListAllJobs"], tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "  group backend: scheduler, build-tracker, syslog-drainer" in out.splitlines()
    assert "disabled members: gc" in out
    disabled_endpoints = next(line for line in out.splitlines() if line.startswith("disabled endpoints:"))
    assert "ListAllJobs" in disabled_endpoints and "GetJob" in disabled_endpoints and "api" in disabled_endpoints


def test_plan_for_one_role(tmp_path: Path) -> None:
    done = web_node(["plan", "backend", "--json", "--config", BACKEND_TOML, "--data-dir", str(tmp_path / "d")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert [g["name"] for g in json.loads(done.stdout)["groups"]] == ["backend"]


def test_plan_hides_the_database_password(tmp_path: Path) -> None:
    cfg = tmp_path / "pg.toml"
    cfg.write_text('[node]\ndatabase = "postgresql://ci:hunter2@db.example.com/ci"\n')
    done = web_node(["plan", "--config", str(cfg), "--data-dir", str(tmp_path / "d")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout
    assert "db.example.com" in done.stdout


def test_plan_refuses_a_misspelled_limit(tmp_path: Path) -> None:
    done = web_node(["plan", "--config", str(CONFIGS / "typo-memry-max.toml")], tmp_path)
    line = one_error_line(done)
    assert "memry_max" in line
    assert "did you mean 'memory_max'" in line


# ---------------------------------------------------------------- bad configuration: exit 2, nothing started
# (test_config.py checks every kind of mistake directly; these check that each source of one stops the process.)


@pytest.mark.parametrize(
    ("command", "config", "env", "flags", "needles"),
    [
        (["web"], "[groups.backend]\nmembers = ['gc']\nmemry_max = '1G'\n", {}, [],
         ["groups.backend.memry_max", "did you mean 'memory_max'"]),
        (["api", "--in-process"], "", {}, ["--disable", "gcc"], ["--disable", "'gcc'", "did you mean 'gc'"]),
        (["web", "--in-process"], "", {"WEB_NODE_DISABLE_ENDPOINTS": "ListAllJobs,GetJobz"}, [],
         ["WEB_NODE_DISABLE_ENDPOINTS", "'GetJobz'", "did you mean 'GetJob'"]),
        (["backend"], (CONFIGS / "two-groups.toml").read_text(), {}, [], ["gc", "two groups", "backend", "cleanup"]),
    ],
)
def test_bad_configuration_exits_2_with_one_line_and_starts_nothing(
    tmp_path: Path, command: list[str], config: str, env: dict[str, str], flags: list[str], needles: list[str]
) -> None:
    data = tmp_path / "data"
    api_port = free_port()
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[node]\ndata_dir = "{data}"\nmetrics_listen = ""\n[members.api]\nlisten = "127.0.0.1:{api_port}"\n{config}')
    done = web_node([*command, "--config", str(cfg), *flags], tmp_path, env=env)
    line = one_error_line(done)
    for needle in needles:
        assert needle in line
    assert not data.exists(), "a configuration error must stop before the data dir is created"
    assert not listening(api_port)


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    line = one_error_line(web_node(["web", "--in-process"], tmp_path, env={"WEB_NODE_CONFIG": str(missing)}))
    assert str(missing) in line and "does not exist" in line


def test_nothing_to_run_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = web_node(["backend", "--in-process", "--data-dir", str(data),
                     "--disable", "scheduler", "--disable", "build-tracker", "--disable", "gc"],
                    tmp_path, env={"WEB_NODE_DISABLE_SYSLOG_DRAINER": "1"})
    line = one_error_line(done)
    assert "nothing to run" in line
    assert not data.exists()


def test_unknown_command_exits_2_with_the_valid_ones(tmp_path: Path) -> None:
    done = web_node(["shceduler"], tmp_path)
    assert done.returncode == 2
    assert "scheduler" in done.stderr
