"""The command line, generated from the registry.

``web``, one subcommand per role and one per registered member run members
(supervised, or ``--in-process``); ``members`` and ``plan`` describe them.
The hidden ``group`` subcommand is what the node execs for each group child.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import trio

from web_node._signals import block_signals, unblock_signals
from web_node.config import Config, Overrides, load_config, parse_config
from web_node.errors import ConfigError, WebNodeError
from web_node.log import node_logger, setup_logging
from web_node.members import ROLES, Registry, default_registry

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: $WEB_NODE_CONFIG)")
    p.add_argument("--disable", metavar="MEMBER", action="append", default=[], help="switch a member off (repeatable)")
    p.add_argument("--disable-endpoint", metavar="NAME", action="append", default=[],
                   help="switch one HTTP endpoint off by name, e.g. ListAllJobs (repeatable)")
    p.add_argument("--memory-max", metavar="GROUP=SIZE", action="append", default=[],
                   help="memory limit of a group, e.g. backend=256M (repeatable)")
    p.add_argument("--data-dir", metavar="DIR", help="override [node] data_dir")
    p.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or JSON")


def build_parser(registry: Registry) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="web-node",
        description="The web node of a CI server: members in processes and cgroups of your choosing.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def runner(name: str, help_text: str, members: list[str]) -> None:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common_flags(p)
        p.add_argument("--in-process", action="store_true",
                       help="run the members as tasks of this one process (no children, no cgroups)")
        p.set_defaults(handler=_cmd_run, selection=members)

    runner("web", "run every enabled member under supervision", registry.names())
    for role in ROLES:
        members = [m.name for m in registry.by_role(role)]
        runner(role, f"run the {role} role ({', '.join(members) or 'no members'}) under supervision", members)
    for member in registry:
        if member.name in ROLES:
            continue  # the role subcommand of the same name already runs it
        runner(member.name, f"run only the {member.name} member ({member.kind}: {member.description})", [member.name])

    p = sub.add_parser("members", help="table of members: name, role, kind, interval, endpoints")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_members)

    p = sub.add_parser("plan", help="validate the configuration and print the effective layout (exit 2 on bad config)")
    _common_flags(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("selection_cmd", nargs="?", default="web", metavar="COMMAND",
                   help="plan for this run command (web, a role or a member; default web)")
    p.set_defaults(handler=_cmd_plan)

    p = sub.add_parser("status", help="state of a running node: groups, pids, state, restarts, memory, CPU")
    _locate_flags(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_status)

    p = sub.add_parser("top", help="live per-group view: CPU %%, memory, peak, limit, pressure, restarts")
    _locate_flags(p)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    p.add_argument("--iterations", type=int, default=0, help="stop after N refreshes (default: until Ctrl-C)")
    p.set_defaults(handler=_cmd_top)

    for extra in _extra_commands():
        extra(sub, registry)

    # The node execs this for each group child; not for operators.
    p = sub.add_parser("group")
    p.add_argument("name")
    p.add_argument("--raw-config", required=True, help=argparse.SUPPRESS)
    p.add_argument("--node-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--listen-fd", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--metrics-socket", help=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_group)
    return parser


def _extra_commands() -> list[Any]:
    """Subcommands that live with their own package: each a ``register(subparsers, registry)``."""
    from web_node.quickstart import register as quickstart
    from web_node.systemd_unit import register as install_unit
    from web_node.worker.cli import register as worker

    return [quickstart, worker, install_unit]


def selection_for(registry: Registry, command: str) -> list[str]:
    if command == "web":
        return registry.names()
    if command in ROLES:
        return [m.name for m in registry if m.role == command]
    if command in registry:
        return [command]
    valid = ["web", *ROLES, *registry.names()]
    raise ConfigError(f"{command!r} is not a run command; valid: {', '.join(valid)}", key="COMMAND", value=command)


def config_from_args(args: argparse.Namespace, registry: Registry) -> Config:
    overrides = Overrides(
        disable=tuple(args.disable), disable_endpoints=tuple(args.disable_endpoint),
        memory_max=tuple(args.memory_max), log_format=args.log_format, data_dir=args.data_dir,
    )
    return load_config(registry, args.config, overrides=overrides)


def _cmd_run(args: argparse.Namespace, registry: Registry) -> int:
    config = config_from_args(args, registry)
    setup_logging(config.node.log_format, config.node.log_level)
    groups = config.layout(args.selection)
    if not groups:
        raise ConfigError(f"nothing to run: every member of {args.command} is disabled "
                          f"({', '.join(args.selection)}); enable one or choose another command", key="enabled")
    if args.in_process:
        from web_node.privilege import prepare_data_dir
        from web_node.runner import RunnerFailed, RunnerOptions, run_members

        prepare_data_dir(config.node.data_dir, None)  # 0700, ours; one process as this user ([node] user: see run_node)

        try:
            trio.run(run_members, config, registry, groups, RunnerOptions(restart_in_process=True))
        except RunnerFailed as e:
            node_logger().error("stopping: %s", e)
            return EXIT_FAILED
        return 0
    from web_node.supervisor import run_node

    return run_node(config, registry, args.selection, lambda: config_from_args(args, registry))


def _cmd_group(args: argparse.Namespace, registry: Registry) -> int:
    from web_node.runner import RunnerFailed, RunnerOptions, run_members

    with open(args.raw_config) as f:
        raw = json.load(f)
    config = parse_config(raw, registry, ("node",))
    setup_logging(config.node.log_format, config.node.log_level)
    _set_process_title(f"web-node: {args.name}")
    group = next((g for g in config.layout() if g.name == args.name), None)
    if group is None:
        raise ConfigError(f"group {args.name!r} is not in the configuration handed over by the node", key="group", value=args.name)
    listen_fds = {}
    for item in args.listen_fd:
        member, _, fd = item.partition("=")
        listen_fds[member] = int(fd)
    options = RunnerOptions(restart_in_process=False, listen_fds=listen_fds, node_fd=args.node_fd,
                            group_name=args.name, metrics_socket=args.metrics_socket)
    try:
        trio.run(run_members, config, registry, [group], options)
    except RunnerFailed as e:
        node_logger(args.name).error("group %s stops: %s", args.name, e)
        return EXIT_FAILED
    return 0


def _set_process_title(title: str) -> None:
    """Name this process in ps, top, htop and systemd-cgtop so operators see which group is which."""
    import setproctitle

    setproctitle.setproctitle(title)


def _cmd_members(args: argparse.Namespace, registry: Registry) -> int:
    rows: list[dict[str, Any]] = []
    for m in registry:
        rows.append({
            "name": m.name, "role": m.role, "kind": m.kind,
            "interval": f"{m.interval_s:g}s" if m.interval_s else "",
            "listen": m.listen or "",
            "endpoints": [e.name for e in m.endpoints],
            "description": m.description,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [["MEMBER", "ROLE", "KIND", "INTERVAL", "LISTEN", "ENDPOINTS"]]
    for r in rows:
        eps = r["endpoints"]
        table.append([r["name"], r["role"], r["kind"], r["interval"], r["listen"],
                      f"{len(eps)} ({', '.join(eps[:3])}{', ...' if len(eps) > 3 else ''})" if eps else "-"])
    from web_node.status import format_table

    print(format_table(table))
    return 0


def _cmd_plan(args: argparse.Namespace, registry: Registry) -> int:
    from web_node.plan import build_plan, format_plan

    config = config_from_args(args, registry)
    plan = build_plan(config, registry, selection_for(registry, args.selection_cmd))
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        print(format_plan(plan))
    return 0


def _locate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="the running node's config file (to find its data_dir)")
    p.add_argument("--data-dir", metavar="DIR", help="the running node's data_dir")


def _control_socket(args: argparse.Namespace, registry: Registry) -> str:
    overrides = Overrides(data_dir=args.data_dir)
    return load_config(registry, args.config, overrides=overrides).node.control_socket


def _cmd_status(args: argparse.Namespace, registry: Registry) -> int:
    from web_node.status import format_status
    from web_node.supervisor import request_status

    status = request_status(_control_socket(args, registry))
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def _cmd_top(args: argparse.Namespace, registry: Registry) -> int:
    from web_node.status import run_top

    return run_top(_control_socket(args, registry), args.interval, args.iterations)


def main(argv: Sequence[str] | None = None, registry: Registry | None = None) -> int:
    if registry is None:  # not `or`: an empty Registry is falsy but still the caller's choice
        registry = default_registry()
    parser = build_parser(registry)
    args = parser.parse_args(argv)
    if args.handler not in (_cmd_run, _cmd_group) and args.command != "quickstart":
        # Only the node and group children receive signals through their loop (web_node._signals).
        unblock_signals()
    try:
        code: int = args.handler(args, registry)
        return code
    except ConfigError as e:
        print(f"web-node: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except WebNodeError as e:
        print(f"web-node: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def entry_point() -> None:
    block_signals()  # again for the console script, which did not come through web_node/__main__.py
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
