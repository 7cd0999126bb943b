"""Shared quart-trio plumbing for http members: errors, endpoint switches, auth."""

from __future__ import annotations

from web_node.http._app import ApiError, endpoint, error_response, log_disabled, new_app

__all__ = ["ApiError", "endpoint", "error_response", "log_disabled", "new_app"]
