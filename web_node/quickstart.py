"""``web-node quickstart``: the whole node plus one local worker, on embedded
SQLite in a data dir, with the URLs and the API token printed up front.

It is ``web-node web`` with one more supervised process (the worker, in its
own cgroup like every group), so what a new user sees is what production runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from web_node.config import Config, GroupSettings, Overrides, load_config
from web_node.errors import ConfigError
from web_node.http import load_or_create_token
from web_node.log import setup_logging
from web_node.members import Registry

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


def _cmd_quickstart(args: argparse.Namespace, registry: Registry) -> int:
    from web_node.supervisor._node import run_node

    data_dir = os.path.abspath(args.data_dir or DEFAULT_DATA_DIR)

    def load() -> Config:
        return load_config(registry, args.config, overrides=Overrides(data_dir=data_dir, log_format=args.log_format))

    config = load()
    if WORKER_GROUP in config.groups:
        raise ConfigError(f"quickstart runs its worker as group {WORKER_GROUP!r}; rename your group of that name",
                          key=f"groups.{WORKER_GROUP}")
    setup_logging(config.node.log_format, config.node.log_level)
    os.makedirs(data_dir, exist_ok=True)
    api_token = config.members["api"].options.get("token") or load_or_create_token(os.path.join(data_dir, "api-token"))[0]
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
        load_or_create_token(worker_token_file)
    gateway = config.members["gateway"].listen
    _print_banner(config, api_token)

    def worker_command(settings: GroupSettings, node_fd: int) -> tuple[list[str], list[int]]:
        argv = [sys.executable, "-m", "web_node", "worker", "--gateway", f"http://{gateway}",
                "--token-file", worker_token_file,
                "--name", "quickstart-worker", "--work-dir", os.path.join(data_dir, "worker")]
        return argv, []

    worker = GroupSettings(name=WORKER_GROUP, members=(), restart="always", restart_limit=10)
    return run_node(config, registry, registry.names(), load, extra_groups=[(worker, worker_command)])


def _print_banner(config: Config, api_token: str) -> None:
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
        "  status   web-node status --data-dir " + config.node.data_dir,
        "  stop     Ctrl-C",
        "",
    ]
    print("\n".join(lines), flush=True)
