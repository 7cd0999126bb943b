"""One typed, frozen configuration, from a TOML file, then environment, then flags.

Loading happens in two steps so that the node and its children agree exactly:

1. :func:`gather_raw` merges the sources into one plain mapping shaped like
   the TOML file (later sources win);
2. :func:`parse_config` validates that mapping into :class:`Config`.

The node hands the merged mapping to each child, which runs step 2 again.
Every problem is a :class:`~web_node.errors.ConfigError` naming the key, the
value and what would be valid, with a "did you mean" where a close name exists.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from web_node.errors import ConfigError
from web_node.members import Member, Registry
from web_node.units import DURATION_HELP, SIZE_HELP, OutOfRange, parse_duration, parse_size

RestartPolicy = Literal["always", "on-failure", "never"]
RESTART_POLICIES: tuple[RestartPolicy, ...] = ("always", "on-failure", "never")

NODE_KEYS = ("data_dir", "database", "cgroup_root", "metrics_listen", "shutdown_grace", "log_format", "log_level",
             "user")
GROUP_KEYS = (
    "members", "memory_max", "memory_high", "memory_low", "swap_max", "cpu_max", "cpu_weight",
    "pids_max", "restart", "restart_limit", "restart_window",
)
ENV_CONFIG = "WEB_NODE_CONFIG"
MAX_CPU_CORES = 100_000.0
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
ENV_DISABLE_PREFIX = "WEB_NODE_DISABLE_"
ENV_DISABLE_ENDPOINTS = "WEB_NODE_DISABLE_ENDPOINTS"


def default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/web-node"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "web-node")


@dataclass(frozen=True)
class NodeSettings:
    data_dir: str
    database: str
    cgroup_root: str
    metrics_listen: str | None  # None: metrics page switched off ("" in config)
    shutdown_grace_s: float
    log_format: Literal["text", "json"]
    log_level: str
    user: str | None = None  # the unprivileged user group children run as (None: the node's own user)

    @property
    def control_socket(self) -> str:
        return os.path.join(self.data_dir, "node.sock")


#: Keys of every http member's listener, under [members.NAME] (see HttpSettings).
HTTP_KEYS = ("allowed_hosts", "certfile", "keyfile", "max_connections", "max_streams", "header_timeout",
             "body_timeout", "max_body", "body_limits")


@dataclass(frozen=True)
class HttpSettings:
    """An http member's listener: which Host names it answers, TLS, and how much a client may hold.

    ``allowed_hosts`` empty: the listen host, ``localhost``, ``127.0.0.1`` and ``::1``; ``"*"``: any.
    ``max_connections``: connections served at once; more wait in the kernel's backlog.
    ``max_streams``: live event streams (server-sent events) at once; more answer 503.
    ``header_timeout_s``: from connect (or the end of the previous answer) to a complete request head.
    ``body_timeout_s``: from the request head to the end of its body.
    ``max_body_bytes``: the body limit of endpoints without one of their own (None: the member's default);
    ``body_limits``: per endpoint name.
    """

    allowed_hosts: tuple[str, ...] = ()
    certfile: str | None = None
    keyfile: str | None = None
    max_connections: int = 100
    max_streams: int = 32
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_body_bytes: int | None = None
    body_limits: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class MemberSettings:
    name: str
    enabled: bool
    interval_s: float | None
    listen: str | None
    disabled_endpoints: frozenset[str]
    options: Mapping[str, Any] = field(default_factory=dict)
    http: HttpSettings = field(default_factory=HttpSettings)


@dataclass(frozen=True)
class GroupSettings:
    name: str
    members: tuple[str, ...]
    memory_max_bytes: int | None = None
    memory_high_bytes: int | None = None
    memory_low_bytes: int | None = None
    swap_max_bytes: int | None = None
    cpu_max_cores: float | None = None
    cpu_weight: int | None = None
    pids_max: int | None = None
    restart: RestartPolicy = "on-failure"
    restart_limit: int = 5
    restart_window_s: float = 60.0

    def limits_text(self) -> str:
        from web_node.units import format_size

        parts = []
        if self.memory_max_bytes is not None:
            parts.append(f"memory_max={format_size(self.memory_max_bytes)}")
        if self.memory_high_bytes is not None:
            parts.append(f"memory_high={format_size(self.memory_high_bytes)}")
        if self.memory_low_bytes is not None:
            parts.append(f"memory_low={format_size(self.memory_low_bytes)}")
        if self.swap_max_bytes is not None:
            parts.append(f"swap_max={format_size(self.swap_max_bytes)}")
        if self.cpu_max_cores is not None:
            parts.append(f"cpu_max={self.cpu_max_cores:g} cores")
        if self.cpu_weight is not None:
            parts.append(f"cpu_weight={self.cpu_weight}")
        if self.pids_max is not None:
            parts.append(f"pids_max={self.pids_max}")
        return ", ".join(parts) or "no limits"


@dataclass(frozen=True)
class Config:
    node: NodeSettings
    members: Mapping[str, MemberSettings]
    groups: Mapping[str, GroupSettings]  # every group, also those whose members are all disabled
    raw: Mapping[str, Any]  # the merged source mapping, handed to children
    sources: tuple[str, ...] = ()

    def group_of(self, member: str) -> str:
        for group in self.groups.values():
            if member in group.members:
                return group.name
        raise KeyError(member)

    def enabled_members(self, selection: Iterable[str] | None = None) -> list[str]:
        chosen = set(selection) if selection is not None else set(self.members)
        return [name for name, s in self.members.items() if s.enabled and name in chosen]

    def layout(self, selection: Iterable[str] | None = None) -> list[GroupSettings]:
        """The groups to run for ``selection`` (default: every member), each
        trimmed to its enabled, selected members; empty groups are left out."""
        enabled = set(self.enabled_members(selection))
        result = []
        for group in self.groups.values():
            members = tuple(m for m in group.members if m in enabled)
            if members:
                result.append(_replace_members(group, members))
        return result

    def disabled_endpoints(self) -> dict[str, list[str]]:
        return {name: sorted(s.disabled_endpoints) for name, s in self.members.items() if s.disabled_endpoints}


def _replace_members(group: GroupSettings, members: tuple[str, ...]) -> GroupSettings:
    from dataclasses import replace

    return replace(group, members=members)


# ---------------------------------------------------------------- gathering


def read_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass an existing file with --config or {ENV_CONFIG}",
                          key="--config", value=path) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}", key="--config", value=path) from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}", key="--config", value=path) from None
    return data


@dataclass(frozen=True)
class Overrides:
    """What the command line says, applied after file and environment."""

    disable: tuple[str, ...] = ()
    disable_endpoints: tuple[str, ...] = ()
    memory_max: tuple[str, ...] = ()  # "GROUP=SIZE"
    log_format: str | None = None
    data_dir: str | None = None


def gather_raw(
    registry: Registry,
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Overrides = Overrides(),
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Merge file, environment and flags into one TOML-shaped mapping."""
    env = os.environ if env is None else env
    sources: list[str] = []
    path = config_file or env.get(ENV_CONFIG)
    raw: dict[str, Any] = {}
    if path:
        raw = read_config_file(path)
        sources.append(path)
    raw = _deep_copy(raw)

    # Environment: member switches, endpoint switches.
    for var, value in sorted(env.items()):
        if not var.startswith(ENV_DISABLE_PREFIX) or var == ENV_DISABLE_ENDPOINTS:
            continue
        by_var = {m.env_disable_var: m for m in registry}
        member = by_var.get(var)
        if member is None:
            raise ConfigError(
                f"environment variable {var} names no member{_did_you_mean(var, by_var)}; "
                f"valid: {', '.join(by_var)}", key=var, value=value, valid=", ".join(by_var))
        flag = _parse_env_bool(var, value)
        _section(raw, "members", member.name)["enabled"] = not flag
        sources.append(f"env {var}")
    if env.get(ENV_DISABLE_ENDPOINTS):
        names = [n.strip() for n in env[ENV_DISABLE_ENDPOINTS].split(",") if n.strip()]
        _disable_endpoints(raw, registry, names, key=ENV_DISABLE_ENDPOINTS)
        sources.append(f"env {ENV_DISABLE_ENDPOINTS}")

    # Flags.
    for name in overrides.disable:
        _check_member_name(registry, name, key="--disable")
        _section(raw, "members", name)["enabled"] = False
    if overrides.disable_endpoints:
        _disable_endpoints(raw, registry, list(overrides.disable_endpoints), key="--disable-endpoint")
    for item in overrides.memory_max:
        group, sep, size = item.partition("=")
        if not sep or not group or not size:
            raise ConfigError(f"--memory-max {item!r} must look like GROUP=SIZE, e.g. backend=256M",
                              key="--memory-max", value=item, valid="GROUP=SIZE")
        try:
            parse_size(size)
        except ValueError:
            raise ConfigError(f"--memory-max {item!r}: {size!r} is not {SIZE_HELP}", key="--memory-max", value=item,
                              valid=SIZE_HELP) from None
        _section(raw, "groups", group)["memory_max"] = size
    if overrides.log_format:
        _section(raw, "node")["log_format"] = overrides.log_format
    if overrides.data_dir:
        _section(raw, "node")["data_dir"] = overrides.data_dir
    if overrides.disable or overrides.disable_endpoints or overrides.memory_max:
        sources.append("flags")
    return raw, tuple(sources)


def _disable_endpoints(raw: dict[str, Any], registry: Registry, names: list[str], *, key: str) -> None:
    valid = registry.endpoint_names()
    for name in names:
        if name not in valid:
            raise ConfigError(f"{key}: {name!r} is not an endpoint{_did_you_mean(name, valid)}; valid: {', '.join(valid)}",
                              key=key, value=name, valid=", ".join(valid))
        owner = registry.endpoint_owner(name).name
        section = _section(raw, "members", owner)
        existing = list(section.get("disabled_endpoints", []))
        if name not in existing:
            existing.append(name)
        section["disabled_endpoints"] = existing


# ---------------------------------------------------------------- parsing


def load_config(
    registry: Registry,
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Overrides = Overrides(),
) -> Config:
    raw, sources = gather_raw(registry, config_file, env, overrides)
    return parse_config(raw, registry, sources)


def parse_config(raw: Mapping[str, Any], registry: Registry, sources: tuple[str, ...] = ()) -> Config:
    _check_keys("", raw, ("node", "members", "groups"))
    node = _parse_node(_table(raw, "node"))
    members_raw = _table(raw, "members")
    _check_names("members", members_raw, registry.names())
    members = {m.name: _parse_member(m, _table(members_raw, m.name, prefix="members."), registry) for m in registry}
    groups = _parse_groups(_table(raw, "groups"), registry)
    return Config(node=node, members=members, groups=groups, raw=_deep_copy(dict(raw)), sources=sources)


def _parse_node(t: Mapping[str, Any]) -> NodeSettings:
    _check_keys("node", t, NODE_KEYS)
    data_dir = _str(t, "node.data_dir", t.get("data_dir", default_data_dir()))
    database = _str(t, "node.database", t.get("database", f"sqlite:///{os.path.join(data_dir, 'node.db')}"))
    cgroup_root = _str(t, "node.cgroup_root", t.get("cgroup_root", "web-node"))
    if not cgroup_root.strip("/") or ".." in cgroup_root.split("/"):
        raise ConfigError(f"node.cgroup_root = {cgroup_root!r} must name a directory of our own, e.g. \"web-node\"",
                          key="node.cgroup_root", value=cgroup_root)
    metrics = _str(t, "node.metrics_listen", t.get("metrics_listen", "127.0.0.1:9391"))
    if metrics:
        _check_listen("node.metrics_listen", metrics)
    grace = _duration(t, "node.shutdown_grace", t.get("shutdown_grace", "10s"))
    log_format = _choice("node.log_format", t.get("log_format", "text"), ("text", "json"))
    log_level = _choice("node.log_level", str(t.get("log_level", "info")).lower(), ("debug", "info", "warning", "error"))
    user = _str(t, "node.user", t.get("user", ""))
    if user and not USER_NAME.fullmatch(user):
        raise ConfigError(f"node.user = {user!r} is not a user name (letters, digits, '_', '-', '.'), e.g. \"web-node\"",
                          key="node.user", value=user)
    return NodeSettings(
        data_dir=os.path.abspath(data_dir), database=database, cgroup_root=cgroup_root,
        metrics_listen=metrics or None, shutdown_grace_s=grace,
        log_format=log_format, log_level=log_level, user=user or None,  # type: ignore[arg-type]
    )


def _parse_member(member: Member, t: Mapping[str, Any], registry: Registry) -> MemberSettings:
    key = f"members.{member.name}"
    valid = ["enabled"]
    if member.kind == "periodic":
        valid.append("interval")
    if member.kind == "http":
        valid += ["listen", "disabled_endpoints", *HTTP_KEYS]
    valid += [o.name for o in member.options]
    _check_keys(key, t, valid)
    enabled = t.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{key}.enabled = {enabled!r} must be true or false", key=f"{key}.enabled", value=enabled, valid="true, false")
    interval = _duration(t, f"{key}.interval", t["interval"]) if "interval" in t else member.interval_s
    if interval is not None and interval <= 0:
        raise ConfigError(f"{key}.interval = {t.get('interval')!r} must be longer than zero; expected {DURATION_HELP}",
                          key=f"{key}.interval", value=t.get("interval"), valid=DURATION_HELP)
    listen = member.listen
    if "listen" in t:
        listen = _str(t, f"{key}.listen", t["listen"])
        _check_listen(f"{key}.listen", listen)
    disabled = t.get("disabled_endpoints", [])
    if not isinstance(disabled, list) or not all(isinstance(x, str) for x in disabled):
        raise ConfigError(f"{key}.disabled_endpoints = {disabled!r} must be a list of endpoint names",
                          key=f"{key}.disabled_endpoints", value=disabled)
    endpoint_names = [e.name for e in member.endpoints]
    for name in disabled:
        if name not in endpoint_names and name in registry.endpoint_names():
            owner = registry.endpoint_owner(name).name
            raise ConfigError(
                f"{key}.disabled_endpoints: {name!r} is an endpoint of member {owner}, not {member.name}; "
                f"list it under [members.{owner}] disabled_endpoints", key=f"{key}.disabled_endpoints", value=name,
                valid=", ".join(endpoint_names))
        if name not in endpoint_names:
            raise ConfigError(
                f"{key}.disabled_endpoints: {name!r} is not an endpoint of member {member.name}"
                f"{_did_you_mean(name, endpoint_names)}; valid: {', '.join(endpoint_names)}",
                key=f"{key}.disabled_endpoints", value=name, valid=", ".join(endpoint_names))
    options: dict[str, Any] = {}
    for option in member.options:
        if option.name in t:
            try:
                options[option.name] = option.parse(t[option.name])
            except (ValueError, TypeError) as e:
                # A secret (a token) is never repeated in a message: it may be right in all but its length.
                shown = "(hidden)" if _is_secret(option.name) else repr(t[option.name])
                raise ConfigError(f"{key}.{option.name} = {shown} is invalid: {e}",
                                  key=f"{key}.{option.name}", value=shown, valid=option.help) from None
        else:
            options[option.name] = option.default
    http = _parse_http(key, t, endpoint_names) if member.kind == "http" else HttpSettings()
    return MemberSettings(name=member.name, enabled=enabled, interval_s=interval, listen=listen,
                          disabled_endpoints=frozenset(disabled), options=options, http=http)


def _parse_http(key: str, t: Mapping[str, Any], endpoint_names: list[str]) -> HttpSettings:
    hosts = t.get("allowed_hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h.strip() and " " not in h for h in hosts):
        raise ConfigError(f"{key}.allowed_hosts = {hosts!r} must be a list of host names, e.g. [\"ci.example.com\"] "
                          "(or [\"*\"] for any)", key=f"{key}.allowed_hosts", value=hosts)
    tls = {k: _str(t, f"{key}.{k}", t[k]) for k in ("certfile", "keyfile") if k in t}
    if len(tls) == 1:
        given, missing = ("certfile", "keyfile") if "certfile" in tls else ("keyfile", "certfile")
        raise ConfigError(f"{key}.{given} is set but {key}.{missing} is not: TLS needs both files (PEM)",
                          key=f"{key}.{missing}", value=None)
    for k, path in tls.items():
        if not os.path.isfile(path):
            raise ConfigError(f"{key}.{k} = {path!r} is not a readable file", key=f"{key}.{k}", value=path)
    limits = t.get("body_limits", {})
    if not isinstance(limits, Mapping):
        raise ConfigError(f"{key}.body_limits = {limits!r} must be a table of endpoint = size, e.g. {{ SetPipeline = \"2M\" }}",
                          key=f"{key}.body_limits", value=limits)
    for name in limits:
        if name not in endpoint_names:
            raise ConfigError(f"{key}.body_limits: {name!r} is not an endpoint of this member{_did_you_mean(name, endpoint_names)}; "
                              f"valid: {', '.join(endpoint_names)}", key=f"{key}.body_limits", value=name,
                              valid=", ".join(endpoint_names))
    defaults = HttpSettings()
    timeouts = {k: _duration(t, f"{key}.{k}", t[k]) for k in ("header_timeout", "body_timeout") if k in t}
    for k, seconds in timeouts.items():
        if not 0 < seconds <= 3600:
            raise ConfigError(f"{key}.{k} = {t[k]!r} must be longer than zero and at most 1h", key=f"{key}.{k}", value=t[k])
    max_connections = _int(t, f"{key}.max_connections", 1, 100_000)
    max_streams = _int(t, f"{key}.max_streams", 0, 100_000)
    return HttpSettings(
        allowed_hosts=tuple(h.strip().lower() for h in hosts), certfile=tls.get("certfile"), keyfile=tls.get("keyfile"),
        max_connections=defaults.max_connections if max_connections is None else max_connections,
        max_streams=defaults.max_streams if max_streams is None else max_streams,
        header_timeout_s=timeouts.get("header_timeout", defaults.header_timeout_s),
        body_timeout_s=timeouts.get("body_timeout", defaults.body_timeout_s),
        max_body_bytes=_size(f"{key}.max_body", t["max_body"]) if "max_body" in t else None,
        body_limits={name: _size(f"{key}.body_limits.{name}", v) for name, v in limits.items()},
    )


def _parse_groups(t: Mapping[str, Any], registry: Registry) -> dict[str, GroupSettings]:
    owner: dict[str, str] = {}
    parsed: dict[str, GroupSettings] = {}
    for name, section in t.items():
        key = f"groups.{name}"
        if not isinstance(section, Mapping):
            raise ConfigError(f"{key} must be a table like [groups.{name}]", key=key, value=section)
        _check_keys(key, section, GROUP_KEYS)
        if "members" in section:
            members = section["members"]
            if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
                raise ConfigError(f"{key}.members = {members!r} must be a non-empty list of member names",
                                  key=f"{key}.members", value=members, valid=", ".join(registry.names()))
        elif name in registry:
            members = [name]  # [groups.api] without members: limits for api's own group
        else:
            raise ConfigError(
                f"{key} has no members and {name!r} is not a member{_did_you_mean(name, registry.names())}; "
                f"add members = [...] or name a member", key=f"{key}.members", value=None, valid=", ".join(registry.names()))
        for m in members:
            _check_member_name(registry, m, key=f"{key}.members")
            if m in owner:
                raise ConfigError(f"member {m} is in two groups, {owner[m]} and {name}; a member runs in exactly one group",
                                  key=f"{key}.members", value=m)
            owner[m] = name
        parsed[name] = _parse_group_settings(name, tuple(members), section)
    # Every member not placed by the operator is its own group, named after it.
    for member in registry:
        if member.name in owner:
            continue
        if member.name in parsed:
            raise ConfigError(
                f"group {member.name!r} does not contain member {member.name}, whose default group has that name; "
                f"rename the group or add {member.name} to it", key=f"groups.{member.name}", value=member.name)
        parsed[member.name] = GroupSettings(name=member.name, members=(member.name,))
    order = {m: i for i, m in enumerate(registry.names())}
    return dict(sorted(parsed.items(), key=lambda kv: min(order[m] for m in kv[1].members)))


def _parse_group_settings(name: str, members: tuple[str, ...], t: Mapping[str, Any]) -> GroupSettings:
    key = f"groups.{name}"
    if not all(c.isalnum() or c in "-_" for c in name):
        raise ConfigError(f"group name {name!r} may hold only letters, digits, '-' and '_' (it names a cgroup directory)",
                          key=key, value=name)
    sizes = {k: _size(f"{key}.{k}", t[k]) for k in ("memory_max", "memory_high", "memory_low", "swap_max") if k in t}
    cpu_max = None
    if "cpu_max" in t:
        try:
            cpu_max = float(t["cpu_max"])
        except (TypeError, ValueError, OverflowError):
            cpu_max = -1.0
        if not 0 < cpu_max <= MAX_CPU_CORES:  # also refuses "inf" and "nan", which float() accepts
            raise ConfigError(f"{key}.cpu_max = {t['cpu_max']!r} must be a positive number of cores, at most "
                              f"{MAX_CPU_CORES:g}, e.g. \"0.5\"", key=f"{key}.cpu_max", value=t["cpu_max"],
                              valid="a positive number of cores")
    cpu_weight = _int(t, f"{key}.cpu_weight", 1, 10000)
    pids_max = _int(t, f"{key}.pids_max", 1, 4194304)
    restart = _choice(f"{key}.restart", t.get("restart", "on-failure"), RESTART_POLICIES)
    restart_limit = _int(t, f"{key}.restart_limit", 0, 1_000_000)
    window = _duration(t, f"{key}.restart_window", t["restart_window"]) if "restart_window" in t else 60.0
    high, mx = sizes.get("memory_high"), sizes.get("memory_max")
    if high is not None and mx is not None and high > mx:
        raise ConfigError(f"{key}.memory_high ({t['memory_high']}) is above memory_max ({t['memory_max']}); "
                          "memory_high must be at most memory_max", key=f"{key}.memory_high", value=t["memory_high"])
    return GroupSettings(
        name=name, members=members,
        memory_max_bytes=mx, memory_high_bytes=high,
        memory_low_bytes=sizes.get("memory_low"), swap_max_bytes=sizes.get("swap_max"),
        cpu_max_cores=cpu_max, cpu_weight=cpu_weight, pids_max=pids_max,
        restart=restart,  # type: ignore[arg-type]
        restart_limit=5 if restart_limit is None else restart_limit, restart_window_s=window,
    )


# ---------------------------------------------------------------- helpers


def _did_you_mean(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(where: str, t: Mapping[str, Any], valid: Iterable[str]) -> None:
    valid = list(valid)
    for k in t:
        if k not in valid:
            full = f"{where}.{k}" if where else k
            raise ConfigError(
                f"unknown key {full}{_did_you_mean(k, valid)}; valid keys{' in [' + where + ']' if where else ''}: {', '.join(valid)}",
                key=full, value=t[k], valid=", ".join(valid))


def _check_names(where: str, t: Mapping[str, Any], valid: list[str]) -> None:
    for k in t:
        if k not in valid:
            raise ConfigError(f"[{where}.{k}]: {k!r} is not a member{_did_you_mean(k, valid)}; valid: {', '.join(valid)}",
                              key=f"{where}.{k}", value=k, valid=", ".join(valid))


def _check_member_name(registry: Registry, name: str, *, key: str) -> None:
    if name not in registry:
        valid = registry.names()
        raise ConfigError(f"{key}: {name!r} is not a member{_did_you_mean(name, valid)}; valid: {', '.join(valid)}",
                          key=key, value=name, valid=", ".join(valid))


def _table(t: Mapping[str, Any], name: str, prefix: str = "") -> Mapping[str, Any]:
    value = t.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{prefix}{name} must be a table like [{prefix}{name}], got {value!r}", key=prefix + name, value=value)
    return value


def _section(raw: dict[str, Any], *path: str) -> dict[str, Any]:
    t = raw
    for p in path:
        t = t.setdefault(p, {})
    return t


def _is_secret(option: str) -> bool:
    """Options named ``token`` or ``*_token`` hold credentials (api ``token``, gateway ``worker_token``)."""
    return option == "token" or option.endswith("_token")


def _str(t: Mapping[str, Any], key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key} = {value!r} must be a string", key=key, value=value)
    return value


def _check_listen(key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit() and len(port) <= 5) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key} = {value!r} must be HOST:PORT, e.g. 127.0.0.1:8080", key=key, value=value, valid="HOST:PORT")


def _duration(t: Mapping[str, Any], key: str, value: Any) -> float:
    try:
        return parse_duration(value)
    except OutOfRange as e:
        raise ConfigError(f"{key} = {value!r} is longer than the maximum of {e.maximum}", key=key, value=value,
                          valid=f"{DURATION_HELP}, at most {e.maximum}") from None
    except ValueError:
        raise ConfigError(f"{key} = {value!r} is not {DURATION_HELP}", key=key, value=value, valid=DURATION_HELP) from None


def _size(key: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().lower() == "max":
        raise ConfigError(f"{key} = 'max': leave the key out for no limit", key=key, value=value, valid=SIZE_HELP)
    try:
        return parse_size(value)
    except OutOfRange as e:
        raise ConfigError(f"{key}: {e}", key=key, value=value, valid=f"{SIZE_HELP}, at most {e.maximum}") from None
    except ValueError:
        raise ConfigError(f"{key} = {value!r} is not {SIZE_HELP}", key=key, value=value, valid=SIZE_HELP) from None


def _int(t: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    name = key.rsplit(".", 1)[-1]
    if name not in t:
        return None
    value = t[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key} = {value!r} must be a whole number from {low} to {high}", key=key, value=value,
                          valid=f"{low}..{high}")
    return value


def _choice(key: str, value: Any, valid: Iterable[str]) -> str:
    valid = list(valid)
    if value not in valid:
        raise ConfigError(f"{key} = {value!r} is not one of {', '.join(valid)}{_did_you_mean(str(value), valid)}",
                          key=key, value=value, valid=", ".join(valid))
    return str(value)


def _parse_env_bool(var: str, value: str) -> bool:
    v = value.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"environment variable {var}={value!r} must be 1 or 0", key=var, value=value, valid="1, 0, true, false")


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
