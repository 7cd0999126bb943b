"""``web-node worker``: the subcommand, added to the command line through ``cli._EXTRA_COMMANDS``."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from typing import Any

from web_node.errors import ConfigError
from web_node.privilege import BUILD_USER
from web_node.units import DURATION_HELP, parse_duration

ENV_TOKEN = "WEB_NODE_WORKER_TOKEN"


def register(subparsers: Any, registry: Any) -> None:
    """Add ``worker`` to the ``web-node`` subcommands."""
    p = subparsers.add_parser(
        "worker", help="a build worker: registers through the gateway and runs build steps",
        description="Run builds handed out by a web-node gateway: each step as '/bin/sh -c STEP' in a directory "
                    "of its own, in a cgroup of its own where this host allows, as an unprivileged user with an "
                    "environment of its own. SIGTERM stops it gracefully.")
    p.add_argument("--gateway", required=True, metavar="URL", help="the gateway, e.g. http://127.0.0.1:2222")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token", metavar="TOKEN", help=f"the gateway's worker token (visible in ps: prefer --token-file "
                                                        f"or ${ENV_TOKEN})")
    token.add_argument("--token-file", metavar="FILE", help="read the worker token from FILE (the gateway's "
                                                            "data_dir/worker-token)")
    p.add_argument("--name", default=socket.gethostname(), help="this worker's name (default: the host name); "
                                                               "unique among workers")
    p.add_argument("--work-dir", metavar="DIR", help="where build directories are made, a directory of this worker's "
                                                     "user (default: /var/lib/web-node-worker/NAME as root, else "
                                                     "$XDG_STATE_HOME/web-node-worker/NAME)")
    p.add_argument("--user", metavar="USER", help=f"the unprivileged user build steps run as (default as root: "
                                                  f"{BUILD_USER}, which must exist; without root: this user). "
                                                  "--user root runs builds as root: only for hosts where every "
                                                  "pipeline author may own the host")
    p.add_argument("--node-fd", type=int, metavar="FD", help=argparse.SUPPRESS)  # the node's lifeline (quickstart)
    p.add_argument("--tag", action="append", default=[], help="a tag this worker announces (repeatable)")
    p.add_argument("--poll-interval", default="1s", metavar="DURATION", help="how often to ask for work when idle")
    p.add_argument("--stop-grace", default="10s", metavar="DURATION",
                   help="on SIGTERM, how long a running build may go on before it is killed and errored")
    p.add_argument("--kill-grace", default="5s", metavar="DURATION",
                   help="between SIGTERM and SIGKILL when a build's processes are stopped")
    p.add_argument("--cgroup-root", metavar="PATH", help="cgroup tree of this worker's builds, relative to the worker's "
                                                         "own cgroup or absolute (default: web-node-worker-NAME)")
    p.add_argument("--no-cgroups", action="store_true", help="run steps in process groups only")
    p.add_argument("--keep-build-dirs", action="store_true", help="leave each build's directory after the build")
    p.add_argument("--log-format", choices=["text", "json"], default="text", help="log lines as text or JSON")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    p.set_defaults(handler=_cmd_worker)


def _duration(flag: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not {DURATION_HELP}", key=flag, value=text, valid=DURATION_HELP) from None


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token).strip()
    if args.token_file:
        try:
            with open(args.token_file) as f:
                return f.read().strip()
        except OSError as e:
            raise ConfigError(f"--token-file {args.token_file}: cannot read it: {e.strerror}", key="--token-file",
                              value=args.token_file) from None
    return os.environ.get(ENV_TOKEN, "").strip()


def _cmd_worker(args: argparse.Namespace, registry: Any) -> int:
    import trio

    from web_node.log import setup_logging
    from web_node.worker._sandbox import build_user, default_work_dir
    from web_node.worker._worker import WorkerOptions, run_worker, worker_logger

    setup_logging(args.log_format, args.log_level)
    import setproctitle

    setproctitle.setproctitle(f"web-node: worker {args.name}")  # so ps/top tell it from the node's groups
    # httpx logs every request at info: a line per heartbeat. Its failures reach our own log lines anyway.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    options = WorkerOptions(
        gateway_url=args.gateway,
        token=_token(args),
        name=args.name,
        work_dir=os.path.abspath(args.work_dir or default_work_dir(args.name)),
        tags=tuple(args.tag),
        poll_interval_s=_duration("--poll-interval", args.poll_interval),
        stop_grace_s=_duration("--stop-grace", args.stop_grace),
        kill_grace_s=_duration("--kill-grace", args.kill_grace),
        cgroup_root=None if args.no_cgroups else (args.cgroup_root or f"web-node-worker-{args.name}"),
        keep_build_dirs=args.keep_build_dirs,
        user=build_user(args.user),
        node_fd=args.node_fd,
    )
    if options.user is None and os.geteuid() == 0:
        worker_logger(args.name).warning("build steps run as root (--user root): every pipeline author controls "
                                         "this host")
    trio.run(run_worker, options)
    return 0
