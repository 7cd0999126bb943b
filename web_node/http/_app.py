"""The quart-trio app every http member starts from.

``new_app`` gives JSON errors (never a traceback), a ``/healthz`` check, and
``endpoint`` — the decorator through which every named endpoint is routed, so
that switching one off by name works the same on every member.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from quart import jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from web_node.errors import Conflict, NotFound, StoreError

if TYPE_CHECKING:
    from web_node.members import MemberContext

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])

ENDPOINT_ATTR = "web_node_endpoint"


class ApiError(Exception):
    """Raised by a handler to answer ``{"error": message}`` with a 4xx code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> Any:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def new_app(ctx: MemberContext) -> QuartTrio:
    # No default static folder: it would serve ./static of the working directory without a token.
    app = QuartTrio(f"web_node.{ctx.member.name}", static_folder=None)
    app.config["JSON_SORT_KEYS"] = False
    # hypercorn + quart-trio: answering before the body is read can stall the connection's next request.
    from web_node.http._auth import drain_request_body

    drain_request_body(app)
    log = ctx.log

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
        log.error("store error on %s %s: %s", request.method, request.path, e)
        return error_response(503, f"the database is unavailable: {e}")

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
