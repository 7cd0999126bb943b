"""``web-node quickstart``: the whole node plus one local worker, on embedded
SQLite in a data dir, with the URLs and the API token printed up front.

It is ``web-node web`` with one more supervised process (the worker, in its
own cgroup like every group, holding the node's lifeline like every group),
so what a new user sees is what production runs.

Run as root, it creates two system users and runs nothing of a stranger's as
root: the groups as ``web-node`` (unless this installation is out of that
user's reach: then a warning says why and they stay root) and build steps as
``web-node-build``. The worker itself stays root: it makes its builds' cgroups.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any

from web_node.config import Config, GroupSettings, Overrides, gather_raw, parse_config
from web_node.errors import ConfigError
from web_node.http import load_or_create_token
from web_node.log import node_logger, setup_logging
from web_node.members import Registry
from web_node.privilege import (
    BUILD_USER,
    NODE_USER,
    RunAs,
    blocked_path,
    current_user,
    ensure_system_user,
    node_user,
    own_file,
    prepare_data_dir,
    unreachable_program,
)

DEFAULT_DATA_DIR = "web-node-data"
WORKER_GROUP = "worker"


def register(subparsers: Any, registry: Registry) -> None:
    p = subparsers.add_parser(
        "quickstart", help="web plus one local worker on embedded SQLite; prints URLs and the API token",
        description="Start every member and one local build worker, with SQLite in a data dir "
                    f"(default ./{DEFAULT_DATA_DIR}). Ctrl-C stops everything.")
    p.add_argument("--config", metavar="FILE", help="TOML config file (optional)")
    p.add_argument("--data-dir", metavar="DIR", help=f"where the database, tokens and builds live (default ./{DEFAULT_DATA_DIR})")
    p.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or JSON")
    p.set_defaults(handler=_cmd_quickstart)


def load_quickstart_config(registry: Registry, config_file: str | None, *, data_dir: str | None = None,
                           log_format: str | None = None, user: str | None = None) -> Config:
    """The configuration quickstart runs: file, environment and flags as everywhere, and then its defaults
    for what none of them says: ``./web-node-data`` as data dir, ``user`` for the groups."""
    overrides = Overrides(data_dir=os.path.abspath(data_dir) if data_dir else None, log_format=log_format)
    raw, sources = gather_raw(registry, config_file, overrides=overrides)
    node = raw.get("node")
    if node is None:
        node = raw["node"] = {}
    if isinstance(node, dict):  # anything else is reported by parse_config
        node.setdefault("data_dir", os.path.abspath(DEFAULT_DATA_DIR))
        if user:
            node.setdefault("user", user)
    return parse_config(raw, registry, sources)


def worker_work_dir(data_dir: str) -> str:
    """Where quickstart's worker makes build dirs: in the data dir, or as root (builds run as another user)
    under /var/lib, where the build user can reach its own build dir by path (its $HOME)."""
    if os.geteuid() != 0:
        return os.path.join(data_dir, "worker")
    digest = hashlib.sha256(data_dir.encode()).hexdigest()[:10]
    return os.path.join("/var/lib/web-node-worker", f"quickstart-{digest}")


def _group_user(data_dir: str) -> str | None:
    """As root: the system user the groups drop to (created when missing), or None, with a warning
    saying why, when this installation or the data dir is out of its reach."""
    account = ensure_system_user(NODE_USER)
    problem = unreachable_program(account) or blocked_path(account, data_dir)
    if problem:
        node_logger().warning(
            "the groups run as root, not as %s: %s. Builds still run as %s. To run the groups unprivileged, install "
            "web-node where %s may read it (e.g. a virtualenv under /opt made with /usr/bin/python3) and use a data "
            "dir such as /var/lib/web-node", NODE_USER, problem, BUILD_USER, NODE_USER)
        return None
    return NODE_USER


def _cmd_quickstart(args: argparse.Namespace, registry: Registry) -> int:
    from web_node.supervisor._node import run_node

    def load(user: str | None = None) -> Config:
        return load_quickstart_config(registry, args.config, data_dir=args.data_dir, log_format=args.log_format,
                                      user=user)

    config = load()
    setup_logging(config.node.log_format, config.node.log_level)
    root = os.geteuid() == 0
    group_user: str | None = None
    if root and "user" not in config.raw.get("node", {}):
        group_user = _group_user(config.node.data_dir)
        config = load(group_user)
    if WORKER_GROUP in config.groups:
        raise ConfigError(f"quickstart runs its worker as group {WORKER_GROUP!r}; rename your group of that name",
                          key=f"groups.{WORKER_GROUP}")
    build_user = ensure_system_user(BUILD_USER).name if root else None
    data_dir = config.node.data_dir
    user = node_user(config.node.user)
    prepare_data_dir(data_dir, user)
    api_token = config.members["api"].options.get("token") or _token_file(os.path.join(data_dir, "api-token"), user)
    # The worker reads its token from a 0600 file, never from argv (ps shows argv) nor from an
    # environment every group would inherit. A token set in config is written to a file of its own.
    worker_token_file = os.path.join(data_dir, "worker-token")
    configured = config.members["gateway"].options.get("worker_token")
    if configured:
        worker_token_file = os.path.join(data_dir, "run", "quickstart-worker-token")
        os.makedirs(os.path.dirname(worker_token_file), mode=0o700, exist_ok=True)
        fd = os.open(worker_token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(configured + "\n")
    else:
        _token_file(worker_token_file, user)
    gateway = config.members["gateway"].listen
    work_dir = worker_work_dir(data_dir)
    _print_banner(config, api_token, build_user)

    def worker_command(settings: GroupSettings, node_fd: int) -> tuple[list[str], list[int]]:
        argv = [sys.executable, "-m", "web_node", "worker", "--gateway", f"http://{gateway}",
                "--token-file", worker_token_file, "--node-fd", str(node_fd),
                "--name", "quickstart-worker", "--work-dir", work_dir]
        if build_user:
            argv += ["--user", build_user]
        return argv, []

    worker = GroupSettings(name=WORKER_GROUP, members=(), restart="always", restart_limit=10)
    return run_node(config, registry, registry.names(), lambda: load(group_user),
                    extra_groups=[(worker, worker_command)], user=user)


def _token_file(path: str, user: RunAs | None) -> str:
    """The token in ``path`` (created when missing), readable by the groups' user."""
    token, created = load_or_create_token(path)
    if created and user is not None:
        own_file(path, user)
    return token


def _print_banner(config: Config, api_token: str, build_user: str | None) -> None:
    m = config.members
    lines = [
        "",
        "web-node quickstart",
        f"  UI       http://{m['ui'].listen}/",
        f"  API      http://{m['api'].listen}/api/v1/info",
        f"  token    {api_token}",
        f"           curl -H 'Authorization: Bearer {api_token}' http://{m['api'].listen}/api/v1/pipelines",
        f"  gateway  http://{m['gateway'].listen}/ (one local worker: quickstart-worker)",
        f"  metrics  http://{config.node.metrics_listen}/metrics" if config.node.metrics_listen else "  metrics  off",
        f"  data     {config.node.data_dir}",
        f"  users    groups as {config.node.user or _me()}, build steps as {build_user or _me()}",
        "  status   web-node status --data-dir " + config.node.data_dir,
        "  stop     Ctrl-C",
        "",
    ]
    print("\n".join(lines), flush=True)


def _me() -> str:
    return current_user().name
