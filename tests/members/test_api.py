"""The api member over real HTTP: ``web-node api --in-process`` as a real process, driven with httpx.

One node serves most tests of this module; a few more, started together,
show the endpoint switches (flag, environment, config) and the token
generated into data_dir. Events and workers are written straight into the
node's SQLite file, as the gateway (another process) would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from node_helpers import NodeProcess, free_port

from web_node.members.api import ENDPOINTS
from web_node.store import Store, open_store

TOKEN = "api-test-token-0123456789"
DISABLED_MESSAGE = "endpoint ListAllJobs is disabled by configuration"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ApiNode:
    node: Any  # NodeProcess
    base: str
    token: str | None
    data_dir: Path
    # One client for all calls: a new httpx client per call costs tens of ms (its SSL context).
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0))

    def call(self, method: str, path: str, *, token: str | None = "", **kwargs: Any) -> httpx.Response:
        """``token=""`` sends this node's token, ``None`` sends none."""
        token = self.token if token == "" else token
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.request(method, self.base + path, headers=headers, **kwargs)

    def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}\n{self.node.log()}"
        return response.json() if response.content else None

    def error(self, method: str, path: str, status: int, **kwargs: Any) -> str:
        response = self.call(method, path, **kwargs)
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}"
        assert response.headers["content-type"].startswith("application/json"), response.text
        message: str = response.json()["error"]
        assert "Traceback" not in message
        return message

    def stream(self, build_id: int, **headers: str) -> Any:
        return self.client.stream("GET", f"{self.base}/api/v1/builds/{build_id}/events",
                                  headers={"Authorization": f"Bearer {self.token}", **headers})


def config_text(data_dir: Path, port: int, extra: str = "") -> str:
    return (f'[node]\ndata_dir = "{data_dir}"\nmetrics_listen = ""\nshutdown_grace = "1s"\n'
            f'[members.api]\nlisten = "127.0.0.1:{port}"\n{extra}')


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ApiNode]]:
    """``launch(name, token=..., extra_config=..., args=..., env=..., data_dir=...)`` starts
    ``web-node api --in-process``; ``wait`` it before use. Every node is stopped at the module's end."""
    started: list[Any] = []
    clients: list[httpx.Client] = []
    root = tmp_path_factory.mktemp("api")

    def start(name: str, *, token: str | None = TOKEN, extra_config: str = "", args: tuple[str, ...] = (),
              env: dict[str, str] | None = None, data_dir: Path | None = None) -> ApiNode:
        home = root / name
        home.mkdir()
        data = data_dir or home / "data"
        port = free_port()
        token_line = f'token = "{token}"\n' if token else ""
        cfg = home / "config.toml"
        cfg.write_text(config_text(data, port, token_line + extra_config))
        node = NodeProcess(["api", "--in-process", "--config", str(cfg), *args], cwd=home, env=env)
        started.append(node)
        api = ApiNode(node=node, base=f"http://127.0.0.1:{port}", token=token, data_dir=data)
        clients.append(api.client)
        return api

    try:
        yield start
    finally:
        for client in clients:  # idle keep-alive connections would hold each node's graceful stop
            client.close()
        for node in started:  # all stop at once, then each is waited for (and killed if need be)
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in started:
            node.stop()


def wait(api: ApiNode) -> ApiNode:
    api.node.wait_http(f"{api.base}/api/v1/info")
    return api


@pytest.fixture(scope="module")
def api(launch: Callable[..., ApiNode]) -> ApiNode:
    return wait(launch("main"))


@pytest.fixture(scope="module")
def store(api: ApiNode) -> Iterator[Store]:
    """The node's own database, opened from the test as another process (the gateway) would."""
    s = open_store(f"sqlite:///{api.data_dir}/node.db", str(api.data_dir))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def switched(launch: Callable[..., ApiNode]) -> dict[str, ApiNode]:
    """Nodes with ListAllJobs off by flag, by environment and by config, and two that share one
    data_dir without a configured token; started together, so they cost one start."""
    nodes = {
        "flag": launch("flag", args=("--disable-endpoint", "ListAllJobs")),
        "env": launch("env", env={"WEB_NODE_DISABLE_ENDPOINTS": "ListAllJobs"}),
        "config": launch("config", extra_config='disabled_endpoints = ["ListAllJobs"]\n'),
    }
    generated = launch("generated-a", token=None)
    nodes["generated-a"] = generated
    nodes["generated-b"] = launch("generated-b", token=None, data_dir=generated.data_dir)
    for node in nodes.values():
        wait(node)
    return nodes


JOBS_YAML = """\
jobs:
  - name: unit
    trigger_every: 1m
    timeout: 10m
    steps:
      - run: "echo hello && sleep 1"
  - name: lint
    steps:
      - run: ruff check .
"""


def set_pipeline(api: ApiNode, name: str, jobs: list[str]) -> None:
    config = {"jobs": [{"name": j, "steps": [{"run": f"echo {j}"}]} for j in jobs]}
    api.ok("PUT", f"/api/v1/pipelines/{name}", 201, json=config)


def data_lines(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data:"):
            yield json.loads(line[len("data:"):])


def claim(store: Store, build_id: int) -> None:
    """Have a worker start ``build_id`` (claiming, on the way, whatever other builds are pending)."""
    store.register_worker("w-test", "linux/amd64", [], time.time())
    while (claimed := store.claim_pending_build("w-test", time.time())) is not None:
        if claimed.id == build_id:
            return
    raise AssertionError(f"build {build_id} was not pending")


# ---------------------------------------------------------------- info, auth, routes


def test_info_needs_no_token(api: ApiNode) -> None:
    info = api.ok("GET", "/api/v1/info", token=None)
    assert info["name"] == "web-node"
    assert info["member"] == "api" and info["group"] == "api"
    assert info["pid"] == api.node.pid  # --in-process: the member runs in the node's own process
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info["version"])
    assert info["host"] and time.time() - 120 < info["started_at"] <= time.time()
    assert {e["name"] for e in info["endpoints"]} == {e.name for e in ENDPOINTS}


def _path_of(path: str) -> str:
    return (path.replace("<pipeline>", "p").replace("<job>", "j").replace("<int:build_id>", "1")
            .replace("<component>", "api"))


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e.auth == "token"], ids=lambda e: e.name)
def test_every_other_endpoint_needs_the_token(api: ApiNode, endpoint: Any) -> None:
    path = _path_of(endpoint.path)
    response = api.call(endpoint.method, path, token=None)
    assert response.status_code == 401, response.text
    assert "Bearer" in response.headers["www-authenticate"]
    assert "missing token" in response.json()["error"] and "data_dir/api-token" in response.json()["error"]
    assert "wrong token" in api.error(endpoint.method, path, 401, token="not-" + TOKEN)
    assert "wrong token" in api.error(endpoint.method, path, 401, token=TOKEN[:-1])
    assert "must be 'Bearer <token>'" in api.error(endpoint.method, path, 401, token=None,
                                                   headers={"Authorization": f"Basic {TOKEN}"})


def test_the_bearer_scheme_is_case_insensitive(api: ApiNode) -> None:
    assert api.call("GET", "/api/v1/pipelines", token=None, headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_unknown_routes_and_wrong_methods_answer_json(api: ApiNode) -> None:
    assert "no such route: GET /api/v1/nothing" in api.error("GET", "/api/v1/nothing", 404)
    assert "no such route" in api.error("GET", "/", 404, token=None)
    message = api.error("DELETE", "/api/v1/info", 405)
    assert message == "DELETE is not allowed on /api/v1/info; allowed: GET"
    response = api.call("POST", "/api/v1/builds/1/abort")
    assert response.status_code == 405 and "PUT" in response.headers["allow"]
    # A build id is a number.
    assert "no such route" in api.error("GET", "/api/v1/builds/abc", 404)


# ---------------------------------------------------------------- pipelines and jobs


def test_set_get_list_delete_a_pipeline_as_json(api: ApiNode) -> None:
    config = {"jobs": [{"name": "unit", "trigger_every": "1m", "steps": [{"run": "make test"}]}]}
    created = api.ok("PUT", "/api/v1/pipelines/crud", 201, json=config)
    assert created["name"] == "crud" and created["config"] == config
    assert created["jobs"][0] == {"pipeline": "crud", "name": "unit", "trigger_every_s": 60.0, "timeout_s": 600.0,
                                  "steps": [{"run": "make test"}], "last_triggered_at": None}
    got = api.ok("GET", "/api/v1/pipelines/crud")
    assert got["config"] == config and [j["name"] for j in got["jobs"]] == ["unit"]
    listed = api.ok("GET", "/api/v1/pipelines")["pipelines"]
    assert "crud" in [p["name"] for p in listed]
    # Setting it again replaces it: 200, not 201; the job list follows the new config.
    config["jobs"].append({"name": "lint", "steps": [{"run": "ruff check ."}]})
    replaced = api.ok("PUT", "/api/v1/pipelines/crud", 200, json=config)
    assert [j["name"] for j in replaced["jobs"]] == ["unit", "lint"]
    assert replaced["created_at"] == created["created_at"] < replaced["updated_at"]
    assert api.call("DELETE", "/api/v1/pipelines/crud").status_code == 204
    assert api.error("GET", "/api/v1/pipelines/crud", 404) == "pipeline crud does not exist"
    assert "crud" not in [p["name"] for p in api.ok("GET", "/api/v1/pipelines")["pipelines"]]
    assert api.error("DELETE", "/api/v1/pipelines/crud", 404) == "pipeline crud does not exist"


@pytest.mark.parametrize("content_type", ["application/x-yaml", "text/yaml", None])
def test_set_a_pipeline_as_yaml(api: ApiNode, content_type: str | None) -> None:
    name = f"yaml-{(content_type or 'sniffed').replace('/', '-')}"
    headers = {"Content-Type": content_type} if content_type else {}
    created = api.ok("PUT", f"/api/v1/pipelines/{name}", 201, content=JOBS_YAML.encode(), headers=headers)
    assert created["config"]["jobs"][0] == {"name": "unit", "trigger_every": "1m", "timeout": "10m",
                                            "steps": [{"run": "echo hello && sleep 1"}]}
    jobs = api.ok("GET", f"/api/v1/pipelines/{name}/jobs")["jobs"]
    assert [(j["name"], j["trigger_every_s"], j["timeout_s"]) for j in jobs] == [("unit", 60.0, 600.0), ("lint", None, 600.0)]


@pytest.mark.parametrize(("body", "content_type", "problem"), [
    ("jobs:\n  - name: a\n    steps: [{run: x}]\n  - name: b\n    steps:\n      - {}\n", "text/yaml",
     "jobs[1].steps[0]: missing 'run'"),
    ('{"jobs": [{"name": "a", "timeout": "ten minutes", "steps": [{"run": "x"}]}]}', "application/json",
     "jobs[0].timeout: 'ten minutes' is not a duration"),
    ('{"jobs": [', "application/json", "the body is not valid JSON: line 1 column 11"),
    ("jobs:\n - name: a\n  steps: [", "application/x-yaml", "the body is not valid YAML: line 3"),
    ("", None, "the body is empty"),
])
def test_a_malformed_pipeline_is_refused_and_nothing_is_stored(api: ApiNode, body: str, content_type: str | None,
                                                               problem: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    message = api.error("PUT", "/api/v1/pipelines/broken", 400, content=body.encode(), headers=headers)
    assert message.startswith("pipeline broken was not set: ") and problem in message, message
    api.error("GET", "/api/v1/pipelines/broken", 404)
    # A bad config does not touch the pipeline it would have replaced either.
    set_pipeline(api, "kept", ["one"])
    api.error("PUT", "/api/v1/pipelines/kept", 400, content=body.encode(), headers=headers)
    assert [j["name"] for j in api.ok("GET", "/api/v1/pipelines/kept")["jobs"]] == ["one"]
    api.ok("DELETE", "/api/v1/pipelines/kept", 204)


def test_bad_names_and_big_bodies(api: ApiNode) -> None:
    assert "pipeline name 'a b' is not valid" in api.error("PUT", "/api/v1/pipelines/a b", 400, json={"jobs": []})
    message = api.error("PUT", "/api/v1/pipelines/huge", 413, content=b"#" * (2 * 1024 * 1024))
    # Refused from the request head (tests/http/test_bounded_inputs.py): the body is never read.
    assert message == ("the request body (2 MiB) is larger than the 1 MiB endpoint SetPipeline of member api accepts "
                       "([members.api] body_limits.SetPipeline); split it into several pipelines")
    api.error("GET", "/api/v1/pipelines/huge", 404)


def test_jobs_and_list_all_jobs(api: ApiNode) -> None:
    set_pipeline(api, "alpha", ["build", "test"])
    set_pipeline(api, "beta", ["deploy"])
    assert [j["name"] for j in api.ok("GET", "/api/v1/pipelines/alpha/jobs")["jobs"]] == ["build", "test"]
    job = api.ok("GET", "/api/v1/pipelines/alpha/jobs/test")
    assert job["name"] == "test" and job["pipeline"] == "alpha" and job["latest_build"] is None
    assert job["steps"] == [{"run": "echo test"}]
    assert api.error("GET", "/api/v1/pipelines/alpha/jobs/nope", 404) == "job alpha/nope does not exist"
    assert "pipeline gamma does not exist" in api.error("GET", "/api/v1/pipelines/gamma/jobs", 404)

    build = api.ok("POST", "/api/v1/pipelines/beta/jobs/deploy/builds", 201)
    every = {(j["pipeline"], j["name"]): j for j in api.ok("GET", "/api/v1/jobs")["jobs"]}
    assert {("alpha", "build"), ("alpha", "test"), ("beta", "deploy")} <= set(every)
    assert every[("alpha", "build")]["latest_build"] is None
    assert every[("beta", "deploy")]["latest_build"] == build
    assert api.ok("GET", "/api/v1/pipelines/beta/jobs/deploy")["latest_build"] == build


# ---------------------------------------------------------------- builds


def test_create_list_and_get_builds(api: ApiNode) -> None:
    set_pipeline(api, "builds", ["one", "two"])
    response = api.call("POST", "/api/v1/pipelines/builds/jobs/one/builds")
    assert response.status_code == 201, response.text
    first = response.json()
    assert response.headers["location"] == f"/api/v1/builds/{first['id']}"
    assert first["status"] == "pending" and first["trigger"] == "manual"
    assert (first["pipeline"], first["job"], first["worker"], first["start_time"], first["end_time"]) == \
        ("builds", "one", None, None, None)
    second = api.ok("POST", "/api/v1/pipelines/builds/jobs/one/builds", 201)
    other = api.ok("POST", "/api/v1/pipelines/builds/jobs/two/builds", 201)

    assert api.ok("GET", f"/api/v1/builds/{first['id']}") == first
    assert api.ok("GET", "/api/v1/pipelines/builds/jobs/one/builds")["builds"] == [second, first]  # newest first
    assert api.ok("GET", "/api/v1/pipelines/builds/jobs/one/builds?limit=1")["builds"] == [second]
    newest = api.ok("GET", "/api/v1/builds")["builds"]
    assert newest[:3] == [other, second, first]
    assert api.ok("GET", "/api/v1/builds?pipeline=builds&job=two")["builds"] == [other]
    assert "limit='0' must be a whole number from 1 to 1000" in api.error("GET", "/api/v1/builds?limit=0", 400)
    assert api.error("GET", "/api/v1/builds/999999", 404) == "build 999999 does not exist"
    assert api.error("POST", "/api/v1/pipelines/builds/jobs/three/builds", 404) == "job builds/three does not exist"
    assert api.error("GET", "/api/v1/pipelines/builds/jobs/three/builds", 404) == "job builds/three does not exist"


def test_build_events_replay_and_close_once_finished(api: ApiNode, store: Store) -> None:
    set_pipeline(api, "replay", ["job"])
    build = api.ok("POST", "/api/v1/pipelines/replay/jobs/job/builds", 201)
    claim(store, build["id"])
    now = time.time()
    store.append_event(build["id"], "status", {"status": "started"}, now)
    store.append_event(build["id"], "log", {"step": 0, "text": "hello\n"}, now)
    store.append_event(build["id"], "log", {"step": 0, "text": "line one\nline two\n"}, now)
    store.append_event(build["id"], "finish", {"status": "succeeded"}, now)
    store.finish_build(build["id"], "succeeded", now)

    began = time.monotonic()
    with api.stream(build["id"]) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(data_lines(response))  # ends: the server closes the stream after finish
    assert time.monotonic() - began < 5
    assert [(e["type"], e["payload"]) for e in events] == [
        ("status", {"status": "started"}),
        ("log", {"step": 0, "text": "hello\n"}),
        ("log", {"step": 0, "text": "line one\nline two\n"}),
        ("finish", {"status": "succeeded"}),
    ]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert all(e["build_id"] == build["id"] for e in events)

    # A client that reconnects continues after the last event it saw.
    with api.stream(build["id"], **{"Last-Event-ID": "2"}) as response:
        assert [e["seq"] for e in data_lines(response)] == [3, 4]
    assert "build 999999 does not exist" in api.error("GET", "/api/v1/builds/999999/events", 404)


def test_build_events_follow_a_running_build_live(api: ApiNode, store: Store) -> None:
    set_pipeline(api, "live", ["job"])
    build = api.ok("POST", "/api/v1/pipelines/live/jobs/job/builds", 201)
    claim(store, build["id"])
    store.append_event(build["id"], "log", {"text": "before\n"}, time.time())
    with api.stream(build["id"]) as response:
        assert response.status_code == 200
        events = data_lines(response)
        assert next(events)["payload"] == {"text": "before\n"}
        # Written after the stream began, by "another process" (this test, on the same database).
        store.append_event(build["id"], "log", {"text": "during\n"}, time.time())
        written = time.monotonic()
        assert next(events)["payload"] == {"text": "during\n"}
        assert time.monotonic() - written < 2.0  # polled every 0.2 s
        now = time.time()
        store.append_event(build["id"], "finish", {"status": "failed"}, now)
        store.finish_build(build["id"], "failed", now)
        rest = list(events)
    assert [(e["type"], e["payload"]) for e in rest] == [("finish", {"status": "failed"})]


def test_a_build_finished_without_a_finish_event_still_ends_the_stream(api: ApiNode, store: Store) -> None:
    set_pipeline(api, "silent", ["job"])
    build = api.ok("POST", "/api/v1/pipelines/silent/jobs/job/builds", 201)
    # As a web-node before one-transaction ends left it: the status set, no finish event written.
    with sqlite3.connect(api.data_dir / "node.db") as db:
        db.execute("UPDATE builds SET status = 'errored', end_time = ? WHERE id = ?", (time.time(), build["id"]))
    with api.stream(build["id"]) as response:
        events = list(data_lines(response))
    assert [(e["type"], e["payload"], e["seq"]) for e in events] == [("finish", {"status": "errored"}, None)]


def test_abort_a_pending_and_a_started_build(api: ApiNode, store: Store) -> None:
    set_pipeline(api, "abort", ["job"])
    pending = api.ok("POST", "/api/v1/pipelines/abort/jobs/job/builds", 201)
    aborted = api.ok("PUT", f"/api/v1/builds/{pending['id']}/abort")
    assert aborted["status"] == "aborted" and aborted["end_time"] is not None
    assert api.ok("GET", f"/api/v1/builds/{pending['id']}")["status"] == "aborted"
    with api.stream(pending["id"]) as response:
        events = [(e["type"], e["payload"]) for e in data_lines(response)]
    assert events == [("status", {"status": "aborted"}), ("finish", {"status": "aborted"})]
    message = api.error("PUT", f"/api/v1/builds/{pending['id']}/abort", 409)
    assert message == f"build {pending['id']} has already finished (aborted); only a pending or started build can be aborted"

    started = api.ok("POST", "/api/v1/pipelines/abort/jobs/job/builds", 201)
    claim(store, started["id"])
    assert api.ok("GET", f"/api/v1/builds/{started['id']}")["status"] == "started"
    with api.stream(started["id"]) as response:  # a watcher sees the abort live
        events_iter = data_lines(response)
        assert api.ok("PUT", f"/api/v1/builds/{started['id']}/abort")["worker"] == "w-test"
        assert [e["type"] for e in events_iter] == ["status", "finish"]
    # Whoever finished a build first decides: a succeeded build cannot be aborted.
    done = api.ok("POST", "/api/v1/pipelines/abort/jobs/job/builds", 201)
    store.finish_build(done["id"], "succeeded", time.time())
    assert "already finished (succeeded)" in api.error("PUT", f"/api/v1/builds/{done['id']}/abort", 409)
    assert api.error("PUT", "/api/v1/builds/999999/abort", 404) == "build 999999 does not exist"


# ---------------------------------------------------------------- workers and components


def test_list_workers(api: ApiNode, store: Store) -> None:
    store.register_worker("w-listed", "linux/arm64", ["gpu"], time.time())
    workers = {w["name"]: w for w in api.ok("GET", "/api/v1/workers")["workers"]}
    assert workers["w-listed"]["platform"] == "linux/arm64" and workers["w-listed"]["tags"] == ["gpu"]


def test_pause_and_unpause_a_component(api: ApiNode) -> None:
    components = {c["name"]: c for c in api.ok("GET", "/api/v1/components")["components"]}
    assert components["api"]["pid"] == api.node.pid and components["api"]["paused"] is False
    assert api.ok("PUT", "/api/v1/components/api/pause")["paused"] is True
    assert {c["name"]: c["paused"] for c in api.ok("GET", "/api/v1/components")["components"]}["api"] is True
    assert api.ok("PUT", "/api/v1/components/api/unpause")["paused"] is False
    assert {c["name"]: c["paused"] for c in api.ok("GET", "/api/v1/components")["components"]}["api"] is False
    message = api.error("PUT", "/api/v1/components/nope/pause", 404)
    assert message.startswith("component nope does not exist; known components: ") and "api" in message
    api.error("PUT", "/api/v1/components/nope/unpause", 404)
    assert "component api paused through the API" in api.node.log()


# ---------------------------------------------------------------- switches and the generated token


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_list_all_jobs_switched_off(switched: dict[str, ApiNode], how: str) -> None:
    api = switched[how]
    set_pipeline(api, "p", ["j"])
    response = api.call("GET", "/api/v1/jobs")
    assert response.status_code == 404
    assert response.json() == {"error": DISABLED_MESSAGE}
    # The rest keep working.
    assert api.ok("GET", "/api/v1/pipelines/p/jobs/j")["name"] == "j"
    assert api.ok("GET", "/api/v1/pipelines/p/jobs")["jobs"][0]["name"] == "j"
    enabled = {e["name"]: e["enabled"] for e in api.ok("GET", "/api/v1/info")["endpoints"]}
    assert enabled["ListAllJobs"] is False and enabled["GetJob"] is True
    assert "endpoints disabled by configuration: ListAllJobs" in api.node.log()


def test_list_all_jobs_on_by_default(api: ApiNode) -> None:
    assert api.call("GET", "/api/v1/jobs").status_code == 200


def test_a_token_is_generated_into_data_dir_when_none_is_set(switched: dict[str, ApiNode]) -> None:
    a, b = switched["generated-a"], switched["generated-b"]
    path = a.data_dir / "api-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) >= 32
    # Two processes started at once on one data_dir agree on the one token.
    for node in (a, b):
        assert node.call("GET", "/api/v1/pipelines", token=token).status_code == 200
        assert "wrong token" in node.error("GET", "/api/v1/pipelines", 401, token=TOKEN)
        assert node.call("GET", "/api/v1/pipelines", token=None).status_code == 401
        # The log names the file (never the token), so an operator finds it.
        log = node.node.log()
        assert str(path) in log and token not in log
    assert not [f for f in os.listdir(a.data_dir) if f.startswith(".api-token")]  # no temporary files left
