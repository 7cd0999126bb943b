"""Each worker its own credential, through a real gateway process and a real SQLite store.

The shared worker token admits registration only; a worker heartbeats,
claims, logs and finishes as itself with the credential RegisterWorker gave
it, and only for the builds it claimed; a taken name is refused to anyone
without its credential; a numbered event batch re-sent after a gateway
restart is stored once. The worker's own client keeps its credential in a
0600 file and registers again with it after a restart.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from node_helpers import free_port

from web_node.errors import ConfigError
from web_node.members.gateway import credential_hash
from web_node.store import Build, JobConfig, StepConfig, Store, open_store
from web_node.worker._client import CREDENTIAL_FILE, GatewayClient, GatewayRefused

SHARED_TOKEN = "shared-worker-token-for-tests"
BUILD_USER = "web-node-build"


@dataclass
class Gateway:
    start_node: Any
    data_dir: Path
    base: str = ""
    node: Any = None
    store: Store = field(init=False)

    def start(self) -> None:
        port = free_port()
        self.node = self.start_node(["gateway", "--in-process"], config_text=(
            f'[node]\ndata_dir = "{self.data_dir}"\nmetrics_listen = ""\nshutdown_grace = "1s"\n'
            f'[members.gateway]\nlisten = "127.0.0.1:{port}"\nworker_token = "{SHARED_TOKEN}"\n'))
        self.base = f"http://127.0.0.1:{port}/gateway/v1"
        self.node.wait_http(f"{self.base}/info")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *, token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, self.base + path, json=body, headers=headers, timeout=10)

    def register(self, name: str, **extra: Any) -> httpx.Response:
        return self.call("POST", "/workers", {"name": name, "platform": "linux/test", **extra}, token=SHARED_TOKEN)

    def credential(self, name: str) -> str:
        response = self.register(name)
        assert response.status_code == 201, response.text
        credential: str = response.json()["credential"]
        return credential

    def pending_build(self) -> Build:
        self.store.set_pipeline("p", {}, [JobConfig("j", (StepConfig("echo hi"),))])
        return self.store.create_build("p", "j", "manual", time.time())


@pytest.fixture
def gateway(start_node: Any, data_dir: Path) -> Iterator[Gateway]:
    gw = Gateway(start_node, data_dir)
    gw.start()
    gw.store = open_store(f"sqlite:///{data_dir}/node.db", str(data_dir))
    try:
        yield gw
    finally:
        gw.store.close()


def _log(output: str, seq: int, worker: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"seq": seq, "events": [{"type": "log", "payload": {"output": output, "step": 0}}]}
    if worker is not None:
        body["worker"] = worker
    return body


def test_the_shared_token_alone_cannot_heartbeat_claim_log_or_finish(gateway: Gateway) -> None:
    w1 = gateway.credential("w1")
    build = gateway.pending_build()
    for token in (SHARED_TOKEN, None, "not-a-credential-of-anyone"):
        for method, path, body in (("PUT", "/workers/w1/heartbeat", {}), ("POST", "/workers/w1/claim", {}),
                                   ("POST", f"/builds/{build.id}/events", _log("x", 1, "w1")),
                                   ("PUT", f"/builds/{build.id}/finish", {"worker": "w1", "status": "succeeded"})):
            response = gateway.call(method, path, body, token=token)
            assert response.status_code == 401, (token, path, response.text)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            if token == SHARED_TOKEN:
                assert "the shared worker token only admits registration" in response.json()["error"]
    assert gateway.store.get_build(build.id).status == "pending"  # nobody claimed it
    # The worker's own credential does; it does not register (that is the shared token's one use).
    assert gateway.call("POST", "/workers/w1/claim", {}, token=w1).json()["build"]["id"] == build.id
    assert gateway.call("POST", "/workers", {"name": "w9"}, token=w1).status_code == 401


def test_a_second_worker_cannot_log_to_or_finish_another_workers_build(gateway: Gateway) -> None:
    w1, w2 = gateway.credential("w1"), gateway.credential("w2")
    assert w1 != w2
    build = gateway.pending_build()
    assert gateway.call("POST", "/workers/w1/claim", {}, token=w1).json()["build"]["id"] == build.id

    # As itself: the build is w1's.
    logged = gateway.call("POST", f"/builds/{build.id}/events", _log("w2 was here\n", 1), token=w2)
    assert logged.status_code == 409 and "run by worker w1, not by w2" in logged.json()["error"]
    finished = gateway.call("PUT", f"/builds/{build.id}/finish", {"status": "succeeded"}, token=w2)
    assert finished.status_code == 409 and "run by worker w1" in finished.json()["error"]
    # Pretending to be w1 with its own credential.
    for method, path, body in (("POST", f"/builds/{build.id}/events", _log("x", 1, "w1")),
                               ("PUT", f"/builds/{build.id}/finish", {"worker": "w1", "status": "failed"}),
                               ("PUT", "/workers/w1/heartbeat", {"builds": [build.id]}),
                               ("POST", "/workers/w1/claim", {})):
        response = gateway.call(method, path, body, token=w2)
        assert response.status_code == 403, (path, response.text)
        assert "this credential belongs to worker w2, not to w1" in response.json()["error"]

    after = gateway.store.get_build(build.id)
    assert after.status == "started" and after.worker == "w1"
    assert gateway.store.list_events(build.id) == []
    # The build's own worker still can.
    assert gateway.call("POST", f"/builds/{build.id}/events", _log("mine\n", 1), token=w1).json()["accepted"] == 1
    done = gateway.call("PUT", f"/builds/{build.id}/finish", {"status": "succeeded"}, token=w1).json()
    assert done["accepted"] is True and done["build"]["status"] == "succeeded"
    assert [e.type for e in gateway.store.list_events(build.id)] == ["log", "finish"]


def test_a_taken_name_is_refused_without_its_credential(gateway: Gateway) -> None:
    first = gateway.register("w1", tags=["first"])
    credential = first.json()["credential"]
    for extra in ({}, {"credential": "a-guess"}):
        refused = gateway.register("w1", **extra)
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert "worker name w1 is taken" in error and "credential file" in error and "--name" in error
    assert "credential" not in refused.json()
    assert gateway.call("PUT", "/workers/w1/heartbeat", {}, token=credential).status_code == 200  # still w1's

    # The same worker, restarted with its credential: registered again, the credential kept.
    again = gateway.register("w1", credential=credential, tags=["second"])
    assert again.status_code == 201 and "credential" not in again.json()
    assert again.json()["worker"]["tags"] == ["second"]
    assert gateway.call("PUT", "/workers/w1/heartbeat", {}, token=credential).status_code == 200

    # Pruned (as gc does after worker_retention without heartbeats): the name is free, the old credential void.
    assert gateway.store.delete_workers_stalled_before(time.time() + 1) == ["w1"]
    void = gateway.call("PUT", "/workers/w1/heartbeat", {}, token=credential)
    assert void.status_code == 401 and "register again" in void.json()["error"]
    fresh = gateway.register("w1", credential=credential)
    assert fresh.status_code == 201 and fresh.json()["credential"] not in ("", credential)


def test_a_batch_resent_after_a_gateway_restart_is_stored_once(gateway: Gateway) -> None:
    w1 = gateway.credential("w1")
    build = gateway.pending_build()
    gateway.call("POST", "/workers/w1/claim", {}, token=w1)
    batch = _log("only once\n", 1)
    assert gateway.call("POST", f"/builds/{build.id}/events", batch, token=w1).json()["accepted"] == 1

    # The answer was lost and the gateway restarted meanwhile: the worker sends the same batch again.
    assert gateway.node.terminate() == 0
    gateway.start()
    resent = gateway.call("POST", f"/builds/{build.id}/events", batch, token=w1)
    assert resent.json() == {"accepted": 0, "duplicate": True, "status": "started", "abort": False}
    assert gateway.call("POST", f"/builds/{build.id}/events", _log("next\n", 2), token=w1).json()["accepted"] == 1
    assert [e.payload["output"] for e in gateway.store.list_events(build.id)] == ["only once\n", "next\n"]
    for bad in (None, 0, -1, "1", True, 1.5):
        body = {**_log("x", 3), "seq": bad}
        response = gateway.call("POST", f"/builds/{build.id}/events", body, token=w1)
        assert response.status_code == 400 and "seq" in response.json()["error"], bad


async def test_the_workers_client_keeps_its_credential_across_restarts(gateway: Gateway, tmp_path: Path) -> None:
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    credential_file = str(work_dir / CREDENTIAL_FILE)
    base = gateway.base.removesuffix("/gateway/v1")

    client = GatewayClient(base, SHARED_TOKEN, "w1", credential_file=credential_file)
    try:
        await client.register("linux/test", [], [])
        assert stat.S_IMODE(os.stat(credential_file).st_mode) == 0o600
        kept = Path(credential_file).read_text().strip()
        assert gateway.store.worker_for_credential(credential_hash(kept)).name == "w1"  # the store keeps its hash
        assert await client.claim(0) is None
    finally:
        await client.aclose()

    # The worker restarts: a new client reads the file and registers under its name again.
    restarted = GatewayClient(base, SHARED_TOKEN, "w1", credential_file=credential_file)
    try:
        await restarted.register("linux/test", [], [])
        assert Path(credential_file).read_text().strip() == kept
        await restarted.heartbeat([])
    finally:
        await restarted.aclose()

    # Another worker under the same name (its own, empty work dir) is refused, and told why.
    (tmp_path / "other").mkdir()
    impostor = GatewayClient(base, SHARED_TOKEN, "w1", credential_file=str(tmp_path / "other" / CREDENTIAL_FILE))
    try:
        with pytest.raises(GatewayRefused, match="worker name w1 is taken") as refused:
            await impostor.register("linux/test", [], [])
        assert refused.value.status == 409
        assert not (tmp_path / "other" / CREDENTIAL_FILE).exists()
    finally:
        await impostor.aclose()

    # A credential file others may read is refused rather than used.
    os.chmod(credential_file, 0o644)
    careless = GatewayClient(base, SHARED_TOKEN, "w1", credential_file=credential_file)
    try:
        with pytest.raises(ConfigError, match="mode 644"):
            await careless.register("linux/test", [], [])
    finally:
        await careless.aclose()


class AnswerLosingProxy:
    """An HTTP/1.1 relay in front of the gateway that loses the answer to the first event batch:
    the gateway stores it, then the worker's connection is closed instead of answered, as when
    the gateway dies right after its COMMIT. Everything else passes through unchanged."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.lost: list[bytes] = []
        self.batches: list[bytes] = []  # the body of every event batch relayed, in order
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def close(self) -> None:
        self.listener.close()
        for s in self._sockets:
            s.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets.append(upstream)
            from_client, from_upstream = client.makefile("rb"), upstream.makefile("rb")
            while (request := _http_message(from_client)) is not None:
                upstream.sendall(request)
                response = _http_message(from_upstream)
                if response is None:
                    break
                request_line = request.split(b"\r\n", 1)[0]
                if request_line.startswith(b"POST /gateway/v1/builds/") and b"/events " in request_line:
                    self.batches.append(request.split(b"\r\n\r\n", 1)[1])
                    if not self.lost:
                        self.lost.append(self.batches[-1])
                        break  # the gateway has stored the batch; its answer never arrives
                client.sendall(response)
        except OSError:
            pass
        finally:
            client.close()


def _http_message(stream: Any) -> bytes | None:
    """One request or response with a Content-Length body (what httpx and hypercorn send here)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = stream.readline()
        if not line:
            return None
        head += line
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body: bytes = stream.read(length)
    return head + body


def test_the_worker_resends_a_batch_whose_answer_was_lost_and_it_is_stored_once(
        gateway: Gateway, start_node: Any, tmp_path: Path) -> None:
    from web_node.privilege import ensure_system_user

    ensure_system_user(BUILD_USER)
    proxy = AnswerLosingProxy(int(gateway.base.split(":")[2].split("/")[0]))
    try:
        gateway.store.set_pipeline("p", {}, [JobConfig("j", (StepConfig("echo one; echo two"),))])
        build = gateway.store.create_build("p", "j", "manual", time.time())
        worker = start_node(["worker", "--gateway", f"http://127.0.0.1:{proxy.port}", "--token", SHARED_TOKEN,
                             "--name", "w1", "--work-dir", str(tmp_path / "work"), "--no-cgroups",
                             "--poll-interval", "200ms", "--user", BUILD_USER])
        deadline = time.monotonic() + 30
        while gateway.store.get_build(build.id).status in ("pending", "started"):
            assert time.monotonic() < deadline, f"build not finished:\n{worker.log()}\n{gateway.node.log()}"
            time.sleep(0.1)
        assert len(proxy.lost) == 1, worker.log()
        assert proxy.batches.count(proxy.lost[0]) == 2  # re-sent as it was: same seq, same events
        assert json.loads(proxy.lost[0])["seq"] == 1
        events = gateway.store.list_events(build.id)
        assert gateway.store.get_build(build.id).status == "succeeded", worker.log()
        # The lost batch was sent again (same seq) and stored once: one status event, the output once.
        assert [e.type for e in events].count("status") == 1, events
        assert "".join(str(e.payload.get("output", "")) for e in events if e.type == "log") == "one\ntwo\n"
        assert events[-1].type == "finish" and [e.seq for e in events] == list(range(1, len(events) + 1))
        assert worker.terminate() == 0
    finally:
        proxy.close()
