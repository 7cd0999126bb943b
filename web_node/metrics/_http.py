"""Per-endpoint HTTP metrics: an ASGI wrapper around each http member's app.

The wrapper names the endpoint of each request *before* the app runs, by
matching method and path against the member's declared endpoints (the same
werkzeug rule syntax quart routes them with), so that all the CPU of the
request, quart's own request parsing included, is charged to the endpoint.
Routes a member did not declare (``/healthz``) and paths that match nothing
are counted under the endpoint ``other``, which keeps the label set bounded.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

from web_node.members import Member
from web_node.metrics._accounting import Account
from web_node.metrics._exposition import labels
from web_node.metrics._histogram import HTTP_BUCKETS, Histogram

#: The endpoint label of requests no declared endpoint matched.
OTHER_ENDPOINT = "other"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class EndpointStats:
    """What one endpoint of one member did so far.

    ``version`` grows by one after each recorded request, once its count and
    latency are both in: the page writer keeps the endpoint's rendered lines
    until it changes (see ProcessMetrics.blocks).
    """

    __slots__ = ("account", "declared", "enabled", "endpoint", "in_flight", "labels", "latency", "member", "rendered",
                 "requests", "version")

    def __init__(self, member: str, endpoint: str, *, declared: bool, enabled: bool) -> None:
        self.member = member
        self.endpoint = endpoint
        self.labels = labels(member=member, endpoint=endpoint)
        self.declared = declared
        self.enabled = enabled
        self.account = Account(member, endpoint)
        self.in_flight = 0
        self.latency = Histogram(HTTP_BUCKETS)
        self.requests: dict[tuple[str, str], int] = {}  # (method, code) -> count
        self.version = 0
        self.rendered: tuple[tuple[int, int, bool, float], bytes, bytes, bytes, bytes, bytes] | None = None  # see _endpoint_lines


class _Router:
    """Declared endpoint name of a request, or None."""

    def __init__(self, member: Member) -> None:
        rules = [Rule(e.path, endpoint=e.name, methods=[e.method]) for e in member.endpoints]
        self._adapter = Map(rules).bind("localhost")
        self._cache: dict[tuple[str, str], str | None] = {}

    def match(self, method: str, path: str) -> str | None:
        key = (method, path)
        try:
            return self._cache[key]
        except KeyError:
            pass
        try:
            name, _ = self._adapter.match(path, method)
        except HTTPException:  # NotFound, MethodNotAllowed, RequestRedirect (a missing trailing slash)
            found = None
        else:
            found = str(name)
        # Paths carry ids (/builds/17): keep the cache small rather than growing with them.
        if len(self._cache) >= 1024:
            self._cache.clear()
        self._cache[key] = found
        return found


class MeteredApp:
    """The ASGI app of one http member with per-endpoint counts, latency, in-flight and CPU."""

    def __init__(self, app: AsgiApp, member: Member, endpoints: dict[str, EndpointStats],
                 var: contextvars.ContextVar[Account | None]) -> None:
        self.app = app
        self.member = member
        self._endpoints = endpoints
        self._other = endpoints[OTHER_ENDPOINT]
        self._router = _Router(member)
        self._var = var

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        name = self._router.match(method, scope.get("path", "/"))
        stats = self._endpoints[name] if name is not None else self._other
        status = 0
        recorded = False
        began = time.perf_counter()

        def record() -> None:
            nonlocal recorded
            recorded = True
            stats.latency.observe(time.perf_counter() - began)
            key = (method if method in _METHODS else "other", str(status))
            stats.requests[key] = stats.requests.get(key, 0) + 1
            stats.version += 1  # last: a page rendered at the old version may hold part of this request, never less

        async def send_and_note(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False) and not recorded:
                record()  # the answer is out: its latency ends here, not when the app's task ends

        # This task (one per request in hypercorn) and the tasks it spawns run on the endpoint's account.
        token = self._var.set(stats.account)
        stats.in_flight += 1
        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            if status == 0:
                status = 500  # the server answers 500 for an app that raised before answering
            raise
        finally:
            stats.in_flight -= 1
            # A request cancelled before it was answered (client gone, shutdown) is not counted:
            # it has no status code to count under.
            if status and not recorded:
                record()
            self._var.reset(token)


def endpoint_table(member: Member, disabled: Collection[str]) -> dict[str, EndpointStats]:
    table = {e.name: EndpointStats(member.name, e.name, declared=True, enabled=e.name not in disabled) for e in member.endpoints}
    table[OTHER_ENDPOINT] = EndpointStats(member.name, OTHER_ENDPOINT, declared=False, enabled=True)
    return table
