"""What a member is: its name, role, kind, defaults, endpoints, options and work.

A member declares *what* it does; the runner decides *how* it runs:

- ``http`` members give ``make_app``; the runner serves the app with hypercorn
  on the member's listen address (or on a socket the node bound for it);
- ``periodic`` members give ``tick``; the runner calls it every interval,
  skips it while the member is paused, and counts each run's outcome;
- ``daemon`` members give ``run``, a long-lived coroutine started with
  ``nursery.start`` semantics (it calls ``task_status.started()`` once ready).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from web_node.members._context import MemberContext

Role = Literal["ui", "api", "backend", "gateway"]
Kind = Literal["http", "periodic", "daemon"]
ROLES: tuple[Role, ...] = ("ui", "api", "backend", "gateway")
KINDS: tuple[Kind, ...] = ("http", "periodic", "daemon")

_MEMBER_NAME = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")
_ENDPOINT_NAME = re.compile(r"[A-Z][A-Za-z0-9]*")

# An ASGI application; typed loosely because quart's own type is not needed here.
AsgiApp = Any
Tick = Callable[["MemberContext"], Awaitable[None]]
MakeApp = Callable[["MemberContext"], Awaitable[AsgiApp]]
RunDaemon = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Endpoint:
    """One named HTTP endpoint; the name is what operators switch off."""

    name: str
    method: str
    path: str  # quart rule syntax, e.g. /api/v1/pipelines/<pipeline>
    description: str = ""
    #: Who may call it: "token" (the member's bearer token; require_bearer guards these), "none", or the
    #: name of another credential the member checks itself (e.g. "worker credential"), as the docs show it.
    auth: str = "token"
    #: The statuses this endpoint answers itself, with what each means (docs/http-api.md and the OpenAPI
    #: document are made from these; 401 for auth and 404 for a disabled endpoint are added there).
    responses: tuple[tuple[int, str], ...] = ((200, "OK"),)

    def __post_init__(self) -> None:
        if not _ENDPOINT_NAME.fullmatch(self.name):
            raise ValueError(f"endpoint name {self.name!r} must be CamelCase, like ListAllJobs")
        if self.method not in {"GET", "POST", "PUT", "DELETE", "PATCH"}:
            raise ValueError(f"endpoint {self.name}: unsupported method {self.method!r}")


@dataclass(frozen=True)
class Option:
    """A member-specific config key under ``[members.<name>]``.

    ``parse`` turns the raw TOML value into the typed one and raises
    ValueError with a message naming what is valid.
    """

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    type: str = "value"  # what to write in TOML, as docs/configuration.md names it: "duration", "string", ...


@dataclass(frozen=True)
class Member:
    name: str
    role: Role
    kind: Kind
    description: str
    interval_s: float | None = None
    listen: str | None = None
    endpoints: tuple[Endpoint, ...] = ()
    options: tuple[Option, ...] = ()
    tick: Tick | None = None
    make_app: MakeApp | None = None
    run: RunDaemon | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _MEMBER_NAME.fullmatch(self.name):
            raise ValueError(f"member name {self.name!r} must be lower-case letters, digits and '-'")
        if self.role not in ROLES:
            raise ValueError(f"member {self.name}: role {self.role!r} is not one of {', '.join(ROLES)}")
        if self.kind == "http" and (self.make_app is None or self.listen is None):
            raise ValueError(f"member {self.name}: an http member needs make_app and a default listen address")
        if self.kind == "periodic" and (self.tick is None or not self.interval_s):
            raise ValueError(f"member {self.name}: a periodic member needs tick and a positive interval_s")
        if self.kind == "daemon" and self.run is None:
            raise ValueError(f"member {self.name}: a daemon member needs run")
        names = [e.name for e in self.endpoints]
        if len(names) != len(set(names)):
            raise ValueError(f"member {self.name}: endpoint names repeat: {names}")
        option_names = [o.name for o in self.options]
        if set(option_names) & RESERVED_MEMBER_KEYS or len(option_names) != len(set(option_names)):
            raise ValueError(f"member {self.name}: options repeat or shadow the common keys {sorted(RESERVED_MEMBER_KEYS)}")

    @property
    def env_disable_var(self) -> str:
        """``WEB_NODE_DISABLE_BUILD_TRACKER`` for ``build-tracker``."""
        return "WEB_NODE_DISABLE_" + self.name.upper().replace("-", "_")

    def endpoint(self, name: str) -> Endpoint:
        for e in self.endpoints:
            if e.name == name:
                return e
        raise KeyError(name)


# Keys every member section accepts; which apply depends on the kind.
RESERVED_MEMBER_KEYS = frozenset({"enabled", "interval", "listen", "disabled_endpoints"})
