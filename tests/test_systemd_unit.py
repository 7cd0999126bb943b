"""deploy/web-node.service and ``web-node install-unit``: the unit systemd itself accepts.

``systemd-analyze verify`` (systemd's own parser, no PID 1 needed) must
accept the unit without a single warning; a broken copy shows that it
would say so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from web_node.systemd_unit import render_unit

REPO_ROOT = Path(__file__).resolve().parents[1]


def settings(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed: `make deps` installs the systemd package", pytrace=False)
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)


def install_unit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "web_node", "install-unit", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)


def test_deploy_unit_is_the_template_rendered_with_the_defaults() -> None:
    assert (REPO_ROOT / "deploy" / "web-node.service").read_text() == render_unit(), (
        "deploy/web-node.service differs from web_node/systemd_unit.py; regenerate it with "
        "python -c 'from web_node.systemd_unit import render_unit; print(render_unit(), end=\"\")' > deploy/web-node.service")


def test_unit_delegates_the_cgroup_tree_notifies_and_stops_the_node_first() -> None:
    unit = settings(render_unit())
    assert unit["Delegate"] == "yes"
    assert unit["Type"] == "notify" and unit["NotifyAccess"] == "main"
    assert unit["KillMode"] == "mixed"
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["ExecStart"] == "/usr/local/bin/web-node web --config /etc/web-node/node.toml"
    # The delegated tree stays writable; the rest of the system does not.
    assert unit["ProtectControlGroups"] == "no"
    assert unit["ProtectSystem"] == "strict" and unit["StateDirectory"] == "web-node"


def test_install_unit_writes_a_unit_systemd_analyze_verify_accepts_and_says_what_next(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{data_dir}"\n')
    result = install_unit("--out", str(tmp_path / "units"), "--config", str(config))
    assert result.returncode == 0, result.stderr
    unit_path = tmp_path / "units" / "web-node.service"
    assert f"wrote {unit_path}" in result.stdout
    assert "systemctl daemon-reload && systemctl enable --now web-node" in result.stdout
    unit = settings(unit_path.read_text())
    program = unit["ExecStart"].split(" --config ")[0].removesuffix(" web")
    assert os.access(program.split(" ")[0], os.X_OK), unit["ExecStart"]
    assert unit["ExecStart"].endswith(f"web --config {config}")
    assert unit["ReadWritePaths"] == str(data_dir)  # the config's data_dir, not the default
    checked = verify(unit_path)
    assert checked.returncode == 0 and checked.stdout == "" and checked.stderr == "", checked


def test_systemd_analyze_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a wrong KillMode= and an unknown key are reported."""
    assert install_unit("--out", str(tmp_path)).returncode == 0
    unit = tmp_path / "web-node.service"
    unit.write_text(unit.read_text().replace("KillMode=mixed", "KillMode=mixd\nDelegates=yes"))
    checked = verify(unit)
    assert "Failed to parse kill mode" in checked.stderr and "Unknown key" in checked.stderr, checked
