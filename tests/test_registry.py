"""The registry is the one list: registering a member is the only step needed
to give it a subcommand, a config section, an env switch and a row in
``web-node members``, and to run it.

The ``echo-test`` member below lives only in this file. The in-process run
imports this module in a fresh interpreter, so the member is defined once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from web_node.cli import build_parser, main
from web_node.config import load_config
from web_node.errors import ConfigError
from web_node.members import Endpoint, Member, MemberContext, Option, Registry, default_registry

BUILT_IN = ["api", "ui", "scheduler", "build-tracker", "gc", "syslog-drainer", "gateway"]


def _parse_message(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} must be a non-empty string")
    return value


async def _echo_tick(ctx: MemberContext) -> None:
    ctx.log.info("echo: %s", ctx.option("message"))


ECHO = Member(
    name="echo-test",
    role="backend",
    kind="periodic",
    description="logs its message on every run",
    interval_s=5.0,
    options=(Option("message", _parse_message, "hello", "a non-empty string to log on every run"),),
    tick=_echo_tick,
)


def echo_registry() -> Registry:
    """The built-in members plus echo-test, in a copy: the default registry stays as it is."""
    registry = default_registry().copy()
    registry.register(ECHO)
    return registry


async def _no_app(ctx: MemberContext) -> Any:
    raise AssertionError("never served in these tests")


def http_member(name: str, *endpoints: str) -> Member:
    return Member(
        name=name, role="api", kind="http", description="test", listen="127.0.0.1:0",
        endpoints=tuple(Endpoint(e, "GET", f"/{e.lower()}") for e in endpoints), make_app=_no_app,
    )


# ---------------------------------------------------------------- the registry itself


def test_default_registry_holds_the_seven_built_in_members() -> None:
    registry = default_registry()
    assert registry.names() == BUILT_IN
    assert len(registry) == 7
    assert [(m.name, m.role, m.kind) for m in registry] == [
        ("api", "api", "http"), ("ui", "ui", "http"), ("scheduler", "backend", "periodic"),
        ("build-tracker", "backend", "periodic"), ("gc", "backend", "periodic"),
        ("syslog-drainer", "backend", "periodic"), ("gateway", "gateway", "http"),
    ]
    assert registry.endpoint_owner("ListAllJobs").name == "api"
    assert registry.endpoint_owner("RegisterWorker").name == "gateway"


def test_registering_in_a_copy_leaves_the_default_registry_alone() -> None:
    registry = echo_registry()
    assert registry.names() == [*BUILT_IN, "echo-test"]
    assert "echo-test" not in default_registry()
    assert default_registry() is not default_registry()


def test_duplicate_member_names_are_refused() -> None:
    registry = echo_registry()
    with pytest.raises(ValueError, match="'echo-test' is registered twice"):
        registry.register(ECHO)
    with pytest.raises(ValueError, match="'gc' is registered twice"):
        registry.register(default_registry().get("gc"))
    assert registry.names() == [*BUILT_IN, "echo-test"]


def test_duplicate_endpoint_names_are_refused() -> None:
    registry = default_registry().copy()
    with pytest.raises(ValueError, match="endpoint GetInfo of member twin is already declared by member api"):
        registry.register(http_member("twin", "Fresh", "GetInfo"))
    # Nothing of the refused member stays behind, not even its endpoints that were fine.
    assert "twin" not in registry
    assert "Fresh" not in registry.endpoint_names()
    registry.register(http_member("twin", "Fresh"))
    assert registry.endpoint_owner("Fresh").name == "twin"


def test_a_member_may_not_repeat_its_own_endpoint_names() -> None:
    with pytest.raises(ValueError, match="endpoint names repeat"):
        http_member("twin", "Same", "Same")


@pytest.mark.parametrize("name", ["plan", "members", "web", "status", "backend"])
def test_member_names_may_not_shadow_commands(name: str) -> None:
    registry = default_registry().copy()
    with pytest.raises(ValueError, match="collides with a command"):
        registry.register(Member(name=name, role="api", kind="periodic", description="x", interval_s=1.0, tick=_echo_tick))


def test_a_member_whose_env_switch_would_be_the_endpoint_switch_is_refused() -> None:
    # WEB_NODE_DISABLE_ENDPOINTS already means "these endpoints"; it cannot also switch a member off.
    registry = default_registry().copy()
    with pytest.raises(ValueError, match="WEB_NODE_DISABLE_ENDPOINTS"):
        registry.register(Member(name="endpoints", role="backend", kind="periodic", description="x",
                                 interval_s=1.0, tick=_echo_tick))


def test_main_uses_the_registry_it_is_given_even_an_empty_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["members", "--json"], registry=Registry()) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"name": "Echo_Test"}, "lower-case"),
        ({"role": "frontend"}, "role 'frontend'"),
        ({"tick": None}, "periodic member needs tick"),
        ({"interval_s": 0.0}, "positive interval_s"),
        ({"options": (Option("enabled", bool, True, "x"),)}, "shadow the common keys"),
    ],
)
def test_member_declarations_are_checked(fields: dict[str, Any], needle: str) -> None:
    declared: dict[str, Any] = {"name": "echo-test", "role": "backend", "kind": "periodic", "description": "x",
                                "interval_s": 1.0, "tick": _echo_tick}
    with pytest.raises(ValueError, match=needle):
        Member(**{**declared, **fields})


# ---------------------------------------------------------------- what registration gives


def test_new_member_gets_a_subcommand() -> None:
    registry = echo_registry()
    parser = build_parser(registry)
    args = parser.parse_args(["echo-test", "--in-process", "--config", "x.toml"])
    assert args.selection == ["echo-test"]
    assert args.in_process
    # Its role runs it too, and so does web.
    assert "echo-test" in parser.parse_args(["backend"]).selection
    assert "echo-test" in parser.parse_args(["web"]).selection
    assert "echo-test" in parser.format_help()
    # The default registry has no such command.
    with pytest.raises(SystemExit):
        build_parser(default_registry()).parse_args(["echo-test"])


def test_new_member_gets_a_config_section_with_its_option_validated(tmp_path: Path) -> None:
    registry = echo_registry()
    cfg = tmp_path / "echo.toml"
    cfg.write_text('[members.echo-test]\nmessage = "ping"\ninterval = "500ms"\n')
    config = load_config(registry, str(cfg), env={})
    assert config.members["echo-test"].options["message"] == "ping"
    assert config.members["echo-test"].interval_s == 0.5
    assert load_config(registry, env={}).members["echo-test"].options["message"] == "hello"  # the default

    cfg.write_text('[members.echo-test]\nmessage = ""\n')
    with pytest.raises(ConfigError) as info:
        load_config(registry, str(cfg), env={})
    assert "members.echo-test.message = ''" in str(info.value)
    assert info.value.valid == "a non-empty string to log on every run"

    cfg.write_text('[members.echo-test]\nmesage = "ping"\n')
    with pytest.raises(ConfigError, match=r"unknown key members.echo-test.mesage \(did you mean 'message'\?\)"):
        load_config(registry, str(cfg), env={})

    cfg.write_text('[members.echo-tset]\nmessage = "ping"\n')
    with pytest.raises(ConfigError, match=r"did you mean 'echo-test'"):
        load_config(registry, str(cfg), env={})
    # Without registration the section is an unknown member.
    cfg.write_text('[members.echo-test]\nmessage = "ping"\n')
    with pytest.raises(ConfigError, match="'echo-test' is not a member"):
        load_config(default_registry(), str(cfg), env={})


def test_new_member_gets_an_env_switch() -> None:
    registry = echo_registry()
    assert ECHO.env_disable_var == "WEB_NODE_DISABLE_ECHO_TEST"
    config = load_config(registry, env={"WEB_NODE_DISABLE_ECHO_TEST": "1"})
    assert not config.members["echo-test"].enabled
    assert config.enabled_members() == BUILT_IN
    with pytest.raises(ConfigError, match="WEB_NODE_DISABLE_ECHO_TEST names no member"):
        load_config(default_registry(), env={"WEB_NODE_DISABLE_ECHO_TEST": "1"})


def test_new_member_gets_a_row_in_members(capsys: pytest.CaptureFixture[str]) -> None:
    registry = echo_registry()
    assert main(["members"], registry=registry) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["echo-test", "backend", "periodic", "5s", "-"] in rows
    assert main(["members", "--json"], registry=registry) == 0
    by_name = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert by_name["echo-test"]["role"] == "backend"
    assert by_name["echo-test"]["kind"] == "periodic"
    assert by_name["echo-test"]["description"] == "logs its message on every run"


# ---------------------------------------------------------------- and it runs


# A fresh interpreter running ``web_node.cli.main(ARGV, registry=echo_registry())``. This file is
# loaded by its path: putting tests/ on sys.path would let tests/cgroups shadow the cgroups package.
ECHO_MAIN = (
    "import importlib.util, sys\n"
    f"spec = importlib.util.spec_from_file_location('echo_registry_module', {__file__!r})\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
    "from web_node.cli import main\n"
    "sys.exit(main(sys.argv[1:], registry=module.echo_registry()))\n"
)


def run_echo_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", ECHO_MAIN, *args], cwd=cwd, capture_output=True, text=True, timeout=30)


def test_new_member_gets_a_group_in_the_plan(tmp_path: Path) -> None:
    done = run_echo_cli(["plan", "echo-test", "--json", "--data-dir", str(tmp_path / "data")], tmp_path)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert [(g["name"], g["members"]) for g in plan["groups"]] == [("echo-test", ["echo-test"])]
    assert not (tmp_path / "data").exists()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[list[str]], tuple[subprocess.Popen[bytes], Path]]]:
    """``python -c`` running ``web_node.cli.main(ARGS, registry=echo_registry())``; killed with its session at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"echo-{len(started)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-c", ECHO_MAIN, *args], cwd=tmp_path, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        started.append(proc)
        return proc, log

    try:
        yield start
    finally:
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_for(log: Path, proc: subprocess.Popen[bytes], predicate: Callable[[str], bool], timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if predicate(text):
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s (exit status {proc.poll()}):\n{log.read_text(errors='replace')}")


def test_new_member_runs_in_process(spawn: Callable[[list[str]], tuple[subprocess.Popen[bytes], Path]], tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = tmp_path / "echo.toml"
    cfg.write_text(
        f'[node]\ndata_dir = "{data}"\nmetrics_listen = ""\nshutdown_grace = "3s"\n'
        '[members.echo-test]\ninterval = "100ms"\nmessage = "ping from the test"\n'
    )
    proc, log = spawn(["echo-test", "--in-process", "--config", str(cfg)])
    # Two runs at least: it is a periodic member with the configured interval and option.
    text = wait_for(log, proc, lambda t: t.count("[echo-test] echo: ping from the test") >= 2)
    assert "ready: echo-test" in text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0, log.read_text()
    text = log.read_text()
    assert "received SIGTERM" in text
    assert "Traceback" not in text
    # Only echo-test ran: no other member logged anything.
    for member in BUILT_IN:
        assert f"[{member}]" not in text
