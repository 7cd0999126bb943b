"""The listener keys of http members: parsed into HttpSettings, refused loudly when wrong,
and turned into the gate's allowed hosts and body limits."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from web_node.config import Config, HttpSettings, parse_config
from web_node.errors import ConfigError
from web_node.http._gate import allowed_host_names, host_name
from web_node.members import default_registry


def parsed(text: str) -> Config:
    return parse_config(tomllib.loads(text), default_registry())


def test_defaults_and_every_key(tmp_path: Path) -> None:
    assert parsed("").members["api"].http == HttpSettings()
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    http = parsed(f"""
[members.gateway]
allowed_hosts = ["CI.example.com", "10.0.0.5"]
certfile = "{cert}"
keyfile = "{key}"
max_connections = 50
max_streams = 4
header_timeout = "5s"
body_timeout = "1m"
max_body = "2M"
body_limits = {{ SendBuildEvents = "4M" }}
""").members["gateway"].http
    assert http == HttpSettings(allowed_hosts=("ci.example.com", "10.0.0.5"), certfile=str(cert), keyfile=str(key),
                                max_connections=50, max_streams=4, header_timeout_s=5.0, body_timeout_s=60.0,
                                max_body_bytes=2 * 1024 * 1024, body_limits={"SendBuildEvents": 4 * 1024 * 1024})


@pytest.mark.parametrize(("text", "says"), [
    ('certfile = "/etc/hostname"', "TLS needs both files"),
    ('certfile = "/nope.pem"\nkeyfile = "/nope.key"', "is not a readable file"),
    ("max_connections = 0", "members.api.max_connections = 0 must be a whole number from 1"),
    ('header_timeout = "0s"', "must be longer than zero"),
    ('body_timeout = "2h"', "at most 1h"),
    ('max_body = "lots"', "members.api.max_body = 'lots' is not a size"),
    ('body_limits = { SetPipelin = "2M" }', "did you mean 'SetPipeline'"),
    ('allowed_hosts = "ci.example.com"', "must be a list of host names"),
])
def test_bad_listener_keys_are_refused_with_the_key_named(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parsed(f"[members.api]\n{text}\n")
    assert says in str(caught.value)


def test_listener_keys_are_only_for_http_members() -> None:
    with pytest.raises(ConfigError, match=r"unknown key members\.gc\.max_connections"):
        parsed("[members.gc]\nmax_connections = 3\n")


def test_allowed_hosts_default_to_the_listen_host_and_localhost() -> None:
    assert allowed_host_names(HttpSettings(), "10.1.2.3:8080") == {"10.1.2.3", "localhost", "127.0.0.1", "::1"}
    assert allowed_host_names(HttpSettings(), "0.0.0.0:8080") is None  # a wildcard listener: any, unless listed
    assert allowed_host_names(HttpSettings(allowed_hosts=("ci.example.com",)), "0.0.0.0:8080") == {"ci.example.com"}
    assert allowed_host_names(HttpSettings(allowed_hosts=("*",)), "127.0.0.1:80") is None
    assert [host_name(h) for h in ("[::1]:8080", "CI.Example.com:443", "localhost", "[::1]")] == \
        ["::1", "ci.example.com", "localhost", "::1"]
