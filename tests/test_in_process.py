"""``web-node ... --in-process``: members as tasks of one real process, stopped
by SIGTERM or SIGINT within the grace, failures judged by the group's restart
policy, every log line naming its member."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from node_helpers import free_port, listening

MEMBERS = ["api", "ui", "scheduler", "build-tracker", "gc", "syslog-drainer", "gateway"]
# "2026-11-29T04:48:15.858 INFO    [api] serving on ..."
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\[([a-z-]+)\] \S")
GRACE_S = 2.0


@dataclass
class Ports:
    api: int
    ui: int
    gateway: int

    def all(self) -> list[int]:
        return [self.api, self.ui, self.gateway]


@pytest.fixture
def ports() -> Ports:
    return Ports(free_port(), free_port(), free_port())


def config_text(data_dir: Path, ports: Ports, extra: str = "") -> str:
    """Every http member and the metrics page on free ports (or off), data in tmp."""
    return (
        f'[node]\ndata_dir = "{data_dir}"\nmetrics_listen = ""\nshutdown_grace = "{GRACE_S:g}s"\n'
        f'[members.api]\nlisten = "127.0.0.1:{ports.api}"\n'
        f'[members.ui]\nlisten = "127.0.0.1:{ports.ui}"\n'
        f'[members.gateway]\nlisten = "127.0.0.1:{ports.gateway}"\n'
        f"{extra}"
    )


@contextlib.contextmanager
def port_taken(port: int) -> Iterator[socket.socket]:
    """A listening socket of the test's own on ``port``, so that a member cannot bind it."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    try:
        yield s
    finally:
        s.close()


def info(port: int) -> dict[str, Any]:
    r = httpx.get(f"http://127.0.0.1:{port}/api/v1/info", timeout=5)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def assert_gone(node: Any, ports: list[int]) -> None:
    """The process and everything in its session have ended, and nothing listens any more."""
    assert node.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(node.pid, 0)  # started with start_new_session: the pgid is its pid
    for port in ports:
        assert not listening(port), f"port {port} still listening after exit"


def text_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.strip()]


def last_line(log: str) -> str:
    return text_lines(log)[-1]


# ---------------------------------------------------------------- running and stopping


def test_api_in_process_answers_info(start_node: Any, data_dir: Path, ports: Ports) -> None:
    node = start_node(["api", "--in-process"], config_text(data_dir, ports))
    node.wait_http(f"http://127.0.0.1:{ports.api}/api/v1/info")
    answer = info(ports.api)
    assert answer["member"] == "api"
    assert answer["pid"] == node.pid, "--in-process serves from the process itself, no children"
    # Only the api role runs.
    assert not listening(ports.ui) and not listening(ports.gateway)
    assert node.terminate() == 0, node.log()
    assert_gone(node, ports.all())


def test_web_in_process_runs_every_member_and_stops_within_the_grace(start_node: Any, data_dir: Path, ports: Ports) -> None:
    node = start_node(["web", "--in-process"], config_text(data_dir, ports))
    for port in ports.all():
        node.wait_http(f"http://127.0.0.1:{port}/")
    log = node.wait_log("ready: ")
    ready = next(line for line in log.splitlines() if "ready: " in line)
    assert ready.split("ready: ", 1)[1].split(", ") == MEMBERS
    assert info(ports.api)["pid"] == node.pid

    # An idle keep-alive connection must not hold the stop beyond the grace.
    with httpx.Client() as client:
        assert client.get(f"http://127.0.0.1:{ports.api}/api/v1/info").status_code == 200
        began = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        status = node.proc.wait(GRACE_S + 10)
        took = time.monotonic() - began
    assert status == 0, node.log()
    assert took < GRACE_S + 1.5, f"took {took:.1f} s to stop with a grace of {GRACE_S} s"
    assert_gone(node, ports.all())
    log = node.log()
    assert "received SIGTERM" in log
    assert "Traceback" not in log

    # Every line names its member (or "node", the runner itself).
    for line in text_lines(log):
        match = TEXT_LINE.match(line)
        assert match, f"log line without a member: {line!r}"
        assert match.group(2) in [*MEMBERS, "node"], line
    for member in ("api", "ui", "gateway"):
        assert f"[{member}] serving on http://127.0.0.1:" in log


def test_sigint_stops_like_sigterm(start_node: Any, data_dir: Path, ports: Ports) -> None:
    node = start_node(["api", "--in-process"], config_text(data_dir, ports))
    node.wait_http(f"http://127.0.0.1:{ports.api}/api/v1/info")
    node.wait_log("ready: api")
    node.proc.send_signal(signal.SIGINT)
    assert node.proc.wait(GRACE_S + 10) == 0, node.log()
    assert_gone(node, [ports.api])
    log = node.log()
    assert "received SIGINT" in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log


def test_json_log_lines_name_their_member(start_node: Any, data_dir: Path, ports: Ports) -> None:
    node = start_node(["backend", "--in-process", "--log-format", "json"], config_text(data_dir, ports))
    node.wait_log('"member": "syslog-drainer"')
    assert node.terminate() == 0, node.log()
    docs = []
    for line in text_lines(node.log()):
        doc = json.loads(line)  # every line is one JSON object, nothing else on stderr
        assert isinstance(doc, dict), line
        docs.append(doc)
    assert all(doc["member"] in [*MEMBERS, "node"] for doc in docs), docs
    assert all({"time", "level", "message"} <= doc.keys() for doc in docs), docs
    assert any(doc["member"] == "node" and doc["message"].startswith("ready: ") for doc in docs)
    assert any(doc["member"] == "node" and "SIGTERM" in doc["message"] for doc in docs)


# ---------------------------------------------------------------- failures and the restart policy


def test_member_that_cannot_listen_with_restart_never_exits_1(start_node: Any, data_dir: Path, ports: Ports) -> None:
    with port_taken(ports.api):
        node = start_node(["api", "--in-process"], config_text(data_dir, ports, '[groups.api]\nrestart = "never"\n'))
        status = node.proc.wait(20)
    log = node.log()
    assert status == 1, log
    assert_gone(node, [])
    # The failure is logged by the member...
    assert re.search(rf"ERROR +\[api\] member api failed .*127\.0\.0\.1:{ports.api}", log), log
    # ... and the process ends with one line that says which member, which address, and why it stops.
    reason = last_line(log)
    assert "member api" in reason
    assert f"127.0.0.1:{ports.api}" in reason
    assert "never" in reason
    assert "restarting member" not in log


def test_an_expected_member_failure_is_logged_without_a_traceback(start_node: Any, data_dir: Path, ports: Ports) -> None:
    # "cannot listen on ...: Address already in use; set [members.api] listen to a free HOST:PORT" says
    # everything; a traceback through the runner's internals only buries it.
    with port_taken(ports.api):
        node = start_node(["api", "--in-process"], config_text(data_dir, ports, '[groups.api]\nrestart = "never"\n'))
        status = node.proc.wait(20)
    assert status == 1
    assert "Traceback" not in node.log(), node.log()


def test_member_that_fails_is_restarted_in_process(start_node: Any, data_dir: Path, ports: Ports) -> None:
    extra = '[groups.api]\nrestart = "on-failure"\nrestart_limit = 50\n'
    with port_taken(ports.api):
        node = start_node(["api", "--in-process"], config_text(data_dir, ports, extra))
        log = node.wait_log("restarting member api")
    assert re.search(r"ERROR +\[api\] member api failed", log), log
    assert re.search(r"WARNING +\[api\] restarting member api in \d+\.\d s", log), log
    # The port is free again: the next attempt serves, in the same process.
    node.wait_http(f"http://127.0.0.1:{ports.api}/api/v1/info", timeout=20)
    assert info(ports.api)["pid"] == node.pid
    node.wait_log("serving on")
    assert node.terminate() == 0, node.log()
    assert_gone(node, [ports.api])


def test_crash_loop_gives_up_after_the_restart_limit(start_node: Any, data_dir: Path, ports: Ports) -> None:
    extra = '[groups.api]\nrestart = "always"\nrestart_limit = 2\nrestart_window = "1m"\n'
    with port_taken(ports.api):
        node = start_node(["api", "--in-process"], config_text(data_dir, ports, extra))
        status = node.proc.wait(20)
    log = node.log()
    assert status == 1, log
    assert log.count("restarting member api") == 2, log
    reason = last_line(log)
    assert "member api" in reason and "giving up" in reason and "restart_limit = 2" in reason


def test_a_failing_member_does_not_stop_its_siblings(start_node: Any, data_dir: Path, ports: Ports) -> None:
    """gateway cannot listen and is restarted; api keeps answering meanwhile."""
    extra = '[groups.gateway]\nrestart = "always"\nrestart_limit = 50\n'
    with port_taken(ports.gateway):
        node = start_node(["web", "--in-process", "--disable", "ui"], config_text(data_dir, ports, extra))
        node.wait_log("restarting member gateway")
        assert info(ports.api)["member"] == "api"
        assert node.proc.poll() is None
    assert node.terminate() == 0, node.log()
    assert_gone(node, ports.all())
