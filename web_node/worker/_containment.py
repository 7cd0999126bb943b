"""Where a build's processes live, so that the worker can kill all of them and nothing else.

Every step runs in a new process group (``process_group=0``): SIGTERM and
SIGKILL go to that group. Where this host lets the worker write cgroups, each
build also gets a cgroup of its own below the worker's tree
(``<own cgroup>/web-node-worker-NAME/build-ID``), entered before the step's
shell runs (:meth:`cgroups.Cgroup.placement_argv`): then even processes that
left the step's process group (``setsid``, daemons) are found and killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import cgroups

# After a kill, the build's cgroup gets this long to empty before it is left behind (logged).
EMPTY_TIMEOUT_S = 5.0


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal the process group ``pgid``; a group that is gone already is fine.

    Only call this while the group's leader is not reaped yet (running, or a
    zombie): until then its pid, which is the group id, cannot be given to
    another process, so the signal reaches our group and no other.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


class BuildCage:
    """The processes of one build: its step process groups and, where possible, its cgroup."""

    def __init__(self, build_id: int, cgroup: cgroups.Cgroup | None, log: logging.LoggerAdapter[logging.Logger]) -> None:
        self.build_id = build_id
        self.cgroup = cgroup
        self._log = log
        self._created = False

    @property
    def description(self) -> str:
        return f"cgroup {self.cgroup.path()}" if self.cgroup is not None else "its own process group"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """The argv that starts ``argv`` inside this build's cgroup (unchanged without one)."""
        if self.cgroup is None:
            return list(argv)
        if not self._created:
            self.cgroup.create()
            self._created = True
        return self.cgroup.placement_argv(argv)

    async def kill_all(self, pgid: int | None) -> None:
        """SIGKILL the step's process group and everything in the build's cgroup."""
        if pgid is not None:
            signal_group(pgid, signal.SIGKILL)
        if self.cgroup is not None and self._created:
            import cgroups

            try:
                # Without cgroup.kill (v1 hosts) this is a freeze-signal-thaw loop of up to 2 s: not on the trio loop.
                await trio.to_thread.run_sync(self.cgroup.kill)
            except cgroups.CgroupError as e:
                self._log.error("build %d: could not kill the processes in %s: %s", self.build_id, self.cgroup.path(), e)

    async def close(self) -> None:
        """Kill what is left in the build's cgroup and remove it."""
        if self.cgroup is None or not self._created:
            return
        import cgroups

        cgroup = self.cgroup
        try:
            await trio.to_thread.run_sync(cgroup.remove, EMPTY_TIMEOUT_S)
        except cgroups.CgroupError as e:
            self._log.error("build %d: could not remove %s: %s; the next start of this worker retries",
                            self.build_id, cgroup.path(), e)


class Containment:
    """Makes a :class:`BuildCage` per build: cgroups when writable, else process groups only."""

    def __init__(self, tree: cgroups.CgroupTree | None, log: logging.LoggerAdapter[logging.Logger]) -> None:
        self.tree = tree
        self._log = log

    @classmethod
    def detect(cls, root: str | None, log: logging.LoggerAdapter[logging.Logger]) -> Containment:
        """Use a cgroup tree at ``root`` if this host allows it; None or any problem: process groups."""
        if root is None:
            log.info("cgroups off (--no-cgroups): each step runs in its own process group")
            return cls(None, log)
        try:
            import cgroups
        except ImportError:
            log.info("the cgroups package is not installed: each step runs in its own process group")
            return cls(None, log)
        layout = cgroups.detect_layout()
        if layout.kind == "none" or not layout.writable:
            log.info("cgroups are not writable here (%s): each step runs in its own process group; processes "
                     "that leave it (setsid) cannot be killed on abort", " ".join(layout.problems) or layout.kind)
            return cls(None, log)
        tree = cgroups.CgroupTree(layout, root)
        try:
            tree.create(enable_controllers=(), move_self=False)
            stale = tree.cleanup_stale()
        except (cgroups.CgroupError, ValueError) as e:
            log.warning("cannot use the cgroup tree %s (%s): each step runs in its own process group only", root, e)
            return cls(None, log)
        if stale:
            log.warning("killed and removed cgroups left by an earlier run of this worker: %s", ", ".join(stale))
        log.info("each build runs in its own cgroup below %s", os.path.dirname(tree.leaf("build-0").path()))
        return cls(tree, log)

    def for_build(self, build_id: int) -> BuildCage:
        return BuildCage(build_id, self.tree.leaf(f"build-{build_id}") if self.tree is not None else None, self._log)

    async def aclose(self) -> None:
        if self.tree is None:
            return
        import cgroups

        try:
            await trio.to_thread.run_sync(self.tree.destroy)
        except cgroups.CgroupError as e:
            self._log.warning("could not remove the worker's cgroup tree: %s", e)
