"""docs/configuration.md: every key the parser accepts, with its meaning from :mod:`web_node.config_keys`.

Which keys exist is asked of the parser itself: a section holding an
unknown key makes :func:`web_node.config.parse_config` raise a ConfigError
whose ``valid`` lists the keys of that section. So a key added to the parser
appears here without further work (as undocumented until it gets a
:data:`~web_node.config_keys.KEYS` entry, which tests/test_docs.py demands).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from web_node.config import ENV_CONFIG, ENV_DISABLE_ENDPOINTS, parse_config
from web_node.config_keys import KEYS, TYPE_HELP, KeyDoc
from web_node.errors import ConfigError
from web_node.members import Member, Option, Registry
from web_node.reference._markdown import code, header, table

#: A key no section accepts: asking for it makes the parser list the valid ones.
_PROBE = "?"
UNDOCUMENTED = "(undocumented: add it to web_node/config_keys.py)"


def _valid(raw: Mapping[str, Any], registry: Registry) -> list[str]:
    try:
        parse_config(raw, registry)
    except ConfigError as e:
        if e.valid is None:
            raise
        return [k.strip() for k in e.valid.split(",") if k.strip()]
    raise AssertionError(f"the parser accepted the probe key {_PROBE!r} in {dict(raw)!r}")


def accepted_keys(registry: Registry) -> dict[str, list[str]]:
    """``{section: [keys]}`` as the parser accepts them: "node", "members.NAME" for each member,
    "groups" for any group, and any other top-level section by its name."""
    out: dict[str, list[str]] = {}
    for section in _valid({_PROBE: {}}, registry):
        if section == "members":
            for member in registry:
                out[f"members.{member.name}"] = _valid({"members": {member.name: {_PROBE: 1}}}, registry)
        elif section == "groups":
            first = registry.names()[0]
            out["groups"] = _valid({"groups": {"probe": {"members": [first], _PROBE: 1}}}, registry)
        else:
            out[section] = _valid({section: {_PROBE: 1}}, registry)
    return out


def toml_duration(seconds: float) -> str:
    """``30s``, ``5m``, ``7d``, ``1m30s``: the shortest config text for ``seconds`` that parses back to it."""
    if seconds <= 0 or not math.isfinite(seconds):
        return str(seconds)
    parts = []
    ms = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return '"' + "".join(parts) + '"'


def toml_size(n: int) -> str:
    """``"16M"`` for 16 MiB: the largest binary unit that divides ``n`` (a plain number of bytes otherwise)."""
    for unit, size in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= size and n % size == 0:
            return f'"{n // size}{unit}"'
    return str(n)


def option_default(option: Option) -> str:
    """A member option's default as TOML text (or a sentence in parentheses when it is unset)."""
    value = option.default
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if option.type == "duration" and isinstance(value, int | float):
        return toml_duration(float(value))
    if option.type == "size" and isinstance(value, int):
        return toml_size(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def _twins(doc: KeyDoc | None) -> str:
    if doc is None:
        return ""
    return ", ".join(code(t) for t in (doc.env, doc.flag) if t)


def _key_row(key: str, doc: KeyDoc | None, default: str | None = None) -> list[str]:
    if doc is None:
        return [code(key), "", "", "", UNDOCUMENTED]
    shown = default if default is not None else doc.default
    return [code(key), doc.type, code(shown) if not shown.startswith("(") else shown, _twins(doc), doc.help]


def member_specific_default(member: Member, key: str) -> str | None:
    """The default of a common key that each member sets for itself (its listen address, its interval)."""
    if key == "listen" and member.listen:
        return f'"{member.listen}"'
    if key == "interval" and member.interval_s:
        return toml_duration(member.interval_s)
    return None


def render(registry: Registry) -> str:
    keys = accepted_keys(registry)
    out = [header("Configuration", "web_node/config.py (which keys exist), web_node/config_keys.py (what they mean) "
                                   "and the member registry (members, their options and defaults)")]
    out.append(
        f"A TOML file (`--config FILE`, or the path in `{ENV_CONFIG}`), then the environment, then flags; "
        "a later source wins. Unknown keys, bad values and unknown member or endpoint names are errors naming the key, "
        "the value and what would be valid; `web-node plan` checks a file without starting anything (exit 2 when it "
        "is bad).\n\n")
    out.append(table(["type", "written as"], [[t, h] for t, h in TYPE_HELP.items()]))
    out.append("\nColumns: *default* is the value used when the key is left out; *twin* is the environment variable "
               "or flag that sets the same thing.\n")
    headers = ["key", "type", "default", "twin", "meaning"]
    for section, names in keys.items():
        if section.startswith("members."):
            continue
        title = "[groups.NAME]" if section == "groups" else f"[{section}]"
        out.append(f"\n## {title}\n\n")
        if section == "groups":
            out.append("A group is the members that share one process and one cgroup. Every member not placed in a "
                       "group is a group of its own, named after it; `[groups.api]` without `members` sets the limits "
                       "of api's own group.\n\n")
        out.append(table(headers, [_key_row(k, KEYS.get(f"{section}.{k}")) for k in names]))
    out.append("\n## [members.NAME]\n\n")
    out.append("Keys every member section may hold; which apply depends on the member's kind (column *members*).\n\n")
    common: dict[str, list[str]] = {}
    for member in registry:
        option_names = {o.name for o in member.options}
        for k in keys[f"members.{member.name}"]:
            if k not in option_names:
                common.setdefault(k, []).append(member.name)
    rows = []
    for k, members in common.items():
        row = _key_row(k, KEYS.get(f"members.{k}"))
        rows.append([*row[:4], "all" if len(members) == len(registry) else ", ".join(members), row[4]])
    out.append(table([*headers[:4], "members", "meaning"], rows))
    for member in registry:
        out.append(f"\n### [members.{member.name}]\n\n")
        facts = [f"{member.kind} member of role {member.role}: {member.description}"]
        if member.interval_s:
            facts.append(f"runs every {toml_duration(member.interval_s).strip(chr(34))} unless `interval` says otherwise")
        if member.listen:
            facts.append(f"listens on `{member.listen}` unless `listen` says otherwise")
        facts.append(f"switched off by `enabled = false`, `--disable {member.name}` or `{member.env_disable_var}=1`")
        out.append("; ".join(facts) + ".\n")
        if member.options:
            out.append("\n" + table(["option", "type", "default", "meaning"],
                                    [[code(o.name), o.type, code(d) if not (d := option_default(o)).startswith("(") else d,
                                      o.help] for o in member.options]))
    out.append("\n## Environment\n\n")
    env_rows = [
        [code(ENV_CONFIG), "the config file, when `--config` is not given"],
        *[[code(f"{m.env_disable_var}=1"), f"switches member {m.name} off (`0` leaves it on)"] for m in registry],
        [code(f"{ENV_DISABLE_ENDPOINTS}=A,B"), "switches these endpoints off, by name"],
    ]
    out.append(table(["variable", "does"], env_rows))
    return "".join(out)
