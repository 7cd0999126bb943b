"""An OpenAPI 3 document of one http member, made from its declared endpoints.

The api member serves its own at ``GET /api/v1/openapi.json``; docs/ keeps
a copy per http member (web_node.reference). Everything comes from the :class:`Endpoint`
declarations (method, path, auth, responses), so the document changes when
they do. Statuses every endpoint may answer are added here: 401 when it
needs the token, 404 when it is switched off by configuration.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from web_node.members import Endpoint, Member

OPENAPI_VERSION = "3.0.3"

#: Quart/werkzeug rule parameters: ``<name>`` or ``<converter:name>``.
_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")
_CONVERTER_TYPES = {"int": "integer", "float": "number"}

#: Answers every declared endpoint may give besides its own (see Endpoint.responses).
UNAUTHORIZED = (401, "no token, another scheme than Bearer, or a wrong token (WWW-Authenticate: Bearer)")
DISABLED = (404, "the endpoint is disabled by configuration")
SSE_MARK = "text/event-stream"


def openapi_path(rule: str) -> str:
    """``/api/v1/builds/<int:build_id>`` as OpenAPI writes it: ``/api/v1/builds/{build_id}``."""
    return _PARAM.sub(lambda m: "{" + m.group(2) + "}", rule)


def responses_of(endpoint: Endpoint) -> list[tuple[int, str]]:
    """Every status the endpoint answers, with its meaning, by code."""
    found = dict(endpoint.responses)
    if endpoint.auth != "none":
        found.setdefault(*UNAUTHORIZED)
    if DISABLED[0] in found:
        found[DISABLED[0]] = f"{found[DISABLED[0]]}, or {DISABLED[1]}"
    else:
        found[DISABLED[0]] = DISABLED[1]
    return sorted(found.items())


def _response(code: int, text: str) -> dict[str, Any]:
    if code == 204:
        return {"description": text}
    if code < 400:
        if text.startswith(SSE_MARK):
            return {"description": text, "content": {SSE_MARK: {"schema": {"type": "string"}}}}
        return {"description": text, "content": {"application/json": {"schema": {"type": "object"}}}}
    return {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": _CONVERTER_TYPES.get(converter or "", "string")}}
                  for converter, name in _PARAM.findall(endpoint.path)]
    operation: dict[str, Any] = {"operationId": endpoint.name, "summary": endpoint.description}
    if parameters:
        operation["parameters"] = parameters
    operation["responses"] = {str(code): _response(code, text) for code, text in responses_of(endpoint)}
    operation["security"] = [] if endpoint.auth == "none" else [{scheme_name(endpoint.auth): []}]
    return operation


def scheme_name(auth: str) -> str:
    """The security scheme of an ``Endpoint.auth`` word: ``worker credential`` -> ``worker_credential``."""
    return re.sub(r"\W+", "_", auth).strip("_")


def openapi_document(member: Member, version: str) -> dict[str, Any]:
    """The OpenAPI 3 document of ``member``'s declared endpoints (JSON-ready)."""
    paths: dict[str, dict[str, Any]] = {}
    schemes: dict[str, Any] = {}
    for endpoint in member.endpoints:
        paths.setdefault(openapi_path(endpoint.path), {})[endpoint.method.lower()] = _operation(endpoint)
        if endpoint.auth != "none":
            what = f"the {member.name} member's bearer token" if endpoint.auth == "token" else f"the {endpoint.auth}"
            schemes[scheme_name(endpoint.auth)] = {"type": "http", "scheme": "bearer",
                                                   "description": f"Authorization: Bearer <{what}>"}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": f"web-node {member.name}", "version": version,
                 "description": f"{member.description}. Errors are JSON objects {{\"error\": \"...\"}}."},
        "paths": paths,
        "components": {
            "securitySchemes": schemes,
            "schemas": {"Error": {"type": "object", "required": ["error"],
                                  "properties": {"error": {"type": "string"}}}},
        },
    }
