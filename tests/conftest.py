"""Shared test fixtures: data dirs, cgroup roots, and real web-node processes
that are always stopped (process group and cgroups) even when a test fails.
The plain helpers they are built on live in node_helpers.py.

Two rules for the tests marked ``real_kernel`` (they make real cgroups):

- without real, writable cgroups they fail, saying why; ``WEB_NODE_TEST_NO_CGROUPS=1``
  is the explicit opt-out that skips them instead (as ``WEB_NODE_TEST_NO_POSTGRES``);
- with ``WEB_NODE_REQUIRE_V2=1`` (set by tools/v2-guest-tests inside the pure
  cgroup v2 guest) the host must be pure v2, and a skipped test counts as
  failed: a guest run whose tests skipped has proven nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_helpers import (
    NO_CGROUPS_ENV,
    REQUIRE_V2_ENV,
    NodeProcess,
    remove_cgroup_root,
    require_real_cgroups,
    unique_cgroup_root,
)


def _require_v2() -> bool:
    return os.environ.get(REQUIRE_V2_ENV) == "1"


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _require_v2():
        return
    import cgroups

    layout = cgroups.detect_layout()
    if layout.kind != "v2" or os.environ.get(NO_CGROUPS_ENV) == "1":
        raise pytest.UsageError(
            f"{REQUIRE_V2_ENV}=1 runs the tests on a pure cgroup v2 host with real cgroups, but this one has "
            f"layout {layout.kind!r}{f' and {NO_CGROUPS_ENV}=1' if os.environ.get(NO_CGROUPS_ENV) == '1' else ''}; "
            "run them through tools/v2-guest-tests (make test-v2)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("real_kernel") is not None:
        require_real_cgroups()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if _require_v2() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"skipped in the pure cgroup v2 guest ({REQUIRE_V2_ENV}=1), where every selected test "
                           f"must run: {reason}")


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
