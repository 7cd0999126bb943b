"""The front door: what ``cgroups`` exports, and that it stands alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cgroups

REPO_ROOT = Path(__file__).resolve().parents[2]

EXPORTED = {
    "PLACEMENT_FAILED",
    "STATS_SECTIONS",
    "Cgroup",
    "CgroupBusyError",
    "CgroupControllerMissing",
    "CgroupError",
    "CgroupPermissionError",
    "CgroupTree",
    "Layout",
    "LimitEnforcement",
    "Limits",
    "Stats",
    "TreeReport",
    "detect_layout",
    "format_bytes",
    "tree_report",
}


def test_exported_members() -> None:
    assert set(cgroups.__all__) == EXPORTED
    for name in EXPORTED:
        member = getattr(cgroups, name)
        if isinstance(member, type) or callable(member):
            assert member.__module__.startswith("cgroups"), name


def test_error_hierarchy() -> None:
    for error in (cgroups.CgroupPermissionError, cgroups.CgroupControllerMissing, cgroups.CgroupBusyError):
        assert issubclass(error, cgroups.CgroupError)
    missing = cgroups.CgroupControllerMissing("no", controller="memory", setting="memory_max_bytes", path="/x")
    assert (missing.controller, missing.setting, missing.path) == ("memory", "memory_max_bytes", "/x")


def test_package_stands_alone_sync_and_without_web_node() -> None:
    code = (
        "import sys, cgroups, cgroups.__main__\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('web_node', 'trio', 'anyio')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
