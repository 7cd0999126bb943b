"""The node: cgroup tree, sockets, one supervised child per group, the
control socket, the metrics page, signals, reload.

Ownership, outermost first::

    Node.run
    └── aux nursery: control socket, metrics page, signal task
        └── group nursery: one GroupRunner.supervise per group
            └── the group's child process (placed in its cgroup before exec)

SIGTERM/SIGINT stop every group (each gets ``shutdown_grace``), then the
cgroups are removed and the node exits 0, also when the signal comes while
the node is still starting (signals are blocked from the first moment of
the process and received from the first moment of the trio loop:
:mod:`web_node._signals`). SIGHUP reloads the configuration. Under systemd
(``NOTIFY_SOCKET``) each step is told with sd_notify (``_notify``).

The node kills and removes only below a cgroup root it made itself
(``_cgroup_root``: recorded in data_dir; a foreign root holding cgroups or
processes is refused).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import trio

import cgroups
from web_node._signals import HANDLED, receive_signals
from web_node.config import Config, GroupSettings
from web_node.errors import ConfigError, SupervisorError
from web_node.log import node_logger
from web_node.members import Registry
from web_node.privilege import RunAs, node_user, own_file, prepare_data_dir
from web_node.supervisor._cgroup_root import RootClaim
from web_node.supervisor._control import serve_control
from web_node.supervisor._group import GroupRunner, child_argv
from web_node.supervisor._host import detect_host_layout
from web_node.supervisor._launcher import ExecLauncher, Launcher
from web_node.supervisor._notify import Notifier
from web_node.supervisor._sockets import bind_listen_socket
from web_node.supervisor._state import GroupSnapshot

EXIT_OK = 0
EXIT_ALL_GAVE_UP = 1


def limits_of(group: GroupSettings) -> cgroups.Limits:
    return cgroups.Limits(
        memory_max_bytes=group.memory_max_bytes, memory_high_bytes=group.memory_high_bytes,
        memory_low_bytes=group.memory_low_bytes, swap_max_bytes=group.swap_max_bytes,
        cpu_max_cores=group.cpu_max_cores, cpu_weight=group.cpu_weight, pids_max=group.pids_max,
    )


class Node:
    def __init__(
        self,
        config: Config,
        registry: Registry,
        selection: list[str],
        reload_config: Callable[[], Config],
        *,
        launcher: Launcher | None = None,
        extra_groups: Sequence[tuple[GroupSettings, Callable[[GroupSettings, int], tuple[list[str], list[int]]]]] = (),
        user: RunAs | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.selection = selection
        self.reload_config = reload_config
        # Extra groups are the caller's helpers (quickstart's worker): they keep the node's user.
        self.user = user  # what group children run as; None: the node's own user
        self.launcher = launcher or ExecLauncher(user, keep_root=frozenset(s.name for s, _ in extra_groups))
        self.extra_groups = list(extra_groups)
        self.log = node_logger()
        self.groups: dict[str, GroupRunner] = {}
        self.sockets: dict[str, socket.socket] = {}  # member -> listening socket held by the node
        self._listen_of: dict[str, str] = {}  # member -> the address its socket is bound to
        self.layout: cgroups.Layout | None = None
        self.tree: cgroups.CgroupTree | None = None
        self.degraded: list[str] = []
        self.started_at = time.time()
        self.generation = 0
        self.run_dir = os.path.join(config.node.data_dir, "run")
        self._group_nursery: trio.Nursery | None = None
        self._raw_path = ""
        self._tree_lock: int | None = None  # fd holding the cgroup tree's lock while this node lives
        self._claim: RootClaim | None = None  # the record of the cgroup roots this node made
        self.notify = Notifier.from_environment(self.log)
        self._signals_in: AsyncIterator[int] | None = None  # opened as the first thing of run()
        self._stopping = False

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        if self.user is not None:
            own_file(self.run_dir, self.user, mode=0o700)  # children bind their metrics sockets here
        # Before anything else: a stop that comes while the node starts is read, not fatal.
        with receive_signals(*HANDLED) as self._signals_in, _node_lock(self.config.node.data_dir):
            try:
                self._setup_cgroups()
                return await self._run_groups()
            finally:
                for sock in self.sockets.values():
                    sock.close()
                if self.tree is not None:
                    try:
                        self.tree.destroy()
                    except cgroups.CgroupError as e:
                        self.log.error("could not remove the cgroup tree %s: %s; remove it by hand (rmdir, deepest first)",
                                       self.config.node.cgroup_root, e)
                    if self._claim is not None:
                        self._claim.forget_removed()
                self._clean_run_dir()
                if self._tree_lock is not None:
                    os.close(self._tree_lock)

    def _setup_cgroups(self) -> None:
        self.layout = detect_host_layout()
        if self.layout.kind == "none" or not self.layout.writable:
            self.degraded = list(self.layout.problems) or [f"cgroups are {self.layout.kind}: nothing can be written"]
            self.log.warning(
                "DEGRADED: groups run as plain processes without cgroups (%s); no per-group limits, "
                "no kernel memory/CPU accounting per group, no OOM attribution", "; ".join(self.degraded))
            return
        tree = cgroups.CgroupTree(self.layout, self.config.node.cgroup_root)
        self._tree_lock = _tree_lock(tree, self.config.node.cgroup_root)
        # Only below a root of our own may anything be killed or removed (cleanup_stale, destroy).
        claim = RootClaim(self.config.node.data_dir, self.config.node.cgroup_root, tree.paths())
        claim.check()
        stale = tree.cleanup_stale()
        if stale:
            self.log.warning("removed stale cgroups of an earlier run that did not stop cleanly: %s", ", ".join(stale))
        try:
            tree.create()
        except cgroups.CgroupError as e:
            self.degraded = [str(e)]
            self.log.warning("DEGRADED: cannot create the cgroup tree (%s); groups run as plain processes", e)
            return
        claim.record()
        self._claim = claim
        self.tree = tree
        self.log.info("cgroups: %s layout, tree at %s", self.layout.kind, ", ".join(tree.paths().values()))

    async def _run_groups(self) -> int:
        self._write_raw_config()
        for group in self.config.layout(self.selection):
            self._add_group(group)
        for settings, command in self.extra_groups:
            self._add_group(settings, command=command, reports_ready=False)
        stop = trio.Event()
        async with trio.open_nursery() as aux:
            await aux.start(serve_control, self.config.node.control_socket, self.status)
            if self.config.node.metrics_listen:
                from web_node.metrics import serve_node_metrics

                await aux.start(partial(serve_node_metrics, self.config.node.metrics_listen, self.snapshots))
            aux.start_soon(self._signals, stop)
            async with trio.open_nursery() as groups:
                self._group_nursery = groups
                began = time.monotonic()
                for runner in self.groups.values():
                    groups.start_soon(runner.supervise)
                groups.start_soon(self._report_ready, began)
                groups.start_soon(self._watch_all_gave_up, stop)
                await stop.wait()
                for runner in self.groups.values():
                    runner.stop()
            aux.cancel_scope.cancel()
        gave_up = [r.name for r in self.groups.values() if r.state == "gave-up"]
        if gave_up and len(gave_up) == len(self.groups):
            self.log.error("every group gave up (%s): the node exits; see each group's last exit above", ", ".join(gave_up))
            return EXIT_ALL_GAVE_UP
        self.log.info("stopped: every group ended%s", ", cgroups removed" if self.tree is not None else "")
        return EXIT_OK

    async def _report_ready(self, began: float) -> None:
        for runner in list(self.groups.values()):
            await runner.ready_once.wait()
        if self._stopping:
            return  # stopped while starting: there is no "up" to report
        up = [r.name for r in self.groups.values() if r.state == "up"]
        self.log.info("%d of %d groups up in %.2f s: %s", len(up), len(self.groups), time.monotonic() - began, ", ".join(up))
        self.notify.ready(self._status_line())

    def _status_line(self) -> str:
        """The one-line state systemctl status shows (sd_notify STATUS=)."""
        up = sum(1 for r in self.groups.values() if r.state == "up")
        gave_up = [r.name for r in self.groups.values() if r.state == "gave-up"]
        return f"{up} of {len(self.groups)} groups up" + (f"; gave up: {', '.join(gave_up)}" if gave_up else "")

    async def _watch_all_gave_up(self, stop: trio.Event) -> None:
        while True:
            for runner in list(self.groups.values()):
                await runner.done.wait()
            if all(r.done.is_set() for r in self.groups.values()):
                stop.set()
                return

    async def _signals(self, stop: trio.Event) -> None:
        """The one task that reads signals (also those that came while the node was starting)."""
        assert self._signals_in is not None
        async for signum in self._signals_in:
            if signum == signal.SIGHUP:
                if stop.is_set():
                    continue  # stopping: nothing left to reload
                self.notify.reloading(f"reloading the configuration; {self._status_line()}")
                await self._on_sighup()
                self.notify.ready(self._status_line())
            else:
                self._on_stop_signal(signum, stop)

    def _on_stop_signal(self, signum: int, stop: trio.Event) -> None:
        self.log.info("received %s: stopping %d group(s), each within %.1f s",
                      signal.Signals(signum).name, len(self.groups), self.config.node.shutdown_grace_s)
        self._stopping = True
        self.notify.stopping(f"stopping {len(self.groups)} group(s)")
        stop.set()

    # ------------------------------------------------------------ groups

    def _add_group(self, settings: GroupSettings, *,
                   command: Callable[[GroupSettings, int], tuple[list[str], list[int]]] | None = None,
                   reports_ready: bool = True) -> GroupRunner:
        cgroup = None
        if self.tree is not None:
            cgroup = self.tree.leaf(settings.name)
            cgroup.create()
            self._apply_limits(settings, cgroup)
        if command is None:
            for member in settings.members:
                self._ensure_socket(member)
        runner = GroupRunner(
            settings=settings, launcher=self.launcher, log=self.log, cgroup=cgroup,
            grace_s=self.config.node.shutdown_grace_s, command=command or self._command,
            metrics_socket=os.path.join(self.run_dir, f"{settings.name}.metrics.sock") if command is None else None,
            reports_ready=reports_ready,
        )
        self.groups[settings.name] = runner
        return runner

    def _apply_limits(self, settings: GroupSettings, cgroup: cgroups.Cgroup) -> None:
        try:
            cgroup.apply_limits(limits_of(settings))
        except cgroups.CgroupControllerMissing as e:
            self.log.error("group %s: %s; the group runs without that limit", settings.name, e)
            self.degraded.append(f"group {settings.name}: {e}")

    def _ensure_socket(self, member: str) -> None:
        if self.registry.get(member).kind != "http":
            return
        listen = self.config.members[member].listen
        assert listen is not None
        existing = self.sockets.get(member)
        if existing is not None:
            if self._listen_of.get(member) == listen:
                return
            existing.close()
        self.sockets[member] = bind_listen_socket(listen, member=member)
        self._listen_of[member] = listen

    def _command(self, settings: GroupSettings, node_fd: int) -> tuple[list[str], list[int]]:
        fds = {m: self.sockets[m].fileno() for m in settings.members if m in self.sockets}
        metrics = self.groups[settings.name].metrics_socket if settings.name in self.groups else None
        if metrics and os.path.exists(metrics):
            os.unlink(metrics)  # left by a child that died; the new one binds afresh
        return child_argv(settings.name, self._raw_path, node_fd, fds, metrics), list(fds.values())

    def _write_raw_config(self) -> None:
        """The merged configuration, for children to parse exactly as we did (0600: it may hold tokens)."""
        self.generation += 1
        path = os.path.join(self.run_dir, f"config-{self.generation}.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.config.raw, f)
        if self.user is not None:
            own_file(path, self.user)
        self._raw_path = path

    def _clean_run_dir(self) -> None:
        for name in os.listdir(self.run_dir):
            if name.startswith("config-") or name.endswith(".sock"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.run_dir, name))

    # ------------------------------------------------------------ reload

    async def _on_sighup(self) -> None:
        self.log.info("received SIGHUP: reloading the configuration")
        try:
            new = self.reload_config()
            new_layout = {g.name: g for g in new.layout(self.selection)}
        except ConfigError as e:
            self.log.error("reload refused, the node keeps its running configuration: %s", e)
            return
        old = self.config
        old_layout = {name: r.settings for name, r in self.groups.items() if r.command == self._command}
        self.config = new
        self._write_raw_config()
        assert self._group_nursery is not None
        for name in old_layout.keys() - new_layout.keys():
            runner = self.groups.pop(name)
            self.log.info("reload: group %s stops (disabled or no longer configured)", name)
            runner.stop()
            await runner.done.wait()
            if runner.cgroup is not None:
                runner.cgroup.remove()
        for name, settings in new_layout.items():
            if name not in old_layout:
                self.log.info("reload: group %s starts (%s)", name, ", ".join(settings.members))
                self._group_nursery.start_soon(self._add_group(settings).supervise)
                continue
            before = old_layout[name]
            runner = self.groups[name]
            if runner.done.is_set():
                # It gave up (or exited cleanly under on-failure): the operator fixed the cause
                # and reloads, as the give-up line tells them to; start it afresh with a new tracker.
                self.log.info("reload: group %s starts again (it was %s; last exit: %s)",
                              name, runner.state, runner.last_exit or "none")
                self.groups.pop(name)
                self._group_nursery.start_soon(self._add_group(settings).supervise)
                continue
            changed_members = before.members != settings.members or any(
                old.members[m] != new.members[m] for m in settings.members)
            if changed_members or old.node.database != new.node.database:
                self.log.info("reload: group %s restarts: its members or their settings changed", name)
                runner.stop()
                await runner.done.wait()
                self.groups.pop(name)
                self._group_nursery.start_soon(self._add_group(settings).supervise)
                continue
            if limits_of(before) != limits_of(settings) and runner.cgroup is not None:
                self._apply_limits(settings, runner.cgroup)
                self.log.info("reload: group %s limits changed in place (pid %s kept): %s -> %s",
                              name, runner.pid, before.limits_text(), settings.limits_text())
            runner.settings = replace(settings)
            runner.grace_s = new.node.shutdown_grace_s
        self.log.info("reload done: %d group(s)", len(self.groups))

    # ------------------------------------------------------------ readers

    def snapshots(self) -> list[GroupSnapshot]:
        return [r.snapshot() for r in self.groups.values()]

    def status(self) -> dict[str, Any]:
        groups = []
        for snap in self.snapshots():
            entry: dict[str, Any] = {
                "name": snap.name, "members": list(snap.members), "state": snap.state, "pid": snap.pid,
                "restarts": snap.restarts, "start_time": snap.start_time, "last_exit": snap.last_exit,
                "cgroup": snap.cgroup.path() if snap.cgroup else None,
                "limits": self.groups[snap.name].settings.limits_text(),
            }
            if snap.cgroup is not None:
                with contextlib.suppress(OSError):
                    s = snap.cgroup.stats()
                    entry.update({
                        "memory_bytes": s.memory_usage_bytes, "memory_peak_bytes": s.memory_peak_bytes,
                        "memory_limit_bytes": s.memory_limit_bytes, "oom_kills": s.memory_events_oom_kill,
                        "cpu_seconds": s.cpu_usage_seconds, "pids": s.pids_current,
                        "pressure_memory_some_seconds": s.pressure_memory_some_seconds,
                        "pressure_cpu_some_seconds": s.pressure_cpu_some_seconds,
                    })
            groups.append(entry)
        return {
            "node": {
                "pid": os.getpid(), "started_at": self.started_at, "data_dir": self.config.node.data_dir,
                "cgroups": self.layout.kind if self.layout else "unknown",
                "cgroup_root": ", ".join(self.tree.paths().values()) if self.tree else None,
                "degraded": self.degraded, "metrics_listen": self.config.node.metrics_listen,
                "time": time.time(),
            },
            "groups": groups,
        }


@contextlib.contextmanager
def _node_lock(data_dir: str) -> Iterator[None]:
    """One node per data_dir: a second one would kill the first one's groups as 'stale'."""
    path = os.path.join(data_dir, "node.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise SupervisorError(
                f"another web-node (pid {other}) is already running with data_dir {data_dir}; "
                "stop it first, or give this one its own data_dir and cgroup_root") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _tree_lock(tree: cgroups.CgroupTree, cgroup_root: str) -> int:
    """One node per cgroup tree, whatever its data_dir: a second node would take the
    first one's live groups for the leftovers of a crash and kill them (on v1 and
    hybrid hosts nothing in the tree tells a live node's groups from a dead one's).

    The lock is a flock on the tree's root directory itself (cgroupfs supports it),
    so it leaves no file behind and dies with the node."""
    paths = sorted(tree.paths().values())
    os.makedirs(paths[0], exist_ok=True)
    fd = os.open(paths[0], os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SupervisorError(
            f"another web-node is already running with cgroup_root {cgroup_root} ({paths[0]}); "
            "stop it first, or give this node its own [node] cgroup_root") from None
    return fd


def run_node(config: Config, registry: Registry, selection: list[str], reload_config: Callable[[], Config],
             **kwargs: Any) -> int:
    kwargs.setdefault("user", node_user(config.node.user))
    prepare_data_dir(config.node.data_dir, kwargs["user"])
    node = Node(config, registry, selection, reload_config, **kwargs)
    result: int = trio.run(node.run)
    return result


__all__ = ["Node", "limits_of", "run_node"]
