"""Shared test fixtures: data dirs, cgroup roots, and real web-node processes
that are always stopped (process group and cgroups) even when a test fails.
The plain helpers they are built on live in node_helpers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_helpers import NodeProcess, remove_cgroup_root, unique_cgroup_root


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def cgroup_root() -> Iterator[str]:
    root = unique_cgroup_root()
    try:
        yield root
    finally:
        remove_cgroup_root(root)


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Any]:
    """``start_node(args, config_text=None, env=None)`` -> NodeProcess, stopped at teardown."""
    started: list[NodeProcess] = []

    def start(args: list[str], config_text: str | None = None, env: dict[str, str] | None = None) -> NodeProcess:
        full = list(args)
        if config_text is not None:
            cfg = tmp_path / f"config-{len(started)}.toml"
            cfg.write_text(config_text)
            full += ["--config", str(cfg)]
        node = NodeProcess(full, cwd=tmp_path, env=env)
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            node.stop()
