"""The node supervisor: spawning groups, restart policy, shutdown, reload.

Where things happen: ``_launcher`` spawns and places a child; ``_group``
runs one group (readiness, death explained, restart, stop escalation);
``_restart_policy`` decides restarts; ``_exit_status`` turns a wait status
into words; ``_node`` owns the tree, sockets, signals and reload;
``_control`` answers ``web-node status``.
"""

from __future__ import annotations

from web_node.supervisor._control import request_status
from web_node.supervisor._exit_status import ExitFacts, describe_exit
from web_node.supervisor._host import detect_host_layout
from web_node.supervisor._launcher import ExecLauncher, Launcher, LaunchSpec
from web_node.supervisor._restart_policy import RestartDecision, RestartTracker
from web_node.supervisor._state import GroupSnapshot, GroupState


def run_node(*args: object, **kwargs: object) -> int:
    # Imported lazily: the node pulls in cgroups and the metrics page, which the
    # in-process runner (also a user of this package's restart policy) does not need.
    from web_node.supervisor._node import run_node as _run_node

    return _run_node(*args, **kwargs)  # type: ignore[arg-type]


__all__ = [
    "ExecLauncher", "ExitFacts", "GroupSnapshot", "GroupState", "LaunchSpec", "Launcher",
    "RestartDecision", "RestartTracker", "describe_exit", "detect_host_layout", "request_status", "run_node",
]
