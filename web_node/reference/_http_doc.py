"""docs/http-api.md: every endpoint of every http member, from the registry's Endpoint declarations."""

from __future__ import annotations

from web_node.http import openapi_path
from web_node.members import Member, Registry
from web_node.reference._markdown import code, header, table


def _token_option(member: Member) -> str:
    """The option holding the member's bearer token (the one whose help speaks of it), or ""."""
    return next((o.name for o in member.options if "token" in o.name), "")


def _member_section(member: Member) -> str:
    option = _token_option(member)
    out = [f"\n## {member.name}\n\n"]
    out.append(f"{member.description}; listens on `{member.listen}` by default (`[members.{member.name}] listen`). ")
    kinds = {e.auth for e in member.endpoints}
    if "token" in kinds:
        out.append(f"Endpoints whose auth is *token* need `Authorization: Bearer TOKEN`, where TOKEN is "
                   f"`[members.{member.name}] {option}`, or the token generated into data_dir when that is unset.")
    for other in sorted(kinds - {"token", "none"}):
        out.append(f" Endpoints whose auth is *{other}* need `Authorization: Bearer` with the {other} "
                   f"(see the {member.name} member's module docstring).")
    if kinds == {"none"}:
        out.append("No endpoint needs a token.")
    out.append(f" Machine-readable: [`openapi-{member.name}.json`](openapi-{member.name}.json).\n\n")
    rows = []
    for e in member.endpoints:
        listed = [*e.responses, *([(401, "")] if e.auth != "none" else [])]
        statuses = "; ".join(f"{status} {text}".strip() for status, text in sorted(listed))
        rows.append([code(e.name), e.method, code(openapi_path(e.path)), e.auth,
                     e.description, statuses])
    out.append(table(["name", "method", "path", "auth", "does", "statuses"], rows))
    return "".join(out)


def render(registry: Registry) -> str:
    members = [m for m in registry if m.kind == "http"]
    out = [header("HTTP API", "the endpoints each http member declares in the registry "
                              "(web_node/members/*.py: name, method, path, auth, responses)")]
    out.append(
        "Every endpoint has a name: `disabled_endpoints`, `--disable-endpoint NAME` and `WEB_NODE_DISABLE_ENDPOINTS` "
        "switch it off by that name (it then answers 404 with `{\"error\": \"endpoint NAME is disabled by "
        "configuration\"}`), and metrics carry it in their `endpoint` label. Errors are JSON `{\"error\": \"...\"}` "
        "(the ui's pages answer HTML), never a traceback. Besides the statuses listed per endpoint, any endpoint "
        "may answer 413 when its body is over its limit (`max_body`, `body_limits`), 503 when the database is "
        "unavailable, and an unknown route or method answers 404 or 405. "
        "401 means a missing or wrong token (the answer carries `WWW-Authenticate: Bearer`).\n\n"
        "Every http member also answers `GET /healthz` (no token): `{\"member\", \"group\", \"pid\", \"status\": "
        "\"ok\"}`; it is not a named endpoint and cannot be switched off.\n\n")
    out.append(table(["member", "default listen", "endpoints"],
                     [[m.name, code(m.listen or ""), str(len(m.endpoints))] for m in members]))
    for member in members:
        out.append(_member_section(member))
    return "".join(out)
