"""Every API and gateway endpoint driven with generated requests (hypothesis), over real HTTP.

``web-node api --in-process`` and ``web-node gateway --in-process`` run as two
real processes on one real SQLite file, as in production. Each generated
request (path parameters, query string, body, content type, method,
credentials) must be answered without a server error: the status is below
500, no answer carries a traceback, and neither process logs an unexpected
error or a traceback for it (which is how a failure inside a stream that has
already started would show). SetPipeline is also checked against the
database: after a refused config the pipeline is exactly what it was before
(or still absent), after an accepted one exactly what was sent, never a mix.

The examples are derandomized (a fixed sequence per test), so a run in CI
fails or passes the same way every time; ``max_examples`` keeps the module
at a few seconds per endpoint.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from node_helpers import NodeProcess, free_port

from web_node.errors import NotFound
from web_node.members.api import ENDPOINTS as API_ENDPOINTS
from web_node.members.gateway import ENDPOINTS as GATEWAY_ENDPOINTS
from web_node.members.gateway import WORKER_ENDPOINTS
from web_node.pipeline_config import PipelineConfigError, parse_pipeline
from web_node.store import Store, open_store

API_TOKEN = "fuzz-api-token-0123456789"
WORKER_TOKEN = "fuzz-worker-token-0123456789"
PIPELINE = "fz"  # seeded: one job, one build claimed by WORKER
JOB = "j"
WORKER = "fw"
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")

FUZZ = settings(max_examples=60, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------- the nodes


@dataclass
class Nodes:
    api: NodeProcess
    gateway: NodeProcess
    api_base: str
    gateway_base: str
    data_dir: Path
    store: Store
    credential: str  # WORKER's own, from RegisterWorker
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=20.0))
    log_seen: dict[str, int] = field(default_factory=dict)

    def base(self, member: str) -> str:
        return self.api_base if member == "api" else self.gateway_base

    def new_log_lines(self) -> str:
        """What both processes logged since the last call."""
        text = ""
        for name, node in (("api", self.api), ("gateway", self.gateway)):
            log = node.log()
            text += log[self.log_seen.get(name, 0):]
            self.log_seen[name] = len(log)
        return text


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    home = tmp_path_factory.mktemp("fuzz-http")
    data = home / "data"
    api_port, gateway_port = free_port(), free_port()
    cfg = home / "node.toml"
    cfg.write_text(f'[node]\ndata_dir = "{data}"\nmetrics_listen = ""\nshutdown_grace = "1s"\n'
                   f'[members.api]\nlisten = "127.0.0.1:{api_port}"\ntoken = "{API_TOKEN}"\n'
                   f'[members.gateway]\nlisten = "127.0.0.1:{gateway_port}"\nworker_token = "{WORKER_TOKEN}"\n')
    started = [NodeProcess([member, "--in-process", "--config", str(cfg)], cwd=home) for member in ("api", "gateway")]
    client = httpx.Client(timeout=20.0)
    store: Store | None = None
    try:
        api, gateway = started
        api_base, gateway_base = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{gateway_port}"
        api.wait_http(f"{api_base}/api/v1/info")
        gateway.wait_http(f"{gateway_base}/gateway/v1/info")
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        seeded = client.put(f"{api_base}/api/v1/pipelines/{PIPELINE}", headers=auth,
                            json={"jobs": [{"name": JOB, "steps": [{"run": "true"}]}]})
        assert seeded.status_code == 201, seeded.text
        for _ in range(2):
            assert client.post(f"{api_base}/api/v1/pipelines/{PIPELINE}/jobs/{JOB}/builds", headers=auth).status_code == 201
        registered = client.post(f"{gateway_base}/gateway/v1/workers", json={"name": WORKER, "platform": "linux/amd64"},
                                 headers={"Authorization": f"Bearer {WORKER_TOKEN}"})
        assert registered.status_code == 201, registered.text
        credential = registered.json()["credential"]
        claimed = client.post(f"{gateway_base}/gateway/v1/workers/{WORKER}/claim", json={},
                              headers={"Authorization": f"Bearer {credential}"})
        assert claimed.status_code == 200 and claimed.json()["build"], claimed.text
        store = open_store(f"sqlite:///{data}/node.db", str(data))
        yield Nodes(api=api, gateway=gateway, api_base=api_base, gateway_base=gateway_base, data_dir=data,
                    store=store, credential=credential, client=client)
    finally:
        client.close()
        if store is not None:
            store.close()
        for node in started:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in started:
            node.stop()


# ---------------------------------------------------------------- what requests are made of

# Names as a path segment or a query value: good ones, stored ones, and what should be refused.
NAMES = st.one_of(
    st.sampled_from([PIPELINE, JOB, WORKER, "api", "gateway", "scheduler", "nope", "a\nb", "a\x1b[2Jb", "\x00", "..", ".",
                     "a/b", "a b", "é", "\ufffd", "x" * 101, "x" * 5000, "-a", "9" * 30, "\u2028", "%ff", "\ud7ff"]),
    st.text(max_size=20),
)
# Build ids as a path segment: seeded ones, absent ones, and numbers no 64-bit column holds.
BUILD_IDS = st.one_of(
    st.integers(min_value=0, max_value=4).map(str),
    st.sampled_from(["9223372036854775807", "9223372036854775808", "9" * 30, "9" * 5000, "-1", "0x1", "1e3", "\uff11",
                     "\u0661", "01", " 1", "1 "]),
    st.integers().map(str),
)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                        st.text(max_size=30))
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=10)
# The keys the endpoints read, so that bodies get past "must be an object" to the checks behind it.
BODY_KEYS = ["name", "platform", "tags", "builds", "credential", "active_builds", "worker", "seq", "events", "status",
             "message", "jobs"]
LIKELY_VALUES = st.one_of(
    st.sampled_from([WORKER, "fw2", "succeeded", "failed", "errored", "aborted", 1, 2, 0, -1, 2**63 - 1, 2**63, 2**62 + 1,
                     [1, 2], [2**63], [-5], "linux\n2026 ERROR forged", "\x1b[31m", ["a\x00b"], []]),
    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["log", "finish", "truncated", "status", "Log", ""]),
                                    "payload": st.one_of(JSON_VALUE, st.fixed_dictionaries({"text": st.text()}))}),
             max_size=3),
)
SHAPED = st.dictionaries(st.one_of(st.sampled_from(BODY_KEYS), st.text(max_size=8)), st.one_of(LIKELY_VALUES, JSON_VALUE),
                         max_size=6)
RAW_BODIES = st.sampled_from([
    b"", b"{", b"[" * 50_000, b'{"a":' * 5_000, b"\xff\xfe\x00", b"\xef\xbb\xbf{}", b'{"name": "\\ud800"}', b"NaN",
    b'{"builds": [1e999]}', b'{"active_builds": ' + b"9" * 5000 + b"}", b"null", b"[]", b"\x00" * 64,
    b"jobs: !!python/object/apply:os.system [true]", b"jobs: &a [*a]", b"jobs: 2001-13-45",
])


def json_text(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # NaN and Infinity: what a sloppy client sends


# A body an endpoint would take, with one thing changed: a key's value replaced, a key dropped, a key added.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "SetPipeline": {"jobs": [{"name": JOB, "steps": [{"run": "true"}]}]},
    "RegisterWorker": {"name": "fw-other", "platform": "linux/amd64", "tags": ["x"], "builds": []},
    "WorkerHeartbeat": {"builds": [1, 2], "active_builds": 1},
    "ClaimBuild": {"active_builds": 0},
    "SendBuildEvents": {"worker": WORKER, "seq": 1, "events": [{"type": "log", "payload": {"text": "hello\n"}}]},
    "FinishBuild": {"worker": WORKER, "status": "succeeded", "message": "done"},
}


@st.composite
def near_valid(draw: st.DrawFn, endpoint: str) -> bytes:
    body = dict(VALID_BODIES.get(endpoint, {}))
    change = draw(st.sampled_from(["none", "none", "replace", "replace", "drop", "add"]))
    if change in ("replace", "drop") and body:
        key = draw(st.sampled_from(sorted(body)))
        if change == "drop":
            del body[key]
        else:
            body[key] = draw(st.one_of(LIKELY_VALUES, JSON_VALUE))
    elif change == "add":
        body[draw(st.one_of(st.sampled_from(BODY_KEYS), st.text(max_size=8)))] = draw(st.one_of(LIKELY_VALUES, JSON_VALUE))
    return json_text(body)


BODIES = st.one_of(SHAPED.map(json_text), RAW_BODIES, st.binary(max_size=200), JSON_VALUE.map(json_text),
                   st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")), st.none())
CONTENT_TYPES = st.sampled_from([None, "application/json", "application/x-yaml", "text/yaml", "text/plain",
                                 "application/json; charset=latin-1", "multipart/form-data; boundary=x",
                                 "application/x-www-form-urlencoded", "\x7f/\x7f"])
QUERY = st.dictionaries(st.one_of(st.sampled_from(["limit", "pipeline", "job", "after"]), st.text(max_size=6)),
                        st.one_of(NAMES, BUILD_IDS), max_size=3)
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")


@dataclass(frozen=True)
class Call:
    member: str
    method: str
    path: str
    headers: dict[str, str | bytes]
    body: bytes | None


def segment(text: str, raw: bool) -> str:
    """A path segment: percent-encoded, or (raw) as written, so that '%ff' reaches the server as bytes."""
    return text if raw and text.isascii() and text.isprintable() and "/" not in text else quote(text, safe="")


@st.composite
def calls(draw: st.DrawFn, member: str, endpoint: Any) -> Call:
    def param(m: re.Match[str]) -> str:
        good = {"pipeline": PIPELINE, "job": JOB, "worker": WORKER, "component": "scheduler"}.get(m.group(2), "1")
        value = draw(st.one_of(st.just(good), st.just(good), BUILD_IDS if m.group(1) == "int" else NAMES))
        return segment(value, draw(st.booleans()))

    path = _PARAM.sub(param, endpoint.path)
    query = draw(QUERY)
    if query:
        path += "?" + urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in query.items()})
    headers: dict[str, str | bytes] = {}
    credential = draw(st.sampled_from(["right", "right", "right", "shared", "none", "wrong"]))
    if credential != "none":
        headers["Authorization"] = f"Bearer {credential}"  # replaced by the real one in send()
    content_type = draw(CONTENT_TYPES)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if draw(st.integers(0, 9)) == 0:
        headers["Last-Event-ID"] = draw(BUILD_IDS).strip().encode() or b"0"  # raw bytes: '１' arrives as UTF-8
    method = endpoint.method if draw(st.integers(0, 7)) else draw(st.sampled_from(METHODS))
    if draw(st.integers(0, 9)) == 0:
        headers["Host"] = draw(st.sampled_from(["evil.example", "localhost", "127.0.0.1:1", "[::1]", "a" * 300, "", "x y"]))
    body = draw(st.one_of(near_valid(endpoint.name), near_valid(endpoint.name), BODIES))
    return Call(member=member, method=method, path=path, headers=headers, body=body)


def send(nodes: Nodes, call: Call, endpoint: str) -> tuple[int, str]:
    headers = dict(call.headers)
    if "Authorization" in headers:
        kind = str(headers["Authorization"]).removeprefix("Bearer ")
        tokens = {"right": API_TOKEN if call.member == "api" else (
                      nodes.credential if endpoint in WORKER_ENDPOINTS else WORKER_TOKEN),
                  "shared": WORKER_TOKEN, "wrong": "not-the-token-0123456789"}
        headers["Authorization"] = f"Bearer {tokens[kind]}"
    url = nodes.base(call.member) + call.path
    with nodes.client.stream(call.method, url, headers=headers, content=call.body) as response:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            body = next(response.iter_bytes(), b"")  # a live stream: its first event is enough
        else:
            body = response.read()
    return response.status_code, body.decode("utf-8", "replace")


def check_answer(nodes: Nodes, call: Call, status: int, text: str) -> None:
    where = f"{call.method} {call.path[:200]!r} body={call.body[:200] if call.body else call.body!r}"
    assert status < 500, f"{where}: {status} {text[:500]}"
    assert not TRACEBACK.search(text), f"{where}: a traceback in the answer: {text[:2000]}"
    if status >= 400:
        doc = json.loads(text)
        assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], f"{where}: {text[:500]}"
    logged = nodes.new_log_lines()
    assert "unexpected error" not in logged and not TRACEBACK.search(logged), f"{where}: logged\n{logged[-3000:]}"


# ---------------------------------------------------------------- every endpoint

# The gateway's first, while the seeded build is still there to be worked on; the api's DeletePipeline
# may remove it, and ensure_seeded() puts a pipeline, a job and builds back for the api's endpoints after it.
ALL_ENDPOINTS = [("gateway", e) for e in GATEWAY_ENDPOINTS] + [("api", e) for e in API_ENDPOINTS]


def ensure_seeded(nodes: Nodes) -> None:
    try:
        nodes.store.get_job(PIPELINE, JOB)
        if nodes.store.list_builds(limit=1, pipeline=PIPELINE, job=JOB):
            return
    except NotFound:
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        answer = nodes.client.put(f"{nodes.api_base}/api/v1/pipelines/{PIPELINE}", headers=auth,
                                  json={"jobs": [{"name": JOB, "steps": [{"run": "true"}]}]})
        assert answer.status_code in (200, 201), answer.text
    answer = nodes.client.post(f"{nodes.api_base}/api/v1/pipelines/{PIPELINE}/jobs/{JOB}/builds",
                               headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert answer.status_code == 201, answer.text
    nodes.new_log_lines()  # what seeding logged is not the next call's


@pytest.mark.parametrize(("member", "endpoint"), ALL_ENDPOINTS, ids=[f"{m}-{e.name}" for m, e in ALL_ENDPOINTS])
@FUZZ
@given(data=st.data())
def test_every_endpoint_answers_generated_requests_without_a_server_error(nodes: Nodes, member: str, endpoint: Any,
                                                                          data: st.DataObject) -> None:
    if member == "api":
        ensure_seeded(nodes)
    call = data.draw(calls(member, endpoint))
    status, text = send(nodes, call, endpoint.name)
    check_answer(nodes, call, status, text)


# ---------------------------------------------------------------- SetPipeline, against the database

PIPELINE_NAMES = st.sampled_from(["fz-a", "fz-b", "fz-a", "fz-b", "a\nb", "x" * 101])
DURATIONS = st.one_of(
    st.sampled_from(["10s", "1m30s", "7d", "8d", "366d", "367d", "999999999999s", "9" * 400 + "s", "0s", "-1s", "1e3s",
                     "10", ""]),
    st.text(max_size=6), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.none())
STEP = st.one_of(st.fixed_dictionaries({"run": st.one_of(st.sampled_from(["echo hi", "make\ntest", "a\x00b", " "]),
                                                          st.text(max_size=12), st.integers())}),
                 JSON_VALUE)
JOB_DOC = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["unit", "lint", "unit", "a\x1bb"]), NAMES), "steps": st.lists(STEP, max_size=3)},
    optional={"timeout": DURATIONS, "trigger_every": DURATIONS, "tmeout": st.just("1m")})
PIPELINE_DOC = st.one_of(st.fixed_dictionaries({"jobs": st.one_of(st.lists(JOB_DOC, max_size=3), JSON_VALUE)},
                                               optional={"extra": JSON_VALUE}),
                         JSON_VALUE)


def yaml_text(value: Any) -> bytes:
    return yaml.safe_dump(value, allow_unicode=True).encode()


PIPELINE_BODIES = st.one_of(PIPELINE_DOC.map(json_text), PIPELINE_DOC.map(yaml_text), RAW_BODIES, st.binary(max_size=100))


def stored(store: Store, name: str) -> tuple[Any, list[tuple[Any, ...]]] | None:
    """The pipeline as the database holds it: its config and its jobs, or None."""
    try:
        config = store.get_pipeline(name).config
    except NotFound:
        return None
    jobs = [(j.name, j.config.steps, j.config.timeout_s, j.config.trigger_every_s) for j in store.list_jobs(name)]
    return config, jobs


@settings(FUZZ, max_examples=150)
@given(name=PIPELINE_NAMES, body=PIPELINE_BODIES, content_type=CONTENT_TYPES)
def test_a_refused_pipeline_leaves_the_previous_one_and_an_accepted_one_is_stored_whole(
        nodes: Nodes, name: str, body: bytes, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    call = Call("api", "PUT", f"/api/v1/pipelines/{quote(name, safe='')}", {"Authorization": "Bearer right", **headers}, body)
    before = stored(nodes.store, name)
    status, text = send(nodes, call, "SetPipeline")
    check_answer(nodes, call, status, text)
    after = stored(nodes.store, name)
    try:
        expected_config, expected_jobs = parse_pipeline(body, content_type)
    except PipelineConfigError:
        expected = None
    else:
        expected = (expected_config, [(j.name, j.steps, j.timeout_s, j.trigger_every_s) for j in expected_jobs])
    if status in (200, 201):
        assert expected is not None, f"accepted a config the parser refuses: {body[:300]!r}"
        assert after == expected, f"stored {after!r}, sent {expected!r}"
        assert json.loads(text)["config"] == expected[0]
    else:
        assert status in (400, 413, 415), f"{status} {text[:300]}"
        assert after == before, f"a refused SetPipeline ({status} {text[:200]}) changed the stored pipeline"
