"""The OpenAPI 3 documents made from the members' endpoint declarations: valid by a maintained
validator (openapi-spec-validator), and served by a real ``web-node api --in-process`` without a token."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from node_helpers import NodeProcess, free_port
from openapi_spec_validator import validate

from web_node.http import openapi_document, openapi_path
from web_node.members import Member, default_registry
from web_node.members.api import MEMBER as API
from web_node.members.api import version

HTTP_MEMBERS = [m for m in default_registry() if m.kind == "http"]


@pytest.mark.parametrize("member", HTTP_MEMBERS, ids=lambda m: m.name)
def test_each_http_members_document_is_valid_openapi_3(member: Member) -> None:
    document = openapi_document(member, version())
    validate(document)  # raises OpenAPIValidationError naming the bad part
    operations = {op["operationId"]: (method.upper(), path, op)
                  for path, methods in document["paths"].items() for method, op in methods.items()}
    assert set(operations) == {e.name for e in member.endpoints}
    for e in member.endpoints:
        method, path, op = operations[e.name]
        assert (method, path) == (e.method, openapi_path(e.path))
        assert {int(code) for code in op["responses"]} >= {code for code, _ in e.responses}
        assert ("401" in op["responses"]) == (e.auth != "none")
        assert (op.get("security") == []) == (e.auth == "none")


def test_a_broken_document_is_refused_by_the_validator() -> None:
    """The validator is no rubber stamp: a path parameter the document does not declare is an error."""
    document = openapi_document(API, version())
    del document["paths"]["/api/v1/builds/{build_id}"]["get"]["parameters"]
    with pytest.raises(Exception, match="build_id"):
        validate(document)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, str]]:
    home = tmp_path_factory.mktemp("openapi")
    port = free_port()
    config = home / "config.toml"
    config.write_text(f'[node]\ndata_dir = "{home / "data"}"\nmetrics_listen = ""\nshutdown_grace = "1s"\n'
                      f'[members.api]\nlisten = "127.0.0.1:{port}"\ntoken = "openapi-test-token-0123456789"\n')
    node = NodeProcess(["api", "--in-process", "--config", str(config)], cwd=Path(home))
    try:
        base = f"http://127.0.0.1:{port}"
        node.wait_http(f"{base}/api/v1/info")
        yield node, base
    finally:
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
        node.stop()


def test_the_api_serves_its_document_without_a_token(api: tuple[NodeProcess, str]) -> None:
    node, base = api
    response = httpx.get(f"{base}/api/v1/openapi.json", timeout=10.0)
    assert response.status_code == 200, f"{response.status_code} {response.text}\n{node.log()}"
    assert response.headers["content-type"].startswith("application/json")
    served: dict[str, Any] = response.json()
    validate(served)
    assert served == openapi_document(API, version())
    # What it says about auth is what the api does: an operation with a 401 answers 401 without a token.
    build = httpx.get(f"{base}/api/v1/builds/1", timeout=10.0)
    assert build.status_code == 401 and "401" in served["paths"]["/api/v1/builds/{build_id}"]["get"]["responses"]


def test_the_document_can_be_switched_off_like_any_endpoint(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\nmetrics_listen = ""\nshutdown_grace = "1s"\n'
                      f'[members.api]\nlisten = "127.0.0.1:{port}"\n')
    node = NodeProcess(["api", "--in-process", "--config", str(config), "--disable-endpoint", "GetOpenAPI"], cwd=tmp_path)
    try:
        node.wait_http(f"http://127.0.0.1:{port}/api/v1/info")
        response = httpx.get(f"http://127.0.0.1:{port}/api/v1/openapi.json", timeout=10.0)
        assert response.status_code == 404
        assert response.json() == {"error": "endpoint GetOpenAPI is disabled by configuration"}
    finally:
        node.stop()
