"""Pipeline configs: the JSON or YAML body of SetPipeline, parsed and checked.

::

    jobs:
      - name: unit
        trigger_every: 1m        # optional: the scheduler starts a build when elapsed
        timeout: 10m             # optional, default 10m
        steps:
          - run: "echo hello && sleep 1"

:func:`parse_pipeline` turns a request body into the config to store (only
the keys above, as the user wrote them) and the :class:`JobConfig` list the
store needs. Every problem is a :class:`PipelineConfigError` whose message
names the place, e.g. ``jobs[1].steps[0]: missing 'run'``, so that a user
finds the line to fix. YAML anchors and aliases are allowed; a size budget
keeps an alias bomb from expanding into gigabytes.

Bounds, each refused with the place, the value and the limit: ``timeout`` at
most :data:`MAX_TIMEOUT` (7d), ``trigger_every`` at most
:data:`~web_node.units.MAX_DURATION` (366d), :data:`MAX_JOBS` jobs of
:data:`MAX_STEPS` steps, :data:`MAX_CONFIG_CHARS` characters of names and
commands. JSON bodies are read by :mod:`web_node.strict_json` (no NaN,
Infinity, out-of-range numbers or lone surrogates); a step's command may hold
newlines and tabs but no NUL, which no ``execve`` can pass on.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

import yaml

from web_node import strict_json
from web_node.errors import WebNodeError
from web_node.store import JobConfig, StepConfig
from web_node.units import DURATION_HELP, MAX_DURATION_S, OutOfRange, parse_duration

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_HELP = "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit"
PIPELINE_KEYS = ("jobs",)
JOB_KEYS = ("name", "steps", "trigger_every", "timeout")
STEP_KEYS = ("run",)
DEFAULT_TIMEOUT = "10m"
MAX_TIMEOUT = "7d"  # a build still running after a week is stuck; the build-tracker fails it at its timeout
MAX_TIMEOUT_S = 7 * 86400.0
MAX_JOBS = 1000
MAX_STEPS = 100
# Characters of job names, durations and commands together, counted as the
# config is walked: YAML aliases may repeat one big step many times over.
MAX_CONFIG_CHARS = 1024 * 1024

JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/x-yaml", "application/yaml", "text/yaml", "text/x-yaml")

# libyaml's parser is fast and bounds nesting; the pure-Python one takes seconds to fail on "[[[[...".
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

EXAMPLE = "jobs:\n  - name: unit\n    steps:\n      - run: echo hello"


class PipelineConfigError(WebNodeError, ValueError):
    """A pipeline config cannot be used; ``.path`` is where (``jobs[1].steps[0]``), empty for the whole body."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


def check_name(kind: str, value: object) -> str:
    """A pipeline or job name, safe in a URL path segment; raises PipelineConfigError."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise PipelineConfigError(f"{kind} name {_shown(value)} is not valid: {NAME_HELP}")
    return value


def _shown(value: object) -> str:
    """``repr(value)``, shortened to what a message can carry."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**40 else f"<a {value.bit_length()}-bit number>"
    return text if len(text) <= 80 else f"{text[:60]}...{text[-10:]} ({len(text)} characters)"


def parse_pipeline(body: bytes | str, content_type: str | None = None) -> tuple[dict[str, Any], list[JobConfig]]:
    """The config to store and its jobs, from a request body.

    ``content_type`` picks the parser (JSON, or YAML for ``application/x-yaml``,
    ``text/yaml`` and friends); when it is absent or says neither (curl's
    default form encoding, ``text/plain``), the body itself decides: JSON when
    it starts with ``{``, YAML otherwise.
    """
    return validate_pipeline(load_document(body, content_type))


def load_document(body: bytes | str, content_type: str | None = None) -> Any:
    """The body parsed as JSON or YAML (see :func:`parse_pipeline`); raises PipelineConfigError."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise PipelineConfigError(f"the body is not UTF-8 text (byte {e.start}); "
                                      "send the pipeline config as JSON or YAML") from None
    else:
        text = body
    if not text.strip():
        raise PipelineConfigError(f"the body is empty; send the pipeline config as JSON or YAML, e.g.\n{EXAMPLE}")
    kind = _format_of(content_type, text)
    try:
        return _load_json(text) if kind == "json" else _load_yaml(text)
    except RecursionError:
        raise PipelineConfigError(f"the {kind.upper()} body is nested too deeply to be a pipeline config") from None


def _format_of(content_type: str | None, text: str) -> str:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in JSON_TYPES or media.endswith("+json"):
        return "json"
    if media in YAML_TYPES or media.endswith("+yaml"):
        return "yaml"
    return "json" if text.lstrip().startswith("{") else "yaml"


def _load_json(text: str) -> Any:
    try:
        return strict_json.loads(text)
    except strict_json.JsonBodyError as e:
        raise PipelineConfigError(str(e)) from None


def _load_yaml(text: str) -> Any:
    try:
        doc = yaml.load(text, Loader=_YAML_LOADER)  # a safe loader: plain data only
        strict_json.check_strings(doc)  # "\ud800" escapes: not text a database or a shell can take
        return doc
    except strict_json.JsonBodyError as e:
        raise PipelineConfigError(f"the body is not valid YAML text: {e}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(p for p in (e.context, e.problem) if p)
        raise PipelineConfigError(f"the body is not valid YAML: {where}{what}") from None
    except yaml.YAMLError as e:
        raise PipelineConfigError(f"the body is not valid YAML: {e}") from None
    except (ValueError, OverflowError) as e:
        # A scalar the safe constructor could not build: a timestamp such as 2001-13-45, an integer of
        # thousands of digits. PyYAML reports these without a place.
        reason = str(e).split(";", 1)[0]  # int's digit limit adds advice for Python programmers after a ";"
        raise PipelineConfigError(f"the body is not valid YAML: a value cannot be read: {reason}") from None


def validate_pipeline(doc: Any) -> tuple[dict[str, Any], list[JobConfig]]:
    """Check a parsed document; returns the config to store and its jobs."""
    return _Validator().pipeline(doc)


class _Validator:
    def __init__(self) -> None:
        self.chars = 0

    def _count(self, path: str, text: str) -> None:
        self.chars += len(text)
        if self.chars > MAX_CONFIG_CHARS:
            raise PipelineConfigError(f"the config holds more than {MAX_CONFIG_CHARS // 1024} KiB of names and commands "
                                      "(YAML aliases count each time they are used); split it into several pipelines",
                                      path=path)

    def pipeline(self, doc: Any) -> tuple[dict[str, Any], list[JobConfig]]:
        if not isinstance(doc, Mapping):
            raise PipelineConfigError(f"the pipeline config must be a mapping with 'jobs', got {_kind(doc)}; e.g.\n{EXAMPLE}")
        _check_keys("", doc, PIPELINE_KEYS)
        if "jobs" not in doc:
            raise PipelineConfigError(f"missing 'jobs': list the pipeline's jobs, e.g.\n{EXAMPLE}")
        jobs = doc["jobs"]
        if jobs is None:
            jobs = []  # "jobs:" with nothing under it: a pipeline without jobs
        if not isinstance(jobs, list):
            raise PipelineConfigError(f"must be a list of jobs, got {_kind(jobs)}", path="jobs")
        if len(jobs) > MAX_JOBS:
            raise PipelineConfigError(f"{len(jobs)} jobs is more than the {MAX_JOBS} a pipeline may have", path="jobs")
        stored: list[dict[str, Any]] = []
        configs: list[JobConfig] = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(jobs):
            job, config = self.job(f"jobs[{i}]", raw)
            if config.name in seen:
                raise PipelineConfigError(f"job name {config.name!r} is already used by jobs[{seen[config.name]}]; "
                                          "job names must be unique within a pipeline", path=f"jobs[{i}].name")
            seen[config.name] = i
            stored.append(job)
            configs.append(config)
        return {"jobs": stored}, configs

    def job(self, path: str, raw: Any) -> tuple[dict[str, Any], JobConfig]:
        if not isinstance(raw, Mapping):
            raise PipelineConfigError(f"a job must be a mapping with 'name' and 'steps', got {_kind(raw)}", path=path)
        _check_keys(path, raw, JOB_KEYS)
        if "name" not in raw:
            raise PipelineConfigError("missing 'name'", path=path)
        try:
            name = check_name("job", raw["name"])
        except PipelineConfigError as e:
            raise PipelineConfigError(str(e), path=f"{path}.name") from None
        self._count(f"{path}.name", name)
        stored: dict[str, Any] = {"name": name}
        trigger_every_s = None
        if raw.get("trigger_every") is not None:
            trigger_every_s = self.duration(f"{path}.trigger_every", raw["trigger_every"], MAX_DURATION_S)
            stored["trigger_every"] = raw["trigger_every"]
        timeout = raw.get("timeout")
        timeout_s = self.duration(f"{path}.timeout", DEFAULT_TIMEOUT if timeout is None else timeout, MAX_TIMEOUT_S)
        if timeout is not None:
            stored["timeout"] = timeout
        if "steps" not in raw:
            raise PipelineConfigError("missing 'steps': a job runs at least one step, e.g. steps: [{run: make test}]", path=path)
        steps = raw["steps"]
        if not isinstance(steps, list) or not steps:
            raise PipelineConfigError(f"must be a non-empty list of steps, got {_kind(steps)}", path=f"{path}.steps")
        if len(steps) > MAX_STEPS:
            raise PipelineConfigError(f"{len(steps)} steps is more than the {MAX_STEPS} a job may have", path=f"{path}.steps")
        runs = [self.step(f"{path}.steps[{j}]", step) for j, step in enumerate(steps)]
        stored["steps"] = [{"run": run} for run in runs]
        config = JobConfig(name=name, steps=tuple(StepConfig(run) for run in runs),
                           trigger_every_s=trigger_every_s, timeout_s=timeout_s)
        return stored, config

    def step(self, path: str, raw: Any) -> str:
        if not isinstance(raw, Mapping):
            raise PipelineConfigError(f"a step must be a mapping like {{run: \"make test\"}}, got {_kind(raw)}", path=path)
        _check_keys(path, raw, STEP_KEYS)
        if "run" not in raw:
            raise PipelineConfigError("missing 'run'", path=path)
        run = raw["run"]
        if not isinstance(run, str) or not run.strip():
            raise PipelineConfigError(f"must be a shell command (a non-empty string), got {_kind(run)}", path=f"{path}.run")
        if "\0" in run:
            raise PipelineConfigError(f"holds a NUL character (at {run.index(chr(0))}), which no shell command can pass on",
                                      path=f"{path}.run")
        self._count(f"{path}.run", run)
        return run

    def duration(self, path: str, value: Any, max_s: float) -> float:
        try:
            seconds = parse_duration(value, max_s=max_s)
        except OutOfRange as e:
            raise PipelineConfigError(f"{_shown(value)} is longer than the maximum of {e.maximum}", path=path) from None
        except ValueError:
            raise PipelineConfigError(f"{_shown(value)} is not {DURATION_HELP}", path=path) from None
        if seconds <= 0:
            raise PipelineConfigError(f"{value!r} must be longer than zero", path=path)
        self._count(path, value)
        return seconds


def _check_keys(path: str, t: Mapping[Any, Any], valid: tuple[str, ...]) -> None:
    for key in t:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PipelineConfigError(f"unknown key {key!r}{hint}; valid keys: {', '.join(valid)}", path=path)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the text {shown!r}"
    if isinstance(value, (int, float)):
        return f"the number {_shown(value)}"
    if isinstance(value, list):
        return f"a list of {len(value)}" if value else "an empty list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__
