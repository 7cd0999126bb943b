"""docs/README.md: the index of the generated reference."""

from __future__ import annotations

from web_node.reference._markdown import header

_WHAT = {
    "configuration.md": "every config key: type, default, environment and flag twins; each member's options",
    "cli.md": "every `web-node` command and flag",
    "http-api.md": "every endpoint of every http member: method, path, auth, statuses",
    "metrics.md": "every metric: name, type, labels, meaning",
}


def render(files: dict[str, str]) -> str:
    out = [header("web-node reference", "the code; see web_node/reference/")]
    out.append("What operators, scripts and dashboards rely on, generated from the code it describes:\n\n")
    for name, what in _WHAT.items():
        out.append(f"- [{name.removesuffix('.md')}]({name}): {what}\n")
    for name in sorted(n for n in files if n.startswith("openapi-")):
        member = name.removeprefix("openapi-").removesuffix(".json")
        out.append(f"- [{name}]({name}): OpenAPI 3 document of the {member} member"
                   + (" (also served at `GET /api/v1/openapi.json`)" if member == "api" else "") + "\n")
    return "".join(out)
