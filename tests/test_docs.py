"""docs/ is generated from the code (``make docs``): these tests fail when the two disagree,
when a config key has no meaning written down, when a documented default is not the
parser's, and when the README or docs/ link outside the repository."""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from web_node.config import parse_config
from web_node.config_keys import KEYS
from web_node.members import default_registry
from web_node.reference import REGENERATE, generate, stale
from web_node.reference._config_doc import accepted_keys, option_default

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_docs_match_the_code() -> None:
    files = generate()
    differ = stale(str(DOCS), files)
    detail = ""
    for name in differ[:1]:
        path = DOCS / name
        old = path.read_text().splitlines() if path.exists() else []
        new = files.get(name, "").splitlines()
        detail = "\n".join(list(difflib.unified_diff(old, new, f"docs/{name}", "generated", lineterm="", n=1))[:40])
    assert not differ, (f"docs/ does not match the code: {', '.join(differ)}. Run `{REGENERATE}` and commit docs/.\n"
                        f"{detail}")


def test_the_docs_name_every_endpoint_metric_and_command() -> None:
    """The generator reaches everything (not only that files and generator agree)."""
    files = generate()
    registry = default_registry()
    for member in registry:
        for endpoint in member.endpoints:
            assert f"`{endpoint.name}`" in files["http-api.md"], endpoint.name
        assert f"web-node {member.name}" in files["cli.md"] or f", {member.name}" in files["cli.md"], member.name
        assert f"[members.{member.name}]" in files["configuration.md"]
    for command in ("members", "plan", "status", "top", "quickstart", "worker"):
        assert f"## web-node {command}\n" in files["cli.md"], command
    assert "`web_node_group_memory_usage_bytes` | gauge | group |" in files["metrics.md"]
    assert "`web_node_http_requests_total` | counter | member, endpoint, method, code |" in files["metrics.md"]
    assert "none seen" not in files["metrics.md"], "a metric family got no sample in reference/_metrics_doc.py"


def test_every_config_key_the_parser_accepts_is_documented() -> None:
    registry = default_registry()
    accepted: set[str] = set()
    for section, keys in accepted_keys(registry).items():
        options = {o.name for o in registry.get(section.split(".", 1)[1]).options} if section.startswith("members.") else set()
        accepted |= {f"{section.split('.')[0]}.{k}" for k in keys if k not in options}
    missing = sorted(accepted - set(KEYS))
    assert not missing, f"config keys without a meaning: {', '.join(missing)}; add them to KEYS in web_node/config_keys.py"
    gone = sorted(set(KEYS) - accepted)
    assert not gone, f"web_node/config_keys.py documents keys the parser does not accept: {', '.join(gone)}"
    for member in registry:
        for option in member.options:
            assert option.help and option.type != "value", f"option {member.name}.{option.name} needs a help and a type"


def _toml(text: str) -> Any:
    return tomllib.loads(f"v = {text}")["v"]


def _cases() -> list[tuple[str, dict[str, Any], str]]:
    """(key, raw config with the key set to its documented default, what to compare) for every TOML default."""
    registry = default_registry()
    keys = accepted_keys(registry)
    cases: list[tuple[str, dict[str, Any], str]] = []
    for name, doc in KEYS.items():
        if not doc.default_is_toml:
            continue
        section, key = name.split(".")
        if section == "members":
            for member in registry:
                if key in keys[f"members.{member.name}"]:
                    cases.append((f"members.{member.name}.{key}", {"members": {member.name: {key: _toml(doc.default)}}},
                                  f"members.{member.name}"))
        elif section == "groups":
            cases.append((name, {"groups": {"api": {key: _toml(doc.default)}}}, "groups.api"))
        else:
            cases.append((name, {section: {key: _toml(doc.default)}}, section))
    for member in registry:
        for option in member.options:
            text = option_default(option)
            if not text.startswith("("):
                cases.append((f"members.{member.name}.{option.name}", {"members": {member.name: {option.name: _toml(text)}}},
                              f"members.{member.name}"))
    return cases


def _part(config: Any, where: str) -> Any:
    section, _, name = where.partition(".")
    return getattr(config, section)[name] if name else getattr(config, section)


CASES = _cases()


@pytest.mark.parametrize(("key", "raw", "where"), CASES, ids=[c[0] for c in CASES])
def test_a_key_set_to_its_documented_default_changes_nothing(key: str, raw: dict[str, Any], where: str) -> None:
    registry = default_registry()
    assert _part(parse_config(raw, registry), where) == _part(parse_config({}, registry), where), (
        f"{key}: the default docs/configuration.md states is not the one the parser applies; "
        "fix web_node/config_keys.py (or the option's default), then run `make docs`")


def _links(path: Path) -> list[str]:
    return MARKDOWN_LINK.findall(path.read_text())


@pytest.mark.parametrize("path", [REPO / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_stay_inside_the_repository(path: Path) -> None:
    text = path.read_text()
    assert "../shared" not in text, f"{path.name} refers to the steering folder outside the repository"
    for target in _links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a web address or an anchor of this page
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(REPO), f"{path.name} links to {target}, outside the repository"
        assert resolved.exists(), f"{path.name} links to {target}, which does not exist"


def test_the_readme_points_at_the_reference() -> None:
    targets = _links(REPO / "README.md")
    for name in ("docs/README.md", "docs/configuration.md", "docs/cli.md", "docs/http-api.md", "docs/metrics.md"):
        assert name in targets, f"README.md does not link to {name}"
