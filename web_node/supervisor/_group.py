"""One group under supervision: spawn, wait until ready, explain each death,
restart by policy, and stop with nothing left behind.

Ownership: the node's group nursery -> one :meth:`GroupRunner.supervise`
task per group -> at most one child process at a time. Cancelling the
group's ``scope`` stops it; the stop itself is :func:`stop_process`, the one
escalation path, shielded so cancellation can never leave a child behind.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from web_node.config import GroupSettings
from web_node.supervisor._exit_status import ExitFacts, describe_exit
from web_node.supervisor._launcher import Launcher, LaunchSpec
from web_node.supervisor._restart_policy import RestartTracker
from web_node.supervisor._state import GroupSnapshot, GroupState
from web_node.units import format_duration

if TYPE_CHECKING:
    import cgroups

# A group that has not said "ready" by then is judged failed and killed.
START_TIMEOUT_S = 60.0
# After the main process is gone, strays (grandchildren) get this long to vanish after cgroup.kill.
EMPTY_TIMEOUT_S = 5.0


@dataclass
class GroupRunner:
    """Live state of one group; the node reads it through :meth:`snapshot`."""

    settings: GroupSettings
    launcher: Launcher
    log: logging.LoggerAdapter[logging.Logger]
    cgroup: cgroups.Cgroup | None
    grace_s: float
    # Builds the child's argv and the fds it inherits; the node knows config files and sockets.
    command: Callable[[GroupSettings, int], tuple[Sequence[str], Sequence[int]]]
    metrics_socket: str | None = None
    reports_ready: bool = True  # False for helper processes (the quickstart worker) that cannot say so
    state: GroupState = "stopped"
    pid: int | None = None
    restarts: int = 0
    start_time: float | None = None
    last_exit: str | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ready_once: trio.Event = field(default_factory=trio.Event)  # first readiness, or giving up
    done: trio.Event = field(default_factory=trio.Event)
    _tracker: RestartTracker | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    def snapshot(self) -> GroupSnapshot:
        return GroupSnapshot(
            name=self.name, members=self.settings.members, state=self.state, pid=self.pid,
            restarts=self.restarts, start_time=self.start_time, last_exit=self.last_exit,
            cgroup=self.cgroup, metrics_socket=self.metrics_socket if self.state == "up" else None,
        )

    def stop(self) -> None:
        """Ask this group to stop (gracefully, within the grace)."""
        self.scope.cancel()

    async def supervise(self) -> None:
        """Run the group until it is stopped or its restart policy gives up."""
        self._tracker = RestartTracker(self.settings.restart_limit, self.settings.restart_window_s)
        try:
            with self.scope:
                while True:
                    facts, ran_s = await self._run_once()
                    decision = self._tracker.decide(self.settings.restart, failed=facts.failed,
                                                    now=time.monotonic(), ran_s=ran_s)
                    self.last_exit = facts.text
                    level = logging.ERROR if facts.failed else logging.INFO
                    self.log.log(level, "group %s (pid %s) %s after running %s; %s",
                                 self.name, self.pid, facts.text, format_duration(ran_s), decision.reason)
                    self.pid = None
                    if not decision.restart:
                        self.state = "gave-up" if facts.failed else "stopped"
                        self.ready_once.set()
                        return
                    self.state = "backing-off"
                    await trio.sleep(decision.delay_s)
                    self.restarts += 1
        finally:
            if self.state not in ("gave-up",):
                self.state = "stopped"
            self.pid = None
            self.ready_once.set()
            self.done.set()

    async def _run_once(self) -> tuple[ExitFacts, float]:
        self.state = "starting"
        node_end, child_end = socket.socketpair()
        oom_before = self._oom_kills()
        began = time.monotonic()
        try:
            argv, fds = self.command(self.settings, child_end.fileno())
            try:
                proc = await self.launcher.launch(LaunchSpec(
                    group=self.name, argv=argv, pass_fds=(child_end.fileno(), *fds), cgroup=self.cgroup))
            except OSError as e:
                return ExitFacts(f"could not be started: {e}", failed=True, oom_killed=False), 0.0
        finally:
            child_end.close()
        self.pid, self.start_time = proc.pid, time.time()
        self.log.info("group %s starting: pid %d, members %s, cgroup %s, limits: %s",
                      self.name, proc.pid, ", ".join(self.settings.members),
                      self.cgroup.path() if self.cgroup else "(none: degraded mode)", self.settings.limits_text())
        lifeline = trio.socket.from_stdlib_socket(node_end)
        try:
            if self.reports_ready:
                await self._wait_ready(proc, lifeline, began)
            else:
                self._mark_up(proc, began)
            await proc.wait()
        finally:
            # Also on cancellation (stop, reload, node shutdown): one shielded escalation.
            await stop_process(proc, self.cgroup, self.grace_s, self.log, self.name)
            lifeline.close()
        ran_s = time.monotonic() - began
        oom_kills = max(0, self._oom_kills() - oom_before)
        limit = self.cgroup.memory_limit_bytes() if self.cgroup else None
        return describe_exit(proc.returncode if proc.returncode is not None else -9,
                             oom_kills=oom_kills, memory_limit_bytes=limit), ran_s

    async def _wait_ready(self, proc: trio.Process, lifeline: trio.socket.SocketType, began: float) -> None:
        with trio.move_on_after(START_TIMEOUT_S) as timeout:
            data = await lifeline.recv(64)
        if timeout.cancelled_caught:
            self.log.error("group %s (pid %d) did not report ready within %s: killing it; see its log lines above",
                           self.name, proc.pid, format_duration(START_TIMEOUT_S))
            await stop_process(proc, self.cgroup, 0.0, self.log, self.name)
        elif data.startswith(b"ready"):
            self._mark_up(proc, began)
        # b"": the child closed its end, i.e. died before it was ready; proc.wait() tells how.

    def _mark_up(self, proc: trio.Process, began: float) -> None:
        self.state = "up"
        self.log.info("group %s up: pid %d ready in %.2f s", self.name, proc.pid, time.monotonic() - began)
        self.ready_once.set()

    def _oom_kills(self) -> int:
        if self.cgroup is None:
            return 0
        try:
            return self.cgroup.oom_kill_count() or 0
        except OSError:
            return 0


async def stop_process(proc: trio.Process, cgroup: cgroups.Cgroup | None, grace_s: float,
                       log: logging.LoggerAdapter[logging.Logger], group: str) -> None:
    """SIGTERM, wait the grace, then kill the whole cgroup (or the process
    group in degraded mode); shielded so that cancellation cannot leave a
    child behind. Returns once the process is reaped and the cgroup is empty."""
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            _signal(proc, signal.SIGTERM)
            with trio.move_on_after(grace_s):
                await proc.wait()
            if proc.returncode is None:
                if grace_s > 0:
                    log.error("group %s (pid %d) did not stop within %s of SIGTERM: killing everything in its cgroup",
                              group, proc.pid, format_duration(grace_s))
                _kill_all(proc, cgroup)
                await proc.wait()
        # Grandchildren may outlive the main process; they are ours only by cgroup or session.
        if cgroup is not None:
            try:
                if cgroup.populated():
                    cgroup.kill()
                    await trio.to_thread.run_sync(cgroup.wait_empty, EMPTY_TIMEOUT_S)
            except OSError as e:
                log.warning("group %s: could not empty cgroup %s: %s", group, cgroup.path(), e)
        else:
            _killpg(proc.pid)


def _signal(proc: trio.Process, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except ProcessLookupError:
        pass


def _kill_all(proc: trio.Process, cgroup: cgroups.Cgroup | None) -> None:
    if cgroup is not None:
        try:
            cgroup.kill()
        except OSError:
            pass
    _signal(proc, signal.SIGKILL)
    _killpg(proc.pid)


def _killpg(pid: int) -> None:
    """The child leads its own session (start_new_session), so its process
    group holds only what it started; never the node."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def child_argv(group: str, raw_config_path: str, node_fd: int, listen_fds: dict[str, int],
               metrics_socket: str | None) -> list[str]:
    argv = [sys.executable, "-m", "web_node", "group", group, "--raw-config", raw_config_path, "--node-fd", str(node_fd)]
    for member, fd in listen_fds.items():
        argv += ["--listen-fd", f"{member}={fd}"]
    if metrics_socket:
        argv += ["--metrics-socket", metrics_socket]
    return argv
