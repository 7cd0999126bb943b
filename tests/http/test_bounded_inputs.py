"""Bounded inputs against real members over real HTTP: ``web-node web --in-process`` as a real process.

Each limit is driven from a plain socket where the wire matters (a head that
promises a huge body and sends a few bytes, a head that never ends, a body
that never arrives), with httpx elsewhere: body limits (413) and auth (401)
answered and the connection closed without the body being read, the body
and header timeouts, the connection cap, the allowed hosts, the event-stream
cap, the per-build output cap, and TLS with a certificate made in the test.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from node_helpers import NodeProcess, free_port

API_TOKEN = "api-token-for-bounded-input-tests"
WORKER_TOKEN = "worker-token-for-bounded-input-tests"
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
API_CONNECTIONS = 6
API_STREAMS = 2
OUTPUT_CAP = 64 * 1024


@dataclass
class Node:
    proc: NodeProcess
    api_port: int
    gateway_port: int
    ui_port: int

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"


def node_config(data_dir: Path, api: int, gateway: int, ui: int, extra: str = "") -> str:
    return f"""
[node]
data_dir = "{data_dir}"
metrics_listen = ""
shutdown_grace = "1s"

[members.api]
listen = "127.0.0.1:{api}"
token = "{API_TOKEN}"
max_connections = {API_CONNECTIONS}
max_streams = {API_STREAMS}

[members.gateway]
listen = "127.0.0.1:{gateway}"
worker_token = "{WORKER_TOKEN}"
header_timeout = "{HEADER_TIMEOUT_S:g}s"
body_timeout = "{BODY_TIMEOUT_S:g}s"
max_build_output = {OUTPUT_CAP}

[members.ui]
listen = "127.0.0.1:{ui}"

[members.scheduler]
enabled = false
[members.build-tracker]
enabled = false
[members.gc]
enabled = false
[members.syslog-drainer]
enabled = false
{extra}"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    home = tmp_path_factory.mktemp("bounded")
    ports = free_port(), free_port(), free_port()
    cfg = home / "node.toml"
    cfg.write_text(node_config(home / "data", *ports))
    proc = NodeProcess(["web", "--in-process", "--config", str(cfg)], cwd=home)
    try:
        running = Node(proc, *ports)
        proc.wait_http(f"{running.api}/api/v1/info")
        proc.wait_http(f"{running.gateway}/gateway/v1/info")
        yield running
    finally:
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGTERM)
        proc.stop()


# ---------------------------------------------------------------- the wire


def exchange(port: int, data: bytes, *, wait_s: float = 10.0) -> tuple[bytes, bool, float]:
    """Send ``data`` on a new connection, read until the server closes it (or ``wait_s`` passes).

    Returns (what arrived, whether the server closed the connection, seconds until it did)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        s.settimeout(wait_s)
        began = time.monotonic()
        received = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return received, False, time.monotonic() - began
            if not chunk:
                return received, True, time.monotonic() - began
            received += chunk


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def error_of(answer: bytes) -> str:
    message: str = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    return message


def head(method: str, path: str, *headers: str) -> bytes:
    return ("\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]) + "\r\n\r\n").encode()


# ---------------------------------------------------------------- body limits and auth


def test_an_unauthenticated_big_post_is_answered_401_and_closed_without_reading_the_body(node: Node) -> None:
    # The head promises 15 MiB; only 100 bytes follow. Waiting for the body would never answer.
    answer, closed, took = exchange(node.gateway_port, head(
        "POST", "/gateway/v1/workers", "Content-Type: application/json", f"Content-Length: {15 * 1024 * 1024}") + b"x" * 100)
    assert status_of(answer) == 401
    assert b"connection: close" in answer.lower()
    assert closed and took < 5, f"the connection stayed open {took:.1f} s after the answer"
    assert "missing token" in error_of(answer)


def test_an_oversize_body_is_answered_413_and_closed_without_reading_it(node: Node) -> None:
    answer, closed, took = exchange(node.gateway_port, head(
        "POST", "/gateway/v1/workers", f"Authorization: Bearer {WORKER_TOKEN}", "Content-Length: 1000000000") + b"{}")
    assert status_of(answer) == 413
    assert closed and took < 5
    message = error_of(answer)
    assert "RegisterWorker" in message and "1 MiB" in message and "[members.gateway] body_limits" in message


def test_the_api_refuses_a_pipeline_over_its_documented_cap_before_reading_it(node: Node) -> None:
    answer, closed, _ = exchange(node.api_port, head(
        "PUT", "/api/v1/pipelines/big", f"Authorization: Bearer {API_TOKEN}", f"Content-Length: {2 * 1024 * 1024}") + b"jobs:")
    assert status_of(answer) == 413 and closed
    assert "SetPipeline" in error_of(answer)


def test_a_chunked_body_is_cut_once_it_passes_the_limit(node: Node) -> None:
    # No Content-Length: the gate counts. 17 chunks of 64 KiB pass the 1 MiB limit with the last one;
    # the body is never ended, so only the cut can produce an answer.
    chunks = b"".join(b"10000\r\n" + b"y" * 65536 + b"\r\n" for _ in range(17))
    answer, closed, took = exchange(node.gateway_port, head(
        "POST", "/gateway/v1/workers", f"Authorization: Bearer {WORKER_TOKEN}", "Transfer-Encoding: chunked") + chunks)
    assert status_of(answer) == 413 and closed and took < 5


def test_a_body_within_the_limit_is_still_served(node: Node) -> None:
    answer = httpx.post(f"{node.gateway}/gateway/v1/workers", headers={"Authorization": f"Bearer {WORKER_TOKEN}"},
                        content=json.dumps({"name": "w-within", "pad": "p" * 500_000}), timeout=10)
    assert answer.status_code == 201, answer.text


def test_a_worker_endpoint_without_a_worker_credential_is_refused_before_its_body(node: Node) -> None:
    # The shared token admits registration only; SendBuildEvents takes 8 MiB from a real worker.
    answer, closed, _ = exchange(node.gateway_port, head(
        "POST", "/gateway/v1/builds/1/events", f"Authorization: Bearer {WORKER_TOKEN}", f"Content-Length: {7 * 1024 * 1024}")
        + b"{")
    assert status_of(answer) == 401 and closed


# ---------------------------------------------------------------- timeouts and the connection cap


def test_a_body_that_does_not_arrive_is_cut_after_body_timeout(node: Node) -> None:
    answer, closed, took = exchange(node.gateway_port, head(
        "POST", "/gateway/v1/workers", f"Authorization: Bearer {WORKER_TOKEN}", "Content-Length: 100") + b'{"name":',
        wait_s=BODY_TIMEOUT_S + 10)
    assert status_of(answer) == 408 and closed
    assert BODY_TIMEOUT_S - 0.5 <= took <= BODY_TIMEOUT_S + 5
    assert "body_timeout" in error_of(answer)


def test_a_head_that_never_ends_is_cut_after_header_timeout(node: Node) -> None:
    answer, closed, took = exchange(node.gateway_port, b"GET /gateway/v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                                    wait_s=HEADER_TIMEOUT_S + 10)
    assert closed and answer == b""
    assert took <= HEADER_TIMEOUT_S + 5


def test_connections_beyond_the_cap_wait_until_one_ends(node: Node) -> None:
    idle = [socket.create_connection(("127.0.0.1", node.api_port)) for _ in range(API_CONNECTIONS)]
    try:
        for s in idle:  # each holds a connection: a head begun, not ended (header_timeout is 10 s on the api)
            s.sendall(b"GET /api/v1/info HTTP/1.1\r\n")
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", node.api_port)) as waiting:
            waiting.sendall(head("GET", "/api/v1/info", "Connection: close"))
            waiting.settimeout(1.0)
            with pytest.raises(TimeoutError):
                waiting.recv(100)  # accepted by the kernel, not served: it waits in the backlog
            idle.pop().close()
            waiting.settimeout(10.0)
            assert waiting.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        for s in idle:
            s.close()


# ---------------------------------------------------------------- allowed hosts


def test_a_request_for_another_host_is_refused(node: Node) -> None:
    for port in (node.api_port, node.gateway_port, node.ui_port):
        answer, closed, _ = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: attacker.example:80\r\n\r\n")
        assert status_of(answer) == 421 and closed
        assert "allowed_hosts" in error_of(answer)
    for host in ("localhost", f"127.0.0.1:{node.api_port}", f"[::1]:{node.api_port}"):
        assert httpx.get(f"{node.api}/api/v1/info", headers={"Host": host}).status_code == 200


def test_allowed_hosts_in_the_config_replace_the_defaults(tmp_path: Path) -> None:
    ports = free_port(), free_port(), free_port()
    cfg = tmp_path / "node.toml"
    cfg.write_text(node_config(tmp_path / "data", *ports).replace(
        "[members.ui]\n", '[members.ui]\nallowed_hosts = ["ci.example.com"]\n'))
    proc = NodeProcess(["ui", "--in-process", "--config", str(cfg)], cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{ports[2]}/healthz"
        assert proc.wait_http(url, headers={"Host": "ci.example.com"}).status_code == 200
        assert httpx.get(url).status_code == 421  # 127.0.0.1 is no longer in the list
    finally:
        proc.stop()


# ---------------------------------------------------------------- event streams and output


def _pipeline_and_build(node: Node, name: str) -> int:
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    config = {"jobs": [{"name": "unit", "steps": [{"run": "true"}]}]}
    assert httpx.put(f"{node.api}/api/v1/pipelines/{name}", json=config, headers=auth).status_code in (200, 201)
    created = httpx.post(f"{node.api}/api/v1/pipelines/{name}/jobs/unit/builds", headers=auth)
    assert created.status_code == 201, created.text
    build_id: int = created.json()["id"]
    return build_id


def test_live_streams_beyond_max_streams_answer_503(node: Node) -> None:
    build_id = _pipeline_and_build(node, "streams")  # pending forever: no worker claims it
    url = f"{node.api}/api/v1/builds/{build_id}/events"
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    with httpx.Client(timeout=10) as a, httpx.Client(timeout=10) as b, httpx.Client(timeout=10) as c:
        with a.stream("GET", url, headers=auth) as first, b.stream("GET", url, headers=auth) as second:
            assert first.status_code == second.status_code == 200
            refused = c.get(url, headers=auth)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "5"
            assert "max_streams" in refused.json()["error"]
        # Both streams closed by their clients: their slots are free again.
        deadline = time.monotonic() + 10
        while True:
            with c.stream("GET", url, headers=auth) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the slots of closed streams were not given back"
            time.sleep(0.2)


def test_a_builds_output_is_capped_with_one_truncated_event(node: Node) -> None:
    build_id = _pipeline_and_build(node, "loud")
    worker_auth = {"Authorization": f"Bearer {WORKER_TOKEN}"}
    registered = httpx.post(f"{node.gateway}/gateway/v1/workers", json={"name": "w-loud"}, headers=worker_auth)
    assert registered.status_code == 201, registered.text
    own = {"Authorization": f"Bearer {registered.json()['credential']}"}
    claimed: dict[str, Any] = {"build": None}
    deadline = time.monotonic() + 10
    while (claimed["build"] or {}).get("id") != build_id:  # other tests' builds may be pending before it
        claimed = httpx.post(f"{node.gateway}/gateway/v1/workers/w-loud/claim", json={}, headers=own).json()
        assert time.monotonic() < deadline, claimed
        if claimed["build"] and claimed["build"]["id"] != build_id:
            httpx.put(f"{node.gateway}/gateway/v1/builds/{claimed['build']['id']}/finish",
                      json={"worker": "w-loud", "status": "succeeded"}, headers=own)
    chunk = "z" * 16 * 1024
    accepted = []
    for seq in range(1, 11):  # 10 batches of 2 x 16 KiB: 320 KiB against a 64 KiB cap
        answer = httpx.post(f"{node.gateway}/gateway/v1/builds/{build_id}/events", headers=own, json={
            "worker": "w-loud", "seq": seq, "events": [{"type": "log", "payload": {"output": chunk, "step": 0}}] * 2})
        assert answer.status_code == 200, answer.text
        accepted.append(answer.json()["accepted"])
    finished = httpx.put(f"{node.gateway}/gateway/v1/builds/{build_id}/finish",
                         json={"worker": "w-loud", "status": "succeeded"}, headers=own)
    assert finished.status_code == 200, finished.text
    with httpx.stream("GET", f"{node.api}/api/v1/builds/{build_id}/events",
                      headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10) as stream:
        events = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
    kinds = [e["type"] for e in events]
    assert kinds.count("truncated") == 1, kinds
    output = sum(len(e["payload"]["output"]) for e in events if e["type"] == "log")
    assert output <= OUTPUT_CAP
    assert kinds.index("truncated") > max(i for i, k in enumerate(kinds) if k == "log")
    assert accepted[-1] == 0  # after the truncated event nothing more is stored
    assert "max_build_output" in next(e for e in events if e["type"] == "truncated")["payload"]["message"]


# ---------------------------------------------------------------- TLS


def test_tls_with_certfile_and_keyfile(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    ports = free_port(), free_port(), free_port()
    cfg = tmp_path / "node.toml"
    cfg.write_text(node_config(tmp_path / "data", *ports).replace(
        "[members.api]\n", f'[members.api]\ncertfile = "{cert}"\nkeyfile = "{key}"\n'))
    proc = NodeProcess(["api", "--in-process", "--config", str(cfg)], cwd=tmp_path)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        info = proc.wait_http(f"https://127.0.0.1:{ports[0]}/api/v1/info", verify=context)
        assert info.status_code == 200 and info.json()["member"] == "api"
        assert "https://127.0.0.1" in proc.log()
        # Plain HTTP to the TLS port gets no HTTP answer.
        answer, _, _ = exchange(ports[0], head("GET", "/api/v1/info"), wait_s=5)
        assert not answer.startswith(b"HTTP/1.1 200")
    finally:
        proc.stop()
