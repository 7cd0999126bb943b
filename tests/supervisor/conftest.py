"""Fixtures of the supervisor tests; the helpers live in supervisor_nodes.py."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # supervisor_nodes, whatever pytest's import mode

from supervisor_nodes import Node, new_ports, start


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``test_real_kernel_*`` here are marked real_kernel: they need root and real, writable
    cgroups of any layout, and fail saying so when there are none (tests/conftest.py)."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here and item.name.startswith("test_real_kernel_"):
            item.add_marker(pytest.mark.real_kernel)


@pytest.fixture
def new_node(start_node: Any, cgroup_root: str, data_dir: Path, tmp_path: Path) -> Callable[..., Node]:
    """``new_node(command="web", like=None, **config)``: a node of this test (``like``: same config file)."""

    def make(command: str = "web", *, like: Node | None = None, **config: Any) -> Node:
        if like is not None:
            return Node(start_node([command, "--config", str(like.config_path)]), like.config_path, like.data_dir,
                        like.cgroup_root, like.ports)
        return start(tmp_path, command, data_dir=data_dir, cgroup_root=cgroup_root, ports=new_ports(),
                     launch=start_node, **config)

    return make
