"""The quart-trio app every http member starts from.

``new_app`` gives JSON errors (never a traceback), a ``/healthz`` check, and
``endpoint`` — the decorator through which every named endpoint is routed, so
that switching one off by name works the same on every member.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from quart import jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter, Map

from web_node.errors import Conflict, NotFound, StoreError
from web_node.http._gate import HeadCheck, RequestGate

if TYPE_CHECKING:
    from web_node.members import MemberContext

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])

ENDPOINT_ATTR = "web_node_endpoint"
GATE_KEY = "web_node_gate"
#: quart's own default body cap; the gate's limits are below it unless configured above.
QUART_MAX_BODY = 16 * 1024 * 1024


class ApiError(Exception):
    """Raised by a handler to answer ``{"error": message}`` with a 4xx code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Int64Converter(IntegerConverter):
    """``<int:...>`` as the store's ids are: ASCII digits, at most 2**63 - 1 (a 64-bit column).

    A longer number, or ``１`` (a digit int() would take), matches no route and answers 404,
    instead of overflowing the database driver into a 500."""

    regex = r"[0-9]+"

    def __init__(self, map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", 2**63 - 1)
        super().__init__(map, *args, **kwargs)


def error_response(status: int, message: str) -> Any:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def new_app(ctx: MemberContext) -> QuartTrio:
    # No default static folder: it would serve ./static of the working directory without a token.
    app = QuartTrio(f"web_node.{ctx.member.name}", static_folder=None)
    app.url_map.converters["int"] = Int64Converter  # before any route is added: rules bind converters then
    app.config["JSON_SORT_KEYS"] = False
    # hypercorn + quart-trio: answering before the body is read can stall the connection's next request.
    from web_node.http._auth import drain_request_body

    drain_request_body(app)
    log = ctx.log
    gate = RequestGate(ctx.member.name, ctx.settings.http, ctx.settings.listen, app.url_map, log)
    app.extensions[GATE_KEY] = gate
    app.asgi_app = gate.wrap(app.asgi_app)  # type: ignore[method-assign]  # quart's documented middleware hook
    app.config["BODY_TIMEOUT"] = ctx.settings.http.body_timeout_s
    app.config["MAX_CONTENT_LENGTH"] = max(QUART_MAX_BODY, gate.largest_body_limit())

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"member": ctx.member.name, "group": ctx.group, "pid": os.getpid(), "status": "ok"}

    @app.errorhandler(ApiError)
    async def api_error(e: ApiError) -> Any:
        return error_response(e.status, e.message)

    @app.errorhandler(NotFound)
    async def not_found(e: NotFound) -> Any:
        return error_response(404, str(e))

    @app.errorhandler(Conflict)
    async def conflict(e: Conflict) -> Any:
        return error_response(409, str(e))

    @app.errorhandler(StoreError)
    async def store_error(e: StoreError) -> Any:
        # The detail (host, file, driver message) is for the operator's log, not for every client.
        log.error("store unavailable on %s %s (answered 503): %s", request.method, request.path, e)
        return error_response(503, f"store unavailable: member {ctx.member.name} could not use its database; "
                                   "retry later (the node's log says why)")

    @app.errorhandler(HTTPException)
    async def http_error(e: HTTPException) -> Any:
        return error_response(e.code or 500, e.description or e.name)

    @app.errorhandler(Exception)
    async def unexpected(e: Exception) -> Any:
        log.error("unexpected error on %s %s", request.method, request.path, exc_info=e)
        return error_response(500, f"internal error in member {ctx.member.name}: {type(e).__name__}; see the node's log")

    return app


def endpoint(app: QuartTrio, ctx: MemberContext, name: str) -> Callable[[Handler], Handler]:
    """Route the handler for the member's declared endpoint ``name``.

    Method and path come from the member's declaration, so the registry stays
    the one place that names endpoints. A disabled endpoint answers 404 with
    a message saying so, and its handler never runs.
    """
    declared = ctx.member.endpoint(name)
    disabled = name in ctx.settings.disabled_endpoints

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if disabled:
                return error_response(404, f"endpoint {name} is disabled by configuration")
            return await handler(*args, **kwargs)

        setattr(wrapper, ENDPOINT_ATTR, name)
        app.add_url_rule(declared.path, endpoint=name, view_func=wrapper, methods=[declared.method])
        return handler

    return decorate


def log_disabled(ctx: MemberContext, logger: logging.LoggerAdapter[logging.Logger] | None = None) -> None:
    disabled = sorted(ctx.settings.disabled_endpoints)
    if disabled:
        (logger or ctx.log).info("endpoints disabled by configuration: %s", ", ".join(disabled))


def gate_of(app: QuartTrio) -> RequestGate:
    """The request gate ``new_app`` put in front of ``app``."""
    gate = app.extensions[GATE_KEY]
    assert isinstance(gate, RequestGate)
    return gate


def limit_body(app: QuartTrio, endpoint_name: str, max_bytes: int, *, advice: str = "") -> None:
    """Give ``endpoint_name`` its own body limit (instead of 1 MiB); ``[members.X] body_limits`` still wins.

    ``advice`` ends the 413's message: what the caller can do instead."""
    gate = gate_of(app)
    gate.declared_limits[endpoint_name] = max_bytes
    if advice:
        gate.advice[endpoint_name] = advice
    app.config["MAX_CONTENT_LENGTH"] = max(QUART_MAX_BODY, gate.largest_body_limit())


def count_streams(app: QuartTrio, *endpoint_names: str) -> None:
    """Count calls of these endpoints (event streams) against ``[members.X] max_streams``; beyond it they answer 503."""
    gate_of(app).stream_endpoints.update(endpoint_names)


def check_before_body(app: QuartTrio, endpoint_names: Iterable[str], check: HeadCheck, *, realm: str) -> None:
    """Refuse (401, connection closed, body unread) calls of these endpoints that ``check`` says no to.

    For credentials other than the member's one bearer token (see ``require_bearer``), such as a
    worker's own; ``check`` gets the request's ``authorization`` header among others."""
    gate_of(app).head_checks.append((frozenset(endpoint_names), check, realm))
