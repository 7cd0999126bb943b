"""Shared quart-trio plumbing for http members: errors, endpoint switches, auth, server-sent events."""

from __future__ import annotations

from web_node.http._app import ApiError, endpoint, error_response, log_disabled, new_app
from web_node.http._auth import drain_request_body, load_or_create_token, parse_token, require_bearer, resolve_token
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
    "drain_request_body",
    "endpoint",
    "error_response",
    "follow_build_events",
    "load_or_create_token",
    "log_disabled",
    "made_event",
    "new_app",
    "parse_token",
    "require_bearer",
    "resolve_token",
    "resume_after",
    "sse_comment",
    "sse_event",
    "sse_response",
]
