"""The request gate: what a request must pass before the app (and its body buffer) sees it.

Installed by ``new_app`` as ASGI middleware in front of quart, because quart
reads every request body into memory as it arrives, whether or not a handler
wants it: a check in a quart handler comes too late. In order, from the head
alone:

1. ``Host`` must be one of the listener's allowed hosts (421 otherwise):
   a page in a browser cannot reach this member through a name that an
   attacker controls (DNS rebinding).
2. The endpoint's bearer token, when it needs one (401).
3. ``Content-Length`` at most the endpoint's body limit (413).
4. A free event-stream slot, for the endpoints that stream (503).

A request refused here is answered with ``Connection: close`` and its body
is never read: hypercorn closes the connection after the answer. What
hypercorn had already read into its short queue to the app (a read or two of
up to 64 KiB) is dropped while the connection closes.

A request let through is still watched: a body without ``Content-Length``
(chunked) that grows past the limit is cut the moment it does (413), and a
body that has not arrived within ``body_timeout`` is cut (408), both with the
connection closed.

Invariant: at most ``max_streams`` calls of stream endpoints run at once per
member, and every slot taken is given back when the call ends, however it ends.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map

from web_node.config import HttpSettings

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: A check of the request head: the request's judged headers -> why it is refused (401), or None.
HeadCheck = Callable[[Mapping[str, str]], Awaitable[str | None]]

#: The body limit of an endpoint that declares none (and of unknown routes).
DEFAULT_MAX_BODY = 1024 * 1024
#: How long a refused request's leftovers are dropped while hypercorn closes the connection.
CLOSE_WAIT_S = 5.0
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_LISTEN_HOSTS = ("0.0.0.0", "::", "[::]", "*", "")


@dataclass
class Bearer:
    """The token guarding ``guarded`` endpoints, and where the caller can find it (``hint``)."""

    token: bytes
    guarded: frozenset[str]
    hint: str
    realm: str


def allowed_host_names(settings: HttpSettings, listen: str | None) -> frozenset[str] | None:
    """The Host names a listener answers; None: any (``"*"``, or a wildcard listen address without a list)."""
    if "*" in settings.allowed_hosts:
        return None
    if settings.allowed_hosts:
        return frozenset(settings.allowed_hosts)
    host = (listen or "").rpartition(":")[0].strip("[]").lower()
    if host in WILDCARD_LISTEN_HOSTS:
        return None
    return frozenset({host, *LOCAL_HOSTS})


def host_name(value: str) -> str:
    """``Host`` without its port, lower case: ``[::1]:8080`` -> ``::1``, ``ci.example.com:443`` -> ``ci.example.com``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    name, sep, port = value.rpartition(":")
    return name if sep and port.isdigit() else value


@dataclass
class RequestGate:
    """One http member's gate; see the module docstring. Built by ``new_app``."""

    member: str
    settings: HttpSettings
    listen: str | None
    url_map: Map
    log: logging.LoggerAdapter[logging.Logger]
    bearer: Bearer | None = None
    #: Body limits declared by the member, per endpoint (the configuration's body_limits win).
    declared_limits: dict[str, int] = field(default_factory=dict)
    #: What to tell a caller whose body is too large for an endpoint, e.g. "split it into several pipelines".
    advice: dict[str, str] = field(default_factory=dict)
    stream_endpoints: set[str] = field(default_factory=set)
    #: Further auth checks of the head, per endpoint: (endpoints, check, realm of the 401).
    head_checks: list[tuple[frozenset[str], HeadCheck, str]] = field(default_factory=list)
    streams_open: int = 0

    def __post_init__(self) -> None:
        self.hosts = allowed_host_names(self.settings, self.listen)

    def body_limit(self, endpoint: str | None) -> int:
        if endpoint is not None:
            if endpoint in self.settings.body_limits:
                return self.settings.body_limits[endpoint]
            if endpoint in self.declared_limits:
                return self.declared_limits[endpoint]
        return self.settings.max_body_bytes or DEFAULT_MAX_BODY

    def largest_body_limit(self) -> int:
        return max([self.body_limit(None), *self.declared_limits.values(), *self.settings.body_limits.values()])

    def wrap(self, app: Any) -> Any:
        """``app`` (quart's ``asgi_app``) behind this gate."""

        async def gated(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
            else:
                await self._handle(app, scope, receive, send)

        return gated

    # ------------------------------------------------------------ one request

    async def _handle(self, app: AsgiApp, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        host = headers.get("host", "")
        if self.hosts is not None and host_name(host) not in self.hosts:
            await answer_and_close(receive, send, 421, (
                f"this {self.member} listener does not answer for host {host!r}; add it to "
                f"[members.{self.member}] allowed_hosts (now: {', '.join(sorted(self.hosts))})"))
            return
        endpoint = self._endpoint(scope)
        refusal = self._check_bearer(endpoint, headers.get("authorization"))
        if refusal is not None:
            assert self.bearer is not None
            await answer_and_close(receive, send, 401, refusal,
                                   [(b"www-authenticate", f'Bearer realm="{self.bearer.realm}"'.encode())])
            return
        for names, check, realm in self.head_checks:
            if endpoint in names and (why := await check(headers)) is not None:
                await answer_and_close(receive, send, 401, why, [(b"www-authenticate", f'Bearer realm="{realm}"'.encode())])
                return
        limit = self.body_limit(endpoint)
        declared = _content_length(headers.get("content-length"))
        if declared is not None and declared > limit:
            await answer_and_close(receive, send, 413, self._too_large(endpoint, limit, _kib(declared)))
            return
        if endpoint in self.stream_endpoints:
            if self.streams_open >= self.settings.max_streams:
                self.log.warning("refused an event stream of %s: %d streams are open, the most "
                                 "[members.%s] max_streams allows", endpoint, self.streams_open, self.member)
                await answer_and_close(receive, send, 503, (
                    f"{self.streams_open} event streams are open on member {self.member}, its limit "
                    f"([members.{self.member}] max_streams); retry later"), [(b"retry-after", b"5")])
                return
            self.streams_open += 1
            try:
                await self._pass(app, scope, receive, send, endpoint, limit)
            finally:
                self.streams_open -= 1
        else:
            await self._pass(app, scope, receive, send, endpoint, limit)

    async def _pass(self, app: AsgiApp, scope: Scope, receive: Receive, send: Send, endpoint: str | None,
                    limit: int) -> None:
        body = _WatchedBody(receive, limit, trio.current_time() + self.settings.body_timeout_s)
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        with trio.CancelScope() as app_scope:
            body.app_scope = app_scope
            await app(scope, body.receive, tracked_send)
        if body.problem is None or started:
            return  # a cut after the answer began: hypercorn closes the unfinished exchange
        if body.problem == "too large":
            await answer_and_close(receive, send, 413, self._too_large(endpoint, limit, "more"))
        else:
            await answer_and_close(receive, send, 408, (
                f"the request body did not arrive within {self.settings.body_timeout_s:g} s "
                f"([members.{self.member}] body_timeout)"))

    def _too_large(self, endpoint: str | None, limit: int, size: str) -> str:
        what = f"endpoint {endpoint}" if endpoint else "this route"
        key = f"body_limits.{endpoint}" if endpoint else "max_body"
        advice = f"; {self.advice[endpoint]}" if endpoint in self.advice else ""
        return (f"the request body ({size}) is larger than the {_kib(limit)} {what} of member {self.member} accepts "
                f"([members.{self.member}] {key}){advice}")

    def _endpoint(self, scope: Scope) -> str | None:
        """The name of the endpoint the request is routed to; None for unknown routes and wrong methods."""
        try:
            rule, _ = self.url_map.bind("gate").match(scope["path"], method=scope["method"], return_rule=True)
        except HTTPException:  # 404, 405, a redirect to the slash-ended path
            return None
        return str(rule.endpoint)

    def _check_bearer(self, endpoint: str | None, header: str | None) -> str | None:
        """Why the request may not call ``endpoint`` (None: it may)."""
        if self.bearer is None or endpoint not in self.bearer.guarded:
            return None
        where = self.bearer.hint
        if not header:
            return f"missing token: send 'Authorization: Bearer <token>' with the {where}"
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return f"the Authorization header must be 'Bearer <token>', not {scheme!r}; the token is the {where}"
        # compare_digest: the time taken does not tell how much of a guess was right.
        if not hmac.compare_digest(given.strip().encode(), self.bearer.token):
            return f"wrong token: the token is the {where}"
        return None


@dataclass
class _WatchedBody:
    """The app's ``receive``: counts body bytes and keeps the body deadline until the body is complete."""

    raw: Receive
    limit: int
    deadline: float
    received: int = 0
    complete: bool = False
    problem: str | None = None  # "too large" | "too slow"
    app_scope: trio.CancelScope | None = None

    async def receive(self) -> Message:
        if self.complete:
            return await self.raw()
        message: Message | None = None
        with trio.move_on_at(self.deadline):
            message = await self.raw()
        if message is None:
            return await self._cut("too slow")
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                return await self._cut("too large")
            self.complete = not message.get("more_body", False)
        else:
            self.complete = True  # http.disconnect: nothing more will come
        return message

    async def _cut(self, problem: str) -> Message:
        self.problem = problem
        assert self.app_scope is not None
        self.app_scope.cancel()
        await trio.lowlevel.checkpoint()  # raises Cancelled: the app ends here
        raise AssertionError("unreachable: the app's scope was cancelled")


async def answer_and_close(receive: Receive, send: Send, status: int, message: str,
                           extra_headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer ``{"error": message}`` with ``Connection: close``; the request's body is not read.

    hypercorn tells the app ``http.disconnect`` once it has closed the
    connection; until then its queue towards the app is emptied here (it holds
    at most what was read before the answer), or its reader could wait on a
    full queue forever.
    """
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *extra_headers]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drop_until_disconnect, receive)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _drop_until_disconnect(receive: Receive) -> None:
    with trio.move_on_after(CLOSE_WAIT_S):
        while (await receive())["type"] != "http.disconnect":
            pass


def _headers(scope: Scope) -> Mapping[str, str]:
    """The request's headers we judge, by lower-case name (the first of each name)."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        if key in ("host", "authorization", "content-length"):
            found.setdefault(key, value.decode("latin-1"))
    return found


def _content_length(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None  # absent or malformed: h11 has refused a malformed one already
    return int(value.strip())


def _kib(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n / 1024:.0f} KiB"

