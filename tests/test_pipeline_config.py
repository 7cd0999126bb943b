"""Pipeline configs from JSON and YAML bodies: what is accepted, what is stored, and
error messages that name the place to fix."""

from __future__ import annotations

import json

import pytest

from web_node.pipeline_config import (
    MAX_CONFIG_CHARS,
    PipelineConfigError,
    check_name,
    load_document,
    parse_pipeline,
)
from web_node.store import JobConfig, StepConfig

SPEC_EXAMPLE = """\
jobs:
  - name: unit
    trigger_every: 1m        # optional: the scheduler starts a build when elapsed
    timeout: 10m
    steps:
      - run: "echo hello && sleep 1"
"""


def error_of(body: str | bytes, content_type: str | None = None) -> str:
    with pytest.raises(PipelineConfigError) as info:
        parse_pipeline(body, content_type)
    return str(info.value)


def test_the_spec_example_in_yaml() -> None:
    config, jobs = parse_pipeline(SPEC_EXAMPLE, "application/x-yaml")
    assert jobs == [JobConfig(name="unit", steps=(StepConfig("echo hello && sleep 1"),), trigger_every_s=60.0, timeout_s=600.0)]
    # Stored as written: only known keys, durations as the user wrote them.
    assert config == {"jobs": [{"name": "unit", "trigger_every": "1m", "timeout": "10m",
                                "steps": [{"run": "echo hello && sleep 1"}]}]}
    json.dumps(config)  # JSON-able, as the store needs


def test_json_and_yaml_give_the_same_pipeline() -> None:
    doc = {"jobs": [{"name": "unit", "timeout": "1m30s", "steps": [{"run": "make"}, {"run": "make test"}]},
                    {"name": "nightly", "trigger_every": "1d", "steps": [{"run": "make bench"}]}]}
    from_json = parse_pipeline(json.dumps(doc).encode(), "application/json; charset=utf-8")
    from_yaml = parse_pipeline(
        "jobs:\n"
        "  - {name: unit, timeout: 1m30s, steps: [{run: make}, {run: make test}]}\n"
        "  - name: nightly\n    trigger_every: 1d\n    steps:\n      - run: make bench\n", "text/yaml")
    assert from_json == from_yaml
    _, jobs = from_json
    assert [j.name for j in jobs] == ["unit", "nightly"]
    assert jobs[0].timeout_s == 90.0 and jobs[0].trigger_every_s is None
    assert jobs[1].trigger_every_s == 86400.0 and jobs[1].timeout_s == 600.0  # default timeout 10m


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/x-www-form-urlencoded",
                                          "application/octet-stream"])
def test_without_a_useful_content_type_the_body_decides(content_type: str | None) -> None:
    yaml_body = "jobs:\n  - name: a\n    steps: [{run: 'true'}]\n"
    json_body = '  {"jobs": [{"name": "a", "steps": [{"run": "true"}]}]}'
    assert parse_pipeline(yaml_body, content_type) == parse_pipeline(json_body, content_type)
    # A body that looks like JSON is read as JSON, so JSON's own error comes back.
    assert "not valid JSON" in error_of('{"jobs": [', content_type)


@pytest.mark.parametrize("content_type", ["application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml",
                                          "application/vnd.web-node+yaml"])
def test_yaml_content_types(content_type: str) -> None:
    # JSON is valid YAML, so a YAML body may look like JSON.
    _, jobs = parse_pipeline('{"jobs": [{"name": "a", "steps": [{"run": "true"}]}]}', content_type)
    assert jobs[0].name == "a"


def test_a_pipeline_without_jobs() -> None:
    assert parse_pipeline("jobs: []") == ({"jobs": []}, [])
    assert parse_pipeline("jobs:") == ({"jobs": []}, [])


def test_yaml_anchors_are_allowed() -> None:
    body = ("jobs:\n"
            "  - name: a\n    steps: &build\n      - run: make\n      - run: make test\n"
            "  - name: b\n    steps: *build\n")
    config, jobs = parse_pipeline(body)
    assert jobs[0].steps == jobs[1].steps == (StepConfig("make"), StepConfig("make test"))
    assert config["jobs"][1]["steps"] == [{"run": "make"}, {"run": "make test"}]


@pytest.mark.parametrize(("body", "expected"), [
    # the place, then the problem
    ("jobs:\n  - name: a\n    steps: [{run: x}]\n  - name: b\n    steps:\n      - {}\n", "jobs[1].steps[0]: missing 'run'"),
    ("jobs:\n  - name: a\n    steps: [{run: x}, {rnu: y}]\n",
     "jobs[0].steps[1]: unknown key 'rnu' (did you mean 'run'?); valid keys: run"),
    ("jobs:\n  - name: a\n    steps: [{run: ''}]\n", "jobs[0].steps[0].run: must be a shell command (a non-empty string)"),
    ("jobs:\n  - name: a\n    steps: [{run: 3}]\n", "jobs[0].steps[0].run: must be a shell command (a non-empty string), "
                                                     "got the number 3"),
    ("jobs:\n  - name: a\n    steps: [make]\n", "jobs[0].steps[0]: a step must be a mapping"),
    ("jobs:\n  - name: a\n    steps: []\n", "jobs[0].steps: must be a non-empty list of steps, got an empty list"),
    ("jobs:\n  - name: a\n", "jobs[0]: missing 'steps'"),
    ("jobs:\n  - steps: [{run: x}]\n", "jobs[0]: missing 'name'"),
    ("jobs:\n  - name: a b\n    steps: [{run: x}]\n", "jobs[0].name: job name 'a b' is not valid"),
    ("jobs:\n  - name: a\n    steps: [{run: x}]\n  - name: a\n    steps: [{run: y}]\n",
     "jobs[1].name: job name 'a' is already used by jobs[0]"),
    ("jobs:\n  - name: a\n    trigger_evry: 1m\n    steps: [{run: x}]\n",
     "jobs[0]: unknown key 'trigger_evry' (did you mean 'trigger_every'?)"),
    ("jobs:\n  - name: a\n    timeout: 10\n    steps: [{run: x}]\n",
     "jobs[0].timeout: 10 is not a duration such as 500ms, 10s, 1m30s or 2h"),
    ("jobs:\n  - name: a\n    timeout: 10 minutes\n    steps: [{run: x}]\n", "jobs[0].timeout: '10 minutes' is not a duration"),
    ("jobs:\n  - name: a\n    trigger_every: 0s\n    steps: [{run: x}]\n",
     "jobs[0].trigger_every: '0s' must be longer than zero"),
    ("jobs:\n  - [a]\n", "jobs[0]: a job must be a mapping with 'name' and 'steps', got a list of 1"),
    ("jobs: unit\n", "jobs: must be a list of jobs, got the text 'unit'"),
    ("job:\n  - name: a\n", "unknown key 'job' (did you mean 'jobs'?); valid keys: jobs"),
    ("{}", "missing 'jobs'"),
    ("- name: a\n", "the pipeline config must be a mapping with 'jobs', got a list of 1"),
    ("just text", "the pipeline config must be a mapping with 'jobs', got the text 'just text'"),
    ("", "the body is empty"),
    ("  \n", "the body is empty"),
    ("jobs:\n - name: a\n  steps: [", "the body is not valid YAML: line 3 column 3"),
    ('{"jobs": [}', "the body is not valid JSON: line 1 column 11"),
])
def test_errors_name_the_place_and_the_problem(body: str, expected: str) -> None:
    message = error_of(body)
    assert message.startswith(expected), message
    assert "Traceback" not in message


def test_the_error_carries_its_path() -> None:
    with pytest.raises(PipelineConfigError) as info:
        parse_pipeline("jobs:\n  - name: a\n    steps: [{run: x}]\n  - name: b\n    steps: [{}]\n")
    assert info.value.path == "jobs[1].steps[0]"
    assert isinstance(info.value, ValueError)


def test_bodies_that_are_not_text() -> None:
    assert error_of(b"\xff\xfe\x00jobs").startswith("the body is not UTF-8 text")
    # A UTF-8 byte order mark is fine.
    assert parse_pipeline("\ufeffjobs: []".encode())[1] == []


def test_deep_nesting_is_refused_cleanly() -> None:
    for body, kind in (("[" * 100_000, "JSON"), ("[" * 100_000, "YAML")):
        message = error_of(body, "application/json" if kind == "JSON" else "text/yaml")
        assert "nested too deeply" in message or "not valid" in message, message


def test_an_alias_bomb_is_refused_by_the_size_budget() -> None:
    # 1000 jobs sharing 100 steps of 2 KiB each: 200 MB once expanded, from a body of a few KiB.
    big = "x" * 2048
    body = f"jobs:\n  - name: j0\n    steps: &s\n      - run: &r {big}\n" + "      - run: *r\n" * 99
    body += "".join(f"  - name: j{i}\n    steps: *s\n" for i in range(1, 1000))
    assert len(body) < 100_000
    message = error_of(body)
    assert f"more than {MAX_CONFIG_CHARS // 1024} KiB" in message and "aliases" in message


def test_too_many_jobs_or_steps() -> None:
    jobs = [{"name": f"j{i}", "steps": [{"run": "true"}]} for i in range(1001)]
    assert error_of(json.dumps({"jobs": jobs})).startswith("jobs: 1001 jobs is more than the 1000")
    steps = [{"run": "true"}] * 101
    assert error_of(json.dumps({"jobs": [{"name": "a", "steps": steps}]})).startswith("jobs[0].steps: 101 steps")


@pytest.mark.parametrize("name", ["unit", "Unit-2", "a.b_c", "9", "x" * 100])
def test_good_names(name: str) -> None:
    assert check_name("pipeline", name) == name


@pytest.mark.parametrize("name", ["", "-a", ".hidden", "a b", "a/b", "ä", "x" * 101, 3, None])
def test_bad_names(name: object) -> None:
    with pytest.raises(PipelineConfigError, match=r"pipeline name .* is not valid: 1 to 100 letters"):
        check_name("pipeline", name)


def test_load_document_keeps_yaml_types_for_the_validator() -> None:
    assert load_document("a: 1\nb: [x]\n", "text/yaml") == {"a": 1, "b": ["x"]}
    assert load_document('{"a": 1}') == {"a": 1}
