"""The launch seam: how a group's process comes to exist.

Policy (when to start, restart, stop) lives in ``_group.py``; this module
only turns a :class:`LaunchSpec` into a running process placed in its
cgroup. :class:`ExecLauncher` execs a fresh ``web-node group NAME``; a faster
fork-server launcher can implement the same protocol without touching policy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import trio

if TYPE_CHECKING:
    import cgroups


@dataclass(frozen=True)
class LaunchSpec:
    group: str
    argv: Sequence[str]
    pass_fds: Sequence[int] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cgroup: cgroups.Cgroup | None = None  # None: degraded mode, no placement


class Launcher(Protocol):
    async def launch(self, spec: LaunchSpec) -> trio.Process: ...


class ExecLauncher:
    """Exec the child through a tiny /bin/sh shim that writes its own pid into
    the group's cgroup.procs files and then execs the real program.

    Why a shim and not ``preexec_fn``: memory is charged to the cgroup a page
    was first touched in and stays there after a move, so the child must be in
    its cgroup before Python starts; ``preexec_fn`` would do that but is a
    deadlock risk in our multi-threaded parent (trio spawns from a worker
    thread), and the shim's own few pages are all it could mis-charge.
    """

    async def launch(self, spec: LaunchSpec) -> trio.Process:
        argv = list(spec.argv)
        if spec.cgroup is not None:
            argv = spec.cgroup.placement_argv(argv)
        env = {**os.environ, **spec.env}
        return await trio.lowlevel.open_process(
            argv, pass_fds=tuple(spec.pass_fds), env=env,
            # Own session: a terminal's Ctrl-C reaches only the node, which then stops
            # the groups in order; and nothing we signal by group can hit the node.
            start_new_session=True,
        )
