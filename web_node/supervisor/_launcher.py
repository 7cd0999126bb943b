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

from web_node.privilege import RunAs, drop_argv

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

    With ``user``, the shim execs ``setpriv`` (:func:`web_node.privilege.drop_argv`)
    after writing ``cgroup.procs``, and that execs the program as ``user``:
    placement needs root, the program does not. Groups named in ``keep_root``
    (helpers that need root themselves, such as quickstart's worker, which
    makes its builds' cgroups and drops each build to its own user) keep the
    node's user.
    """

    def __init__(self, user: RunAs | None = None, keep_root: frozenset[str] = frozenset()) -> None:
        self.user = user
        self.keep_root = keep_root

    async def launch(self, spec: LaunchSpec) -> trio.Process:
        argv = list(spec.argv)
        env = {**os.environ, **spec.env}
        if self.user is not None and spec.group not in self.keep_root:
            argv = drop_argv(self.user, argv)
            env.update({"HOME": self.user.home, "USER": self.user.name, "LOGNAME": self.user.name})
        if spec.cgroup is not None:
            argv = spec.cgroup.placement_argv(argv)
        return await trio.lowlevel.open_process(
            argv, pass_fds=tuple(spec.pass_fds), env=env,
            # Own session: a terminal's Ctrl-C reaches only the node, which then stops
            # the groups in order; and nothing we signal by group can hit the node.
            start_new_session=True,
        )
