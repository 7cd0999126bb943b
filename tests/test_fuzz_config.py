"""The config parser driven with generated TOML-shaped mappings (hypothesis).

Whatever the mapping holds, :func:`parse_config` either returns a Config
whose numbers are finite (nothing becomes ``Infinity`` in ``plan --json``)
or raises :class:`ConfigError` with a message for the operator; any other
exception is a crash of ``web-node plan`` or of a reload. Keys are drawn
mostly from the real ones, so that the values reach the checks behind them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from web_node.config import GROUP_KEYS, HTTP_KEYS, NODE_KEYS, Config, parse_config
from web_node.errors import ConfigError
from web_node.members import default_registry

REGISTRY = default_registry()
MEMBER_KEYS = ("enabled", "interval", "listen", "disabled_endpoints", *HTTP_KEYS,
               *{o.name for m in REGISTRY for o in m.options})
FUZZ = settings(max_examples=400, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# What operators write, and what they should not: durations and sizes past their maximum, numbers of
# many digits, control characters, lookalike digits.
LIKELY_TEXT = st.sampled_from([
    "10s", "0s", "1m30s", "999999999999s", "9" * 400 + "s", "366d", "367d", "256M", "1024T", "1025T", "9" * 60 + "G",
    "max", "inf", "nan", "-1", "0.5", "1e999", "127.0.0.1:8080", "127.0.0.1:²", "127.0.0.1:" + "9" * 5000, ":80",
    "sqlite:///tmp/x.db", "postgresql://u:p@h/db", "a\nb", "\x1b[31m", "web-node", "..", "/", "", " ", "on-failure",
    "json", "text", "debug", "ListAllJobs", "api", "short", "a-long-enough-token-0123456789", "tok en with space 0123",
])
TOML_SCALAR = st.one_of(
    LIKELY_TEXT,
    st.text(max_size=30),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),  # TOML integers are 64-bit
    st.integers(),  # and a mapping made in code may hold any int
    st.floats(allow_nan=True, allow_infinity=True),  # TOML has inf and nan
    st.booleans(),
    st.datetimes(), st.dates(), st.times(),
)
TOML_VALUE = st.recursive(TOML_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)


def table(keys: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    key = st.one_of(st.sampled_from(keys), st.text(max_size=12))
    return st.dictionaries(key, TOML_VALUE, max_size=6)


RAW = st.fixed_dictionaries({}, optional={
    "node": st.one_of(table(NODE_KEYS), TOML_VALUE),
    "members": st.one_of(
        st.dictionaries(st.one_of(st.sampled_from(REGISTRY.names()), st.text(max_size=10)),
                        st.one_of(table(MEMBER_KEYS), TOML_VALUE), max_size=4),
        TOML_VALUE),
    "groups": st.one_of(
        st.dictionaries(st.one_of(st.sampled_from([*REGISTRY.names(), "backend"]), st.text(max_size=10)),
                        st.one_of(table(GROUP_KEYS), TOML_VALUE), max_size=3),
        TOML_VALUE),
    "extra": TOML_VALUE,
})


def finite_numbers(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite_numbers(v) for v in value.values())
    if isinstance(value, (list, tuple, frozenset, set)):
        return all(finite_numbers(v) for v in value)
    return True


def settings_of(config: Config) -> dict[str, Any]:
    return {
        "node": dataclasses.asdict(config.node),
        "members": {name: dataclasses.asdict(m) for name, m in config.members.items()},
        "groups": {name: dataclasses.asdict(g) for name, g in config.groups.items()},
    }


@FUZZ
@given(RAW)
def test_any_mapping_parses_or_is_refused_with_a_config_error(raw: dict[str, Any]) -> None:
    try:
        config = parse_config(raw, REGISTRY)
    except ConfigError as e:
        message = str(e)
        assert message and "Traceback" not in message
        return
    parsed = settings_of(config)
    assert finite_numbers(parsed), parsed
    # What `plan --json` and the children's hand-over serialize must be strict JSON.
    json.dumps(parsed, allow_nan=False, default=str)


def one_key_places() -> list[tuple[str, ...]]:
    places: list[tuple[str, ...]] = [("node", k) for k in NODE_KEYS]
    for member in REGISTRY:
        places += [("members", member.name, k) for k in MEMBER_KEYS]
    places += [("groups", "backend", k) for k in GROUP_KEYS if k != "members"]
    return places


@FUZZ
@given(st.sampled_from(one_key_places()), TOML_VALUE)
def test_each_key_takes_any_value_or_refuses_it_naming_the_key(place: tuple[str, ...], value: Any) -> None:
    """One key at a time on an otherwise valid config, so that every key's own check sees every kind of value."""
    raw: dict[str, Any] = {}
    t = raw
    for part in place[:-1]:
        t = t.setdefault(part, {})
    t[place[-1]] = value
    if place[0] == "groups":
        t["members"] = ["scheduler", "gc"]
    try:
        config = parse_config(raw, REGISTRY)
    except ConfigError as e:
        message = str(e)
        assert message and "Traceback" not in message
        if place[0] != "members" or place[-1] in ("enabled", "interval", "listen", "disabled_endpoints", *HTTP_KEYS):
            assert e.key is not None and place[-1] in e.key, (place, message)
        return
    parsed = settings_of(config)
    assert finite_numbers(parsed), parsed
    json.dumps(parsed, allow_nan=False, default=str)


@FUZZ
@given(st.sampled_from(["node.shutdown_grace", "members.gc.interval", "groups.backend.restart_window",
                        "members.api.header_timeout"]),
       st.one_of(st.integers(min_value=367, max_value=10**15).map(lambda d: f"{d}d"),
                 st.integers(min_value=8, max_value=400).map(lambda n: "9" * n + "s")))
def test_durations_past_the_maximum_name_key_value_and_maximum(key: str, value: str) -> None:
    section, *rest = key.split(".")
    raw: dict[str, Any] = {section: {}}
    t = raw[section]
    for part in rest[:-1]:
        t = t.setdefault(part, {})
    t[rest[-1]] = value
    if section == "groups":
        t["members"] = ["gc"]
    try:
        parse_config(raw, REGISTRY)
    except ConfigError as e:
        message = str(e)
    else:
        raise AssertionError(f"{key} = {value!r} was accepted")
    assert key in message
    assert value[:20] in message
    assert "366d" in message or "at most 1h" in message, message


def test_toml_datetimes_are_refused_where_strings_belong() -> None:
    # tomllib gives datetime objects for unquoted dates: a common slip in a duration key.
    try:
        parse_config({"node": {"shutdown_grace": datetime.time(0, 0, 10)}}, REGISTRY)
    except ConfigError as e:
        assert "node.shutdown_grace" in str(e)
    else:
        raise AssertionError("a time of day was taken for a duration")
