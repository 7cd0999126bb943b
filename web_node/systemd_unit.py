"""``web-node install-unit``: the systemd unit operators deploy the node with.

One template, rendered for this installation (the ``web-node`` program that
runs this code, the config file, the data_dir). ``deploy/web-node.service``
in the source tree is the same template rendered with the defaults
(``render_unit()``; a test keeps the two equal).

Why each setting is there is said in the unit itself, where an operator
reads it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

DEFAULT_PROGRAM = "/usr/local/bin/web-node"
DEFAULT_CONFIG = "/etc/web-node/node.toml"
DEFAULT_DATA_DIR = "/var/lib/web-node"
UNIT_NAME = "web-node.service"
SYSTEM_UNIT_DIR = "/etc/systemd/system"

TEMPLATE = """\
# web-node under systemd: one service, its own delegated cgroup subtree.
#
# Install:  web-node install-unit --config {config}
#           systemctl daemon-reload && systemctl enable --now web-node
# Check:    systemctl status web-node    (its Status: line says how many groups are up)
#           web-node status --config {config}
# Reload:   systemctl reload web-node    (SIGHUP: limits change in place, changed groups restart)

[Unit]
Description=web-node: CI web node, its members in processes and cgroups of their own
After=network-online.target postgresql.service
Wants=network-online.target

[Service]
# The node sends READY=1 (sd_notify) once every group is up, RELOADING=1 and READY=1 around a
# reload, STOPPING=1 when a stop begins, and STATUS= with the count of groups up.
Type=notify
NotifyAccess=main
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID

# Delegate=yes hands the unit's cgroup subtree to the node (systemd's single-writer rule: systemd
# then never writes below it). The node makes web-node/<group> below its own cgroup, moves itself
# into web-node/supervisor (cgroup v2: no processes in a cgroup that enables controllers for its
# children) and enables memory, cpu, io and pids there; it gives the tree back as it found it.
Delegate=yes
# KillMode=mixed: on stop, SIGTERM goes to the node alone, which stops its groups in order, each
# within [node] shutdown_grace, and removes its cgroups. control-group would SIGTERM every group
# child at the same instant, racing the node's orderly stop of the tree it was delegated; process
# or none would leave a child the node could not stop. With mixed, whatever is still in the
# unit's cgroup (the delegated subtree included) gets SIGKILL from systemd once the node has exited
# or TimeoutStopSec has passed: nothing outlives the unit.
KillMode=mixed
# Longer than the node's shutdown_grace (default 10s), so that the node's own escalation runs first.
TimeoutStopSec=30s
TimeoutStartSec=120s
Restart=on-failure
RestartSec=2s

# Hardening that still lets the node write its delegated cgroups: ProtectControlGroups=yes would
# mount /sys/fs/cgroup read-only, so it stays off; ProtectKernelTunables=yes makes the rest of
# /sys and /proc/sys read-only and leaves /sys/fs/cgroup to ProtectControlGroups=.
ProtectControlGroups=no
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
# The whole file system read-only but the data_dir.
ProtectSystem=strict
{data_dir_lines}
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
NoNewPrivileges=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
UMask=0077

[Install]
WantedBy=multi-user.target
"""


def _data_dir_lines(data_dir: str) -> str:
    data_dir = os.path.normpath(data_dir)
    if data_dir.startswith("/var/lib/") and data_dir.count("/") == 3:
        # systemd makes it (0700, root) before the node starts, and keeps it writable.
        return f"StateDirectory={data_dir.removeprefix('/var/lib/')}\nStateDirectoryMode=0700"
    return f"ReadWritePaths={data_dir}"


def render_unit(program: str = DEFAULT_PROGRAM, config: str = DEFAULT_CONFIG, data_dir: str = DEFAULT_DATA_DIR) -> str:
    """The unit text for ``program web --config config`` keeping ``data_dir`` writable."""
    exec_start = " ".join(shlex.quote(part) for part in [*program.split(" "), "web", "--config", config])
    return TEMPLATE.format(exec_start=exec_start, config=config, data_dir_lines=_data_dir_lines(data_dir))


def this_program() -> str:
    """How to start the web-node that runs this code: its console script, else ``python -m web_node``."""
    script = os.path.join(os.path.dirname(sys.executable), "web-node")
    if os.access(script, os.X_OK):
        return os.path.abspath(script)
    return f"{os.path.abspath(sys.executable)} -m web_node"


def register(sub: Any, registry: Any) -> None:
    p = sub.add_parser(
        "install-unit", help="write the systemd unit (web-node.service) for this installation",
        description="Write web-node.service (Type=notify, Delegate=yes, KillMode=mixed, ExecReload=SIGHUP, "
                    f"hardening) for this installation into {SYSTEM_UNIT_DIR} or --out DIR, and say what to do next.")
    p.add_argument("--config", metavar="FILE", default=DEFAULT_CONFIG,
                   help=f"the config file the service runs with (default {DEFAULT_CONFIG}); its data_dir is kept writable")
    p.add_argument("--out", metavar="DIR", default=SYSTEM_UNIT_DIR, help=f"where to write the unit (default {SYSTEM_UNIT_DIR})")
    p.add_argument("--program", metavar="PATH", help="the web-node program ExecStart= runs (default: this one)")
    p.set_defaults(handler=_cmd_install_unit)


def _cmd_install_unit(args: argparse.Namespace, registry: Any) -> int:
    from web_node.config import load_config

    config = os.path.abspath(args.config)
    data_dir = DEFAULT_DATA_DIR
    if os.path.exists(config):
        data_dir = os.path.abspath(load_config(registry, config).node.data_dir)
    else:
        print(f"web-node: note: {config} does not exist yet; the unit keeps {data_dir} writable. "
              f"Write the config, then run install-unit again if its data_dir differs", file=sys.stderr)
    text = render_unit(args.program or this_program(), config, data_dir)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, UNIT_NAME)
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    print(f"wrote {path} (runs: {render_exec_start(text)})")
    print("next:")
    if os.path.abspath(args.out) != SYSTEM_UNIT_DIR:
        print(f"  cp {path} {SYSTEM_UNIT_DIR}/")
    print(f"  systemd-analyze verify {SYSTEM_UNIT_DIR}/{UNIT_NAME}")
    print("  systemctl daemon-reload && systemctl enable --now web-node")
    print("  systemctl status web-node        # Status: N of N groups up")
    return 0


def render_exec_start(unit_text: str) -> str:
    return next(line.partition("=")[2] for line in unit_text.splitlines() if line.startswith("ExecStart="))


__all__ = ["TEMPLATE", "register", "render_unit", "this_program"]
