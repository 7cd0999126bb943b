"""Shared quart-trio plumbing for http members: errors, endpoint switches, auth, server-sent events,
and the bounded server (request gate, connection cap, timeouts, TLS)."""

from __future__ import annotations

from web_node.http._app import ApiError, check_before_body, count_streams, endpoint, error_response, limit_body, log_disabled, new_app
from web_node.http._auth import drain_request_body, load_or_create_token, parse_token, require_bearer, resolve_token
from web_node.http._openapi import openapi_document, openapi_path
from web_node.http._serve import serve, server_config
from web_node.http._sse import (
    FollowTiming,
    follow_build_events,
    made_event,
    resume_after,
    sse_comment,
    sse_event,
    sse_response,
)

__all__ = [
    "ApiError",
    "FollowTiming",
    "check_before_body",
    "count_streams",
    "drain_request_body",
    "endpoint",
    "error_response",
    "follow_build_events",
    "limit_body",
    "load_or_create_token",
    "log_disabled",
    "made_event",
    "new_app",
    "openapi_document",
    "openapi_path",
    "parse_token",
    "require_bearer",
    "resolve_token",
    "resume_after",
    "serve",
    "server_config",
    "sse_comment",
    "sse_event",
    "sse_response",
]
