"""Malformed input is refused with a 4xx (or a ConfigError) that says what was wrong, never a 500.

Durations and sizes past their documented maxima, numbers no 64-bit column
holds, NaN and Infinity, lone surrogates, recursive YAML, control characters
in names, tokens too short to be secret; log lines that a name with ``\\n``
or ``\\x1b`` cannot forge; database URLs whose passwords stay hidden however
they are written; and a failing store answered "store unavailable", its
detail only in the log. The HTTP cases run the real api and gateway apps
in-process (quart's test client, through the same request gate and routing
as a served request) on a real SQLite store.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from web_node import strict_json
from web_node.config import parse_config
from web_node.errors import ConfigError
from web_node.log import _JsonFormatter, _TextFormatter, escape_control
from web_node.members import MemberContext, default_registry
from web_node.members import api as api_member
from web_node.members import gateway as gateway_member
from web_node.metrics import ProcessMetrics
from web_node.pipeline_config import PipelineConfigError, parse_pipeline
from web_node.store import AsyncStore, open_store, redact_database_url
from web_node.units import MAX_SIZE_BYTES, OutOfRange, parse_duration, parse_size

API_TOKEN = "malformed-api-token-0123"
WORKER_TOKEN = "malformed-worker-token-0123"
REGISTRY = default_registry()


def short_id(value: object) -> str:
    """A test id for values whose repr would be thousands of digits (or raise, past 4300)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"int-of-{value.bit_length()}-bits"
    return repr(value)[:24]


# ---------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize("text", ["999999999999s", "9" * 400 + "s", "367d", "366d1ms", "8784h1s"])
def test_a_duration_past_the_maximum_names_value_and_maximum(text: str) -> None:
    with pytest.raises(OutOfRange) as info:
        parse_duration(text)
    assert info.value.maximum == "366d"
    assert "366d" in str(info.value) and text[:30] in str(info.value)


def test_a_duration_at_the_maximum_and_a_tighter_maximum() -> None:
    assert parse_duration("366d") == 366 * 86400
    with pytest.raises(OutOfRange, match="longer than the maximum of 1h"):
        parse_duration("61m", max_s=3600)


@pytest.mark.parametrize("value", ["1025T", "9" * 60 + "G", 2**60, 10**5000, "2000TB"], ids=short_id)
def test_a_size_past_the_maximum_is_refused_without_overflow(value: str | int) -> None:
    with pytest.raises(OutOfRange, match="maximum of 1024T"):
        parse_size(value)
    assert parse_size("1024T") == MAX_SIZE_BYTES


# ---------------------------------------------------------------- the config parser


def config_error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, REGISTRY)
    return str(info.value)


def test_config_durations_past_the_maximum_name_key_value_and_maximum() -> None:
    message = config_error({"node": {"shutdown_grace": "999999999999s"}})
    assert message == "node.shutdown_grace = '999999999999s' is longer than the maximum of 366d"


@pytest.mark.parametrize(("member", "key"), [("api", "token"), ("gateway", "worker_token")])
def test_a_configured_token_shorter_than_16_characters_is_refused_and_not_repeated(member: str, key: str) -> None:
    message = config_error({"members": {member: {key: "s3cret-15-chars"}}})
    assert f"members.{member}.{key}" in message
    assert "at least 16 characters, this one has 15" in message
    assert "s3cret" not in message  # a secret is never echoed, even a refused one
    config = parse_config({"members": {member: {key: "s3cret-16-chars!"}}}, REGISTRY)
    assert config.members[member].options[key] == "s3cret-16-chars!"


@pytest.mark.parametrize("token", ["a-token-with-a\nnewline", "a-token-with-\x1b-escape", "a token with spaces in"])
def test_a_token_with_control_characters_or_spaces_is_refused(token: str) -> None:
    assert "without spaces or control characters" in config_error({"members": {"api": {"token": token}}})


@pytest.mark.parametrize("cpu_max", ["inf", "nan", float("inf"), 10**400, "1e999"], ids=short_id)
def test_cpu_max_must_be_finite(cpu_max: Any) -> None:
    message = config_error({"groups": {"backend": {"members": ["gc"], "cpu_max": cpu_max}}})
    assert "groups.backend.cpu_max" in message and "positive number of cores" in message


@pytest.mark.parametrize("listen", ["127.0.0.1:²", "127.0.0.1:" + "9" * 5000, "127.0.0.1:65536"])
def test_listen_ports_must_be_ascii_numbers_in_range(listen: str) -> None:
    assert "must be HOST:PORT" in config_error({"members": {"api": {"listen": listen}}})


# ---------------------------------------------------------------- the pipeline parser and strict JSON


def pipeline_error(body: bytes | str, content_type: str | None = None) -> str:
    with pytest.raises(PipelineConfigError) as info:
        parse_pipeline(body, content_type)
    return str(info.value)


def test_a_timeout_past_seven_days_names_place_value_and_maximum() -> None:
    body = json.dumps({"jobs": [{"name": "unit", "timeout": "999999999999s", "steps": [{"run": "true"}]}]})
    assert pipeline_error(body) == "jobs[0].timeout: '999999999999s' is longer than the maximum of 7d"
    body = "jobs:\n  - name: unit\n    trigger_every: 400d\n    steps: [{run: 'true'}]\n"
    assert pipeline_error(body) == "jobs[0].trigger_every: '400d' is longer than the maximum of 366d"


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"jobs": NaN}', "NaN is not JSON"),
    (b'{"jobs": [-Infinity]}', "-Infinity is not JSON"),
    (b'{"jobs": [1e999]}', "the number 1e999 is too large"),
    (b'{"jobs": [' + b"9" * 5000 + b"]}", "is out of range"),
    (b'{"jobs": ["\\ud800"]}', "lone UTF-16 surrogate"),
    (b"[" * 100_000, "nested too deeply"),
    (b"\xff\xfe{", "not UTF-8 text"),
])
def test_json_that_python_would_take_is_refused(body: bytes, expected: str) -> None:
    assert expected in pipeline_error(body, "application/json")
    with pytest.raises(strict_json.JsonBodyError, match=expected.split(" is")[0][:12]):
        strict_json.loads(body)


@pytest.mark.parametrize(("body", "expected"), [
    (b"jobs: &a [*a, *a]", "jobs[0]: a job must be a mapping"),  # a list that contains itself
    (b"&a {jobs: *a}", "jobs: must be a list of jobs"),
    (b"jobs: 2001-13-45", "the body is not valid YAML: a value cannot be read: month must be in 1..12"),
    (b"jobs: " + b"9" * 5000, "the body is not valid YAML: a value cannot be read: Exceeds the limit (4300 digits)"),
    (b'jobs: [{name: a, steps: [{run: "a\\0b"}]}]', "jobs[0].steps[0].run: holds a NUL character"),
])
def test_yaml_that_would_loop_overflow_or_crash_is_refused(body: bytes, expected: str) -> None:
    started = time.monotonic()
    assert pipeline_error(body, "text/yaml").startswith(expected)
    assert time.monotonic() - started < 5  # a self-containing alias must not be walked forever


# ---------------------------------------------------------------- log lines


def record(message: str, *args: Any, exc: BaseException | None = None) -> logging.LogRecord:
    rec = logging.LogRecord("web_node.api", logging.INFO, __file__, 1, message, args,
                            (type(exc), exc, exc.__traceback__) if exc else None)
    rec.member = "api"
    return rec


FORGED = "p\n2026-12-01T03:00:00.000 ERROR   [node] group api given up\x1b[1A\x1b[2K\r\u2028\x85\x00"


def test_text_log_lines_escape_control_characters() -> None:
    line = _TextFormatter().format(record("pipeline %s created", FORGED))
    assert line.count("\n") == 0 and "\x1b" not in line and "\r" not in line and "\u2028" not in line
    assert "pipeline p\\n2026-12-01T03:00:00.000 ERROR   [node] group api given up\\x1b[1A\\x1b[2K\\r\\u2028\\x85\\x00 " \
           "created" in line
    assert escape_control("tab\tstays") == "tab\tstays"


def test_a_traceback_in_a_text_log_line_cannot_start_a_line_of_its_own() -> None:
    try:
        raise ValueError(f"bad name {FORGED}")
    except ValueError as e:
        line = _TextFormatter().format(record("request failed", exc=e))
    first, *rest = line.split("\n")
    assert first.endswith("[api] request failed") and rest
    assert all(continuation.startswith("    ") for continuation in rest), rest
    assert "\x1b" not in line and "\r" not in line


def test_json_log_lines_are_one_line_that_reads_back_exactly() -> None:
    line = _JsonFormatter().format(record("pipeline %s created", FORGED))
    assert "\n" not in line and "\x1b" not in line and "\u2028" not in line
    assert json.loads(line)["message"] == f"pipeline {FORGED} created"


# ---------------------------------------------------------------- database URLs


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://ci:pw@db.example.com/ci", "postgresql://ci:***@db.example.com/ci"),
    ("postgresql://ci:p@ss@db.example.com/ci", "postgresql://ci:***@db.example.com/ci"),  # '@' in the password
    ("postgresql://ci:p%40ss@db/ci", "postgresql://ci:***@db/ci"),
    ("postgresql://ci:p/w@db/ci", "postgresql://ci:***@db/ci"),
    ("postgresql://ci:p:w@h1:5432,h2:5433/ci", "postgresql://ci:***@h1:5432,h2:5433/ci"),
    ("postgres://ci@db/ci?password=hunter2hunter2", "postgres://ci@db/ci?password=***"),
    ("postgresql://ci@db/ci?sslmode=require&password=a%26b&sslpassword=keypass",
     "postgresql://ci@db/ci?sslmode=require&password=***&sslpassword=***"),
    ("host=db user=ci password=hunter2hunter2 dbname=ci", "host=db user=ci password=*** dbname=ci"),
    ("host=db password='two words' user=ci", "host=db password=*** user=ci"),
    ("postgresql://ci@db/ci", "postgresql://ci@db/ci"),
    ("mysql://admin:pw@db.example/ci", "mysql://admin:***@db.example/ci"),
    ("sqlite:///var/lib/web-node/node.db", "sqlite:///var/lib/web-node/node.db"),
])
def test_database_urls_are_shown_without_their_passwords(url: str, shown: str) -> None:
    assert redact_database_url(url) == shown
    if url.startswith("postgres") or "host=" in url:
        # What libpq reads from the shown text: no password but the mask.
        params = conninfo_to_dict(shown)
        assert params.get("password", "***") == "***" and params.get("sslpassword", "***") == "***"


def test_a_password_libpq_would_find_where_the_text_rules_miss_it_hides_the_whole_url() -> None:
    shown = redact_database_url("postgresql://ci@db/ci?pass%77ord=hunter2hunter2")  # libpq decodes the key
    assert "hunter2" not in shown and shown.startswith("postgresql://")


# ---------------------------------------------------------------- the apps, in-process


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    s = AsyncStore(open_store(f"sqlite:///{tmp_path}/node.db", str(tmp_path)))
    try:
        yield s
    finally:
        await s.close()


async def app_of(module: Any, store: AsyncStore, tmp_path: Path, log: logging.LoggerAdapter[logging.Logger]) -> Any:
    name = module.MEMBER.name
    raw = {"node": {"data_dir": str(tmp_path), "metrics_listen": ""},
           "members": {"api": {"token": API_TOKEN}, "gateway": {"worker_token": WORKER_TOKEN}}}
    ctx = MemberContext(member=REGISTRY.get(name), config=parse_config(raw, REGISTRY), group=name, log=log,
                        store=store, metrics=ProcessMetrics())
    return await module.make_app(ctx)


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.stream = io.StringIO()
        self.setFormatter(_TextFormatter())

    def emit(self, rec: logging.LogRecord) -> None:
        self.stream.write(self.format(rec) + "\n")


@pytest.fixture
def captured() -> Any:
    handler = Captured()
    logger = logging.getLogger("web_node.malformed-test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield logging.LoggerAdapter(logger, {"member": "test"}), handler.stream
    finally:
        logger.removeHandler(handler)


API = {"Authorization": f"Bearer {API_TOKEN}"}


async def test_names_with_control_characters_answer_400_naming_the_field(store: AsyncStore, tmp_path: Path,
                                                                         captured: Any) -> None:
    client = (await app_of(api_member, store, tmp_path, captured[0])).test_client()
    for path, field in [("/api/v1/pipelines/a%0Ab", "pipeline name 'a\\nb'"),
                        ("/api/v1/pipelines/a%1B%5B2J/jobs", "pipeline name 'a\\x1b[2J'"),
                        ("/api/v1/pipelines/p/jobs/j%0D", "job name 'j\\r'"),
                        ("/api/v1/builds?pipeline=a%00b", "?pipeline=: pipeline name 'a\\x00b'"),
                        ("/api/v1/builds?job=%E2%80%A8", "?job=: job name '\\u2028'")]:
        response = await client.get(path, headers=API)
        assert response.status_code == 400, path
        assert (await response.get_json())["error"].startswith(field), await response.get_data()
    response = await client.put("/api/v1/components/gc%0A/pause", headers=API)
    assert response.status_code == 400 and "component name 'gc\\n'" in (await response.get_json())["error"]


async def test_build_ids_no_64_bit_column_holds_answer_404(store: AsyncStore, tmp_path: Path, captured: Any) -> None:
    client = (await app_of(api_member, store, tmp_path, captured[0])).test_client()
    for build_id in ("9223372036854775808", "9" * 30, "9" * 5000, "\uff11"):
        response = await client.get(f"/api/v1/builds/{build_id}", headers=API)
        assert response.status_code == 404, build_id
    response = await client.get("/api/v1/builds/9223372036854775807", headers=API)
    assert (await response.get_json())["error"] == "build 9223372036854775807 does not exist"


async def test_a_refused_pipeline_leaves_the_stored_one(store: AsyncStore, tmp_path: Path, captured: Any) -> None:
    client = (await app_of(api_member, store, tmp_path, captured[0])).test_client()
    good = {"jobs": [{"name": "unit", "steps": [{"run": "true"}]}]}
    assert (await client.put("/api/v1/pipelines/p", headers=API, json=good)).status_code == 201
    for body, content_type in [(b'{"jobs": [{"name": "unit", "timeout": "999999999999s", "steps": [{"run": "x"}]}]}',
                                "application/json"),
                               (b"jobs: &a [*a]", "text/yaml"), (b"\xff", "text/yaml"), (b'{"jobs": NaN}', None)]:
        response = await client.put("/api/v1/pipelines/p", headers={**API, "Content-Type": content_type or "text/plain"},
                                    data=body)
        assert response.status_code == 400, await response.get_data()
        assert "Infinity" not in (await response.get_data(as_text=True))
        assert (await store.get_pipeline("p")).config == good
        assert [j.name for j in await store.list_jobs("p")] == ["unit"]


async def test_gateway_bodies_that_are_not_strict_json_answer_400(store: AsyncStore, tmp_path: Path, captured: Any) -> None:
    client = (await app_of(gateway_member, store, tmp_path, captured[0])).test_client()
    shared = {"Authorization": f"Bearer {WORKER_TOKEN}"}
    for body, expected in [(b"\xff", "not UTF-8 text"), (b"[" * 100_000, "nested too deeply"),
                           (b'{"name": "w", "platform": NaN}', "NaN is not JSON"),
                           (b'{"name": "w", "builds": [99999999999999999999]}', "out of range"),
                           (b'{"name": "w", "platform": "\\ud800"}', "lone UTF-16 surrogate"),
                           (b'{"name": "w", "platform": "linux\\n2026 ERROR forged"}', "platform must be printable"),
                           (b'{"name": "w", "tags": ["ok", "\\u001b[2J"]}', "tags[1] must be printable"),
                           (b'{"name": "w\\n"}', "name 'w\\n' is not a worker name"),
                           (b"not json", "not valid JSON")]:
        response = await client.post("/gateway/v1/workers", headers=shared, data=body)
        assert response.status_code == 400, (body[:60], await response.get_data())
        assert expected in (await response.get_json())["error"], await response.get_data()


async def test_a_failing_store_answers_store_unavailable_and_logs_the_detail(store: AsyncStore, tmp_path: Path,
                                                                             captured: Any) -> None:
    log, logged = captured
    client = (await app_of(api_member, store, tmp_path, log)).test_client()
    store.store.close()  # the database is gone for this process: every call raises StoreError
    response = await client.get("/api/v1/pipelines", headers=API)
    assert response.status_code == 503
    message = (await response.get_json())["error"]
    assert message.startswith("store unavailable: member api could not use its database")
    assert str(tmp_path) not in message and "closed" not in message  # the detail is the operator's
    assert f"{tmp_path}/node.db is closed" in logged.getvalue()
    assert "store unavailable on GET /api/v1/pipelines (answered 503)" in logged.getvalue()


def test_a_postgresql_store_that_cannot_connect_names_the_url_without_its_password(tmp_path: Path) -> None:
    from web_node.errors import StoreError

    with pytest.raises(StoreError) as info:  # port 1: refused at once, by the real libpq
        open_store("postgresql://ci@127.0.0.1:1/ci?password=hunter2hunter2&connect_timeout=5", str(tmp_path))
    message = str(info.value)
    assert "postgresql://ci@127.0.0.1:1/ci?password=***&connect_timeout=5" in message
    assert "hunter2" not in message
