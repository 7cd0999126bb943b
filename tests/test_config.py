"""Configuration: TOML file, then environment, then flags, later wins; every
mistake is one line naming the key, the value and what would be valid."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from web_node.config import Config, Overrides, load_config, parse_config
from web_node.errors import ConfigError
from web_node.members import Registry, default_registry

CONFIGS = Path(__file__).parent / "fixtures" / "configs"
BACKEND = ["scheduler", "build-tracker", "gc", "syslog-drainer"]
MEMBERS = ["api", "ui", "scheduler", "build-tracker", "gc", "syslog-drainer", "gateway"]


@pytest.fixture
def registry() -> Registry:
    return default_registry()


def from_text(registry: Registry, text: str) -> Config:
    return parse_config(tomllib.loads(text), registry)


def config_error(registry: Registry, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_text(registry, text)
    return info.value


def assert_one_line(e: ConfigError) -> str:
    message = str(e)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- defaults


def test_defaults_every_member_enabled_in_a_group_of_its_own(registry: Registry) -> None:
    config = load_config(registry, env={})
    assert list(config.members) == MEMBERS
    assert all(s.enabled for s in config.members.values())
    assert [(g.name, g.members) for g in config.layout()] == [(m, (m,)) for m in MEMBERS]
    assert config.members["api"].listen == "127.0.0.1:8080"
    assert config.members["ui"].listen == "127.0.0.1:8081"
    assert config.members["gateway"].listen == "127.0.0.1:2222"
    assert config.members["gc"].interval_s == 30.0
    assert config.members["scheduler"].interval_s == 10.0
    assert config.node.shutdown_grace_s == 10.0
    assert config.node.metrics_listen == "127.0.0.1:9391"
    assert config.disabled_endpoints() == {}
    assert config.sources == ()


def test_backend_group_from_the_example_file(registry: Registry) -> None:
    config = load_config(registry, str(CONFIGS / "backend.toml"), env={})
    backend = config.groups["backend"]
    assert backend.members == tuple(BACKEND)
    assert backend.memory_max_bytes == 256 * 1024**2
    assert backend.restart == "on-failure"
    assert [g.name for g in config.layout()] == ["api", "ui", "backend", "gateway"]
    for member in BACKEND:
        assert config.group_of(member) == "backend"
    assert config.sources == (str(CONFIGS / "backend.toml"),)


def test_every_documented_key_parses(registry: Registry) -> None:
    config = from_text(registry, """
        [node]
        data_dir = "/tmp/wn-data"
        database = "postgresql://ci:pw@db.example.com/ci"
        cgroup_root = "web-node"
        metrics_listen = "127.0.0.1:9391"
        shutdown_grace = "10s"

        [members.api]
        listen = "127.0.0.1:8080"
        token = "s3cret-s3cret-s3cret"
        disabled_endpoints = ["ListAllJobs"]

        [members.gateway]
        listen = "127.0.0.1:2222"
        worker_token = "w0rker-w0rker-w0rker"

        [members.gc]
        enabled = false
        interval = "30s"

        [groups.backend]
        members = ["scheduler", "build-tracker", "gc", "syslog-drainer"]
        memory_max = "256M"
        memory_high = "200M"
        cpu_max = "0.5"
        cpu_weight = 100
        pids_max = 256
        restart = "on-failure"
        restart_limit = 5
        restart_window = "60s"
    """)
    assert config.node.data_dir == "/tmp/wn-data"
    assert config.members["api"].disabled_endpoints == {"ListAllJobs"}
    assert not config.members["gc"].enabled
    g = config.groups["backend"]
    assert (g.memory_max_bytes, g.memory_high_bytes) == (256 * 1024**2, 200 * 1024**2)
    assert (g.cpu_max_cores, g.cpu_weight, g.pids_max) == (0.5, 100, 256)
    assert (g.restart, g.restart_limit, g.restart_window_s) == ("on-failure", 5, 60.0)
    # gc is disabled: its group still exists, but runs without it.
    assert [grp.members for grp in config.layout() if grp.name == "backend"] == [("scheduler", "build-tracker", "syslog-drainer")]


def test_the_merged_mapping_a_child_receives_parses_to_the_same_config(registry: Registry) -> None:
    """The node hands ``raw`` to each group child as JSON; the child must see exactly what the node saw."""
    config = load_config(
        registry, str(CONFIGS / "gc-enabled.toml"),
        env={"WEB_NODE_DISABLE_SCHEDULER": "1", "WEB_NODE_DISABLE_ENDPOINTS": "GetJob"},
        overrides=Overrides(disable=("ui",), memory_max=("gc=64M",), data_dir="/tmp/wn-x"),
    )
    child = parse_config(json.loads(json.dumps(config.raw)), registry)
    assert child.node == config.node
    assert child.members == config.members
    assert child.groups == config.groups
    assert child.groups["gc"].memory_max_bytes == 64 * 1024**2


# ---------------------------------------------------------------- file, then env, then flags


def test_env_disables_a_member_the_file_enables(registry: Registry) -> None:
    gc_file = str(CONFIGS / "gc-enabled.toml")
    assert load_config(registry, gc_file, env={}).members["gc"].enabled
    config = load_config(registry, gc_file, env={"WEB_NODE_DISABLE_GC": "1"})
    assert not config.members["gc"].enabled
    assert config.members["gc"].interval_s == 90.0  # the rest of the file still applies
    assert "gc" not in config.enabled_members()


def test_env_enables_a_member_the_file_disables(registry: Registry, tmp_path: Path) -> None:
    cfg = tmp_path / "off.toml"
    cfg.write_text("[members.gc]\nenabled = false\n")
    assert not load_config(registry, str(cfg), env={}).members["gc"].enabled
    assert load_config(registry, str(cfg), env={"WEB_NODE_DISABLE_GC": "0"}).members["gc"].enabled


def test_flag_wins_over_env(registry: Registry) -> None:
    config = load_config(registry, str(CONFIGS / "gc-enabled.toml"), env={"WEB_NODE_DISABLE_GC": "0"},
                         overrides=Overrides(disable=("gc",)))
    assert not config.members["gc"].enabled


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "TRUE"])
def test_env_switch_spellings_that_disable(registry: Registry, value: str) -> None:
    assert not load_config(registry, env={"WEB_NODE_DISABLE_API": value}).members["api"].enabled


@pytest.mark.parametrize("value", ["0", "false", "no", "off", ""])
def test_env_switch_spellings_that_keep_enabled(registry: Registry, value: str) -> None:
    assert load_config(registry, env={"WEB_NODE_DISABLE_API": value}).members["api"].enabled


def test_env_switch_of_a_dashed_member_uses_underscores(registry: Registry) -> None:
    config = load_config(registry, env={"WEB_NODE_DISABLE_BUILD_TRACKER": "1", "WEB_NODE_DISABLE_SYSLOG_DRAINER": "1"})
    assert config.enabled_members() == ["api", "ui", "scheduler", "gc", "gateway"]


def test_env_disables_endpoints_by_name(registry: Registry) -> None:
    config = load_config(registry, env={"WEB_NODE_DISABLE_ENDPOINTS": "ListAllJobs,GetJob"})
    assert config.members["api"].disabled_endpoints == {"ListAllJobs", "GetJob"}
    assert config.disabled_endpoints() == {"api": ["GetJob", "ListAllJobs"]}


def test_endpoint_switches_add_up_across_file_env_and_flags(registry: Registry) -> None:
    config = load_config(
        registry, str(CONFIGS / "gc-enabled.toml"),  # the file disables ListBuilds
        env={"WEB_NODE_DISABLE_ENDPOINTS": " ListAllJobs , RegisterWorker "},
        overrides=Overrides(disable_endpoints=("GetJob", "ListAllJobs")),
    )
    assert config.disabled_endpoints() == {"api": ["GetJob", "ListAllJobs", "ListBuilds"], "gateway": ["RegisterWorker"]}


def test_web_node_config_names_the_file(registry: Registry) -> None:
    path = str(CONFIGS / "backend.toml")
    config = load_config(registry, env={"WEB_NODE_CONFIG": path})
    assert "backend" in config.groups
    assert config.sources == (path,)


def test_config_flag_wins_over_web_node_config(registry: Registry) -> None:
    config = load_config(registry, str(CONFIGS / "gc-enabled.toml"), env={"WEB_NODE_CONFIG": str(CONFIGS / "backend.toml")})
    assert "backend" not in config.groups
    assert config.members["gc"].interval_s == 90.0


def test_memory_max_flag_overrides_the_file(registry: Registry) -> None:
    config = load_config(registry, str(CONFIGS / "backend.toml"), env={}, overrides=Overrides(memory_max=("backend=1G",)))
    assert config.groups["backend"].memory_max_bytes == 1024**3
    assert config.groups["backend"].members == tuple(BACKEND)


def test_sources_record_where_the_config_came_from(registry: Registry) -> None:
    config = load_config(registry, str(CONFIGS / "backend.toml"), env={"WEB_NODE_DISABLE_GC": "1"},
                         overrides=Overrides(disable_endpoints=("GetJob",)))
    assert config.sources == (str(CONFIGS / "backend.toml"), "env WEB_NODE_DISABLE_GC", "flags")


# ---------------------------------------------------------------- loud errors


@pytest.mark.parametrize(
    ("text", "key", "suggestion"),
    [
        ("nodes = {}", "nodes", "node"),
        ("[group.backend]\nmembers = ['gc']", "group", "groups"),
        ("[node]\ndata_dri = '/x'", "node.data_dri", "data_dir"),
        ("[node]\nshutdown_grase = '5s'", "node.shutdown_grase", "shutdown_grace"),
        ("[members.gc]\nintervall = '5s'", "members.gc.intervall", "interval"),
        ("[members.api]\nlisen = '127.0.0.1:1'", "members.api.lisen", "listen"),
        ("[members.gc]\nbuild_retension = '1d'", "members.gc.build_retension", "build_retention"),
        ("[groups.backend]\nmembers = ['gc']\nmemry_max = '1G'", "groups.backend.memry_max", "memory_max"),
        ("[groups.backend]\nmembers = ['gc']\nrestart_limt = 3", "groups.backend.restart_limt", "restart_limit"),
    ],
)
def test_unknown_keys_are_named_with_a_suggestion(registry: Registry, text: str, key: str, suggestion: str) -> None:
    e = config_error(registry, text)
    message = assert_one_line(e)
    assert key in message
    assert f"did you mean '{suggestion}'" in message
    assert e.key == key


def test_unknown_key_lists_the_valid_keys(registry: Registry) -> None:
    message = assert_one_line(config_error(registry, "[members.gc]\nlisten = '127.0.0.1:9'"))
    # listen is a key of http members, not of a periodic one.
    assert "members.gc.listen" in message
    for valid in ("enabled", "interval", "build_retention", "worker_retention"):
        assert valid in message


@pytest.mark.parametrize(
    ("text", "name", "suggestion"),
    [
        ("[members.gcc]\nenabled = false", "gcc", "gc"),
        ("[members.build_tracker]\nenabled = false", "build_tracker", "build-tracker"),
        ("[groups.backend]\nmembers = ['schedular', 'gc']", "schedular", "scheduler"),
        ("[members.api]\ndisabled_endpoints = ['ListAllJob']", "ListAllJob", "ListAllJobs"),
    ],
)
def test_unknown_member_and_endpoint_names(registry: Registry, text: str, name: str, suggestion: str) -> None:
    e = config_error(registry, text)
    message = assert_one_line(e)
    assert repr(name) in message
    assert f"did you mean '{suggestion}'" in message
    assert e.valid is not None and suggestion in e.valid


def test_a_member_in_two_groups(registry: Registry) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(registry, str(CONFIGS / "two-groups.toml"), env={})
    message = assert_one_line(info.value)
    assert "gc" in message
    assert "backend" in message and "cleanup" in message


def test_an_endpoint_of_another_member_names_its_owner(registry: Registry) -> None:
    # RegisterWorker is a gateway endpoint; pointing the operator at [members.gateway]
    # helps more than a "did you mean" to some api endpoint that merely looks alike.
    message = assert_one_line(config_error(registry, "[members.api]\ndisabled_endpoints = ['RegisterWorker']"))
    assert "'RegisterWorker'" in message
    assert "gateway" in message


@pytest.mark.parametrize(
    ("text", "key", "value", "valid"),
    [
        ("[node]\nshutdown_grace = '10'", "node.shutdown_grace", "'10'", "1m30s"),
        ("[node]\nmetrics_listen = '9391'", "node.metrics_listen", "'9391'", "HOST:PORT"),
        ("[node]\nlog_format = 'jsn'", "node.log_format", "'jsn'", "json"),
        ("[node]\ncgroup_root = '../escape'", "node.cgroup_root", "'../escape'", "web-node"),
        ("[members.api]\nlisten = 'localhost'", "members.api.listen", "'localhost'", "HOST:PORT"),
        ("[members.api]\nlisten = '127.0.0.1:99999'", "members.api.listen", "'127.0.0.1:99999'", "HOST:PORT"),
        ("[members.gc]\nenabled = 'no'", "members.gc.enabled", "'no'", "true or false"),
        ("[members.gc]\ninterval = '30'", "members.gc.interval", "'30'", "10s"),
        ("[members.gc]\ninterval = '0s'", "members.gc.interval", "'0s'", "1m30s"),
        ("[members.gc]\nbuild_retention = 'forever'", "members.gc.build_retention", "'forever'", "1m30s"),
        ("[groups.gc]\nmemory_max = 'lots'", "groups.gc.memory_max", "'lots'", "512MiB"),
        ("[groups.gc]\nmemory_max = 'max'", "groups.gc.memory_max", "'max'", "leave the key out"),
        ("[groups.gc]\nrestart = 'sometimes'", "groups.gc.restart", "'sometimes'", "always, on-failure, never"),
        ("[groups.gc]\nrestart = 'alway'", "groups.gc.restart", "'alway'", "did you mean 'always'"),
        ("[groups.gc]\nrestart_window = '1 minute'", "groups.gc.restart_window", "'1 minute'", "1m30s"),
        ("[groups.gc]\ncpu_max = 'half'", "groups.gc.cpu_max", "'half'", "cores"),
        ("[groups.gc]\npids_max = 0", "groups.gc.pids_max", "0", "1 to"),
        ("[groups.gc]\ncpu_weight = 'high'", "groups.gc.cpu_weight", "'high'", "whole number"),
        ("[groups.gc]\nmemory_max = '100M'\nmemory_high = '200M'", "groups.gc.memory_high", "200M", "at most memory_max"),
        ("[groups.backend]\nmembers = 'gc'", "groups.backend.members", "'gc'", "list of member names"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_valid(
    registry: Registry, text: str, key: str, value: str, valid: str
) -> None:
    e = config_error(registry, text)
    message = assert_one_line(e)
    assert key in message
    assert value in message
    assert valid in message
    assert e.key == key


def test_a_group_name_must_work_as_a_cgroup_directory(registry: Registry) -> None:
    e = config_error(registry, "[groups.'a b']\nmembers = ['gc']")
    message = assert_one_line(e)
    assert "group name 'a b'" in message and "letters, digits" in message
    assert e.key == "groups.a b"


def test_a_group_without_members_must_be_named_after_a_member(registry: Registry) -> None:
    message = assert_one_line(config_error(registry, "[groups.backend]\nmemory_max = '1G'"))
    assert "groups.backend" in message and "members" in message
    # ... while [groups.gc] alone sets limits for gc's own group.
    assert from_text(registry, "[groups.gc]\nmemory_max = '1G'").groups["gc"].members == ("gc",)


def test_env_switch_naming_no_member(registry: Registry) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(registry, env={"WEB_NODE_DISABLE_GCC": "1"})
    message = assert_one_line(info.value)
    assert "WEB_NODE_DISABLE_GCC" in message
    assert "did you mean 'WEB_NODE_DISABLE_GC'" in message


def test_env_switch_with_a_bad_value(registry: Registry) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(registry, env={"WEB_NODE_DISABLE_GC": "maybe"})
    message = assert_one_line(info.value)
    assert "WEB_NODE_DISABLE_GC" in message and "'maybe'" in message and "1 or 0" in message


def test_env_endpoint_switch_with_an_unknown_name(registry: Registry) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(registry, env={"WEB_NODE_DISABLE_ENDPOINTS": "ListAllJobs,GetJobz"})
    message = assert_one_line(info.value)
    assert "WEB_NODE_DISABLE_ENDPOINTS" in message and "'GetJobz'" in message and "did you mean 'GetJob'" in message


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (Overrides(disable=("gcc",)), "--disable: 'gcc' is not a member (did you mean 'gc'?)"),
        (Overrides(disable_endpoints=("ListAllJob",)), "--disable-endpoint: 'ListAllJob'"),
        (Overrides(memory_max=("backend",)), "GROUP=SIZE"),
        (Overrides(memory_max=("gc=lots",)), "'lots'"),
    ],
)
def test_bad_flags(registry: Registry, overrides: Overrides, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(registry, env={}, overrides=overrides)
    assert needle in assert_one_line(info.value)


def test_missing_config_file(registry: Registry, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load_config(registry, env={"WEB_NODE_CONFIG": missing})
    message = assert_one_line(info.value)
    assert missing in message and "does not exist" in message


def test_invalid_toml(registry: Registry, tmp_path: Path) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[node\ndata_dir = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(registry, str(cfg), env={})
    message = assert_one_line(info.value)
    assert str(cfg) in message and "TOML" in message
