"""The pipeline parser driven with generated JSON and YAML bodies (hypothesis).

Whatever the body, :func:`parse_pipeline` returns a config and its jobs or
raises :class:`PipelineConfigError`; nothing else escapes (another exception
would be a 500 of SetPipeline). An accepted config is strict JSON (no NaN or
Infinity), its durations are within their documented maxima, its names are
valid, and storing it loses nothing: the stored config parses again to the
same jobs.
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from web_node.pipeline_config import MAX_TIMEOUT_S, NAME, PipelineConfigError, parse_pipeline
from web_node.units import MAX_DURATION_S

FUZZ = settings(max_examples=500, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TEXT = st.one_of(st.sampled_from(["unit", "lint", "a\nb", "a\x00b", "\x1b[31m", "x" * 101, "", " ", "é", "\ud800"]),
                 st.text(max_size=15))
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), TEXT)
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
DURATIONS = st.one_of(
    st.sampled_from(["10s", "1m30s", "7d", "7d1ms", "8d", "366d", "367d", "999999999999s", "9" * 400 + "s", "0s", "-1s",
                     "1e3s", "10", "", "１s", "1h1h", "500ms"]),
    st.integers(min_value=0, max_value=10**6).map(lambda n: f"{n}s"),
    JSON_SCALAR)
STEP = st.one_of(st.fixed_dictionaries({"run": st.one_of(TEXT, st.sampled_from(["echo hi", "make\n\ttest"]))}),
                 st.fixed_dictionaries({"run": TEXT, "rnu": TEXT}), JSON_VALUE)
JOB = st.one_of(
    st.fixed_dictionaries({"name": TEXT, "steps": st.lists(STEP, min_size=0, max_size=3)},
                          optional={"timeout": DURATIONS, "trigger_every": DURATIONS}),
    JSON_VALUE)
DOC = st.one_of(st.fixed_dictionaries({"jobs": st.one_of(st.lists(JOB, max_size=4), JSON_VALUE)},
                                      optional={"job": JSON_VALUE}),
                JSON_VALUE)


def as_json(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")


def as_yaml(doc: Any) -> bytes:
    try:
        return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")
    except yaml.YAMLError:
        return b"jobs: [" + repr(doc).encode("utf-8", "surrogatepass")  # what yaml cannot write: text that is not YAML


BODIES = st.one_of(
    st.tuples(DOC.map(as_json), st.sampled_from(["application/json", None])),
    st.tuples(DOC.map(as_yaml), st.sampled_from(["text/yaml", "application/x-yaml", None])),
    st.tuples(st.binary(max_size=200), st.sampled_from(["application/json", "text/yaml", None, "text/plain"])),
    st.tuples(st.sampled_from([b"[" * 100_000, b"{" * 100_000, b"- " * 50_000, b"jobs: &a [*a, *a]", b"jobs: 2001-13-45",
                               b"jobs: " + b"9" * 5000, b"jobs: !!binary aGk=", b"jobs: !!python/name:os.system",
                               b'{"jobs": [{"name": "a", "timeout": 1e999, "steps": [{"run": "x"}]}]}',
                               b'{"jobs": NaN}', b'{"jobs": [], "jobs": [1]}', b"\xef\xbb\xbfjobs: []"]),
              st.sampled_from(["application/json", "text/yaml", None])),
)


@FUZZ
@given(BODIES)
def test_any_body_parses_or_is_refused_with_a_pipeline_config_error(body_and_type: tuple[bytes, str | None]) -> None:
    body, content_type = body_and_type
    try:
        config, jobs = parse_pipeline(body, content_type)
    except PipelineConfigError as e:
        assert str(e) and "Traceback" not in str(e)
        return
    stored = json.dumps(config, allow_nan=False)  # what the store and the API write: strict JSON
    for job in jobs:
        assert NAME.fullmatch(job.name)
        assert math.isfinite(job.timeout_s) and 0 < job.timeout_s <= MAX_TIMEOUT_S
        assert job.trigger_every_s is None or 0 < job.trigger_every_s <= MAX_DURATION_S
        assert all(step.run.strip() and "\x00" not in step.run for step in job.steps)
    again_config, again_jobs = parse_pipeline(stored, "application/json")
    assert (again_config, again_jobs) == (config, jobs)


@FUZZ
@given(st.sampled_from(["timeout", "trigger_every"]),
       st.one_of(st.integers(min_value=8, max_value=10**9).map(lambda d: f"{d}d"),
                 st.integers(min_value=8, max_value=500).map(lambda n: "9" * n + "s")))
def test_durations_past_the_maximum_are_refused_naming_place_value_and_maximum(key: str, value: str) -> None:
    if key == "trigger_every" and value.endswith("d") and int(value[:-1]) <= 366:
        value = "367d"
    body = json.dumps({"jobs": [{"name": "unit", key: value, "steps": [{"run": "true"}]}]})
    try:
        parse_pipeline(body)
    except PipelineConfigError as e:
        message = str(e)
    else:
        raise AssertionError(f"{key}: {value!r} was accepted")
    assert message.startswith(f"jobs[0].{key}: "), message
    assert value[:20] in message
    assert ("7d" if key == "timeout" else "366d") in message
