"""The build worker: registers with a gateway, heartbeats, claims builds and runs them, one at a time.

Ownership, outermost first: :meth:`Worker.run` -> one nursery holding the
signal task, the heartbeat task and the claim loop -> the running
:class:`~web_node.worker._build.BuildRun` with its processes.

Stopping: the first SIGTERM or SIGINT stops claiming; a running build gets
``stop_grace`` to finish on its own, then its processes are killed and it is
reported ``errored`` with an event that says why. A second signal skips the
grace. The worker exits once the build's result is reported.

Started by a node (quickstart's worker group), the worker holds the node's
lifeline socket (``node_fd``) like every group: when it reads EOF the node is
gone, and the worker kills its build's processes and exits at once.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import re
import signal
import socket
import sys
from dataclasses import dataclass

import trio

from web_node.errors import ConfigError, WebNodeError
from web_node.privilege import RunAs
from web_node.units import format_duration
from web_node.worker._build import BuildRun, StopRequest
from web_node.worker._client import CREDENTIAL_FILE, GatewayClient, GatewayError, GatewayRefused
from web_node.worker._containment import Containment
from web_node.worker._sandbox import prepare_work_dir

RETRY_MAX_S = 10.0
# As the gateway checks it (web_node.members.gateway.WORKER_NAME).
WORKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# A warning per this many consecutive failed calls (the first one is always logged).
WARN_EVERY = 10


@dataclass(frozen=True)
class WorkerOptions:
    gateway_url: str
    token: str
    name: str
    work_dir: str
    tags: tuple[str, ...] = ()
    poll_interval_s: float = 1.0
    stop_grace_s: float = 10.0
    kill_grace_s: float = 5.0
    cgroup_root: str | None = None  # None: process groups only
    keep_build_dirs: bool = False
    user: RunAs | None = None  # who build steps run as; None: the worker's own user
    node_fd: int | None = None  # the node's lifeline socket (EOF: the node is gone)

    def __post_init__(self) -> None:
        if not WORKER_NAME.fullmatch(self.name):
            raise ConfigError(f"--name {self.name!r} is not a worker name: 1 to 63 letters, digits, '.', '_' or '-', "
                              "starting with a letter or digit", key="--name", value=self.name)
        if not self.gateway_url.startswith(("http://", "https://")):
            raise ConfigError(f"--gateway {self.gateway_url!r} must be an http:// or https:// URL, "
                              "e.g. http://127.0.0.1:2222", key="--gateway", value=self.gateway_url)
        if not self.token:
            raise ConfigError("no worker token: pass --token-file FILE (the gateway's data_dir/worker-token), "
                              "--token TOKEN or set WEB_NODE_WORKER_TOKEN", key="--token")
        for name, value in (("poll_interval", self.poll_interval_s), ("stop_grace", self.stop_grace_s),
                            ("kill_grace", self.kill_grace_s)):
            if value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative", key=f"--{name}", value=value)


def worker_logger(name: str) -> logging.LoggerAdapter[logging.Logger]:
    return logging.LoggerAdapter(logging.getLogger("web_node.worker"), {"who": f"worker {name}"})


class Worker:
    def __init__(self, options: WorkerOptions, *, handle_signals: bool = True) -> None:
        self.options = options
        self.log = worker_logger(options.name)
        self.handle_signals = handle_signals
        # The credential the gateway gives this worker is kept in its work dir: a restarted worker
        # registers again under its name with it (the name is refused to anyone else).
        self.client = GatewayClient(options.gateway_url, options.token, options.name,
                                    credential_file=os.path.join(options.work_dir, CREDENTIAL_FILE))
        self.platform = f"{sys.platform}/{platform.machine() or 'unknown'}"
        self.heartbeat_interval_s = 5.0
        self.current: BuildRun | None = None
        self.stopping = trio.Event()
        self._hard_stop: StopRequest | None = None
        self._nursery: trio.Nursery | None = None
        self._containment: Containment | None = None

    # -- stopping ------------------------------------------------------------------

    def stop(self, why: str = "asked to stop") -> None:
        """Stop claiming; give a running build ``stop_grace``, then kill it. Called again: kill it now."""
        if self.stopping.is_set():
            self.log.warning("%s again: killing the running build now", why)
            self._kill_running(why)
            return
        self.stopping.set()
        if self.current is None:
            self.log.info("%s: no build running, stopping", why)
            return
        self.log.info("%s: %s may finish within %s, then it is killed", why, self.current.build.label,
                      format_duration(self.options.stop_grace_s))
        assert self._nursery is not None
        self._nursery.start_soon(self._kill_after_grace, why)

    async def _kill_after_grace(self, why: str) -> None:
        await trio.sleep(self.options.stop_grace_s)
        self._kill_running(why)

    def _kill_running(self, why: str) -> None:
        message = (f"worker {self.options.name} was stopped ({why}) while this build ran; its processes were killed: "
                   "build errored, run it again")
        self._hard_stop = StopRequest("errored", message, f"killed: the worker was stopped ({why})", hurry=True)
        if self.current is not None:
            self.current.stop(self._hard_stop)

    async def _signal_loop(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.stop(signal.Signals(signum).name)

    # -- the whole worker ----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped; ``started()`` once registered with the gateway."""
        opts = self.options
        warning = await trio.to_thread.run_sync(
            lambda: prepare_work_dir(opts.work_dir, opts.user, keep_build_dirs=opts.keep_build_dirs))
        if warning:
            self.log.warning("%s", warning)
        self._containment = await trio.to_thread.run_sync(Containment.detect, opts.cgroup_root, self.log)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.handle_signals:
                    nursery.start_soon(self._signal_loop)
                if opts.node_fd is not None:
                    nursery.start_soon(self._lifeline, opts.node_fd)
                if await self._register():
                    self.log.info("registered with %s as %s (%s); work dir %s; build steps run as %s", opts.gateway_url,
                                  opts.name, self.platform, opts.work_dir,
                                  opts.user.describe() if opts.user else f"this worker's own user (uid {os.geteuid()})")
                    task_status.started()
                    nursery.start_soon(self._heartbeat_loop)
                    await self._claim_loop()
                else:
                    task_status.started()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # A refused token or name (ConfigError) should read as one line, not as a nursery's group.
            only = _sole_leaf(group)
            if isinstance(only, WebNodeError):
                raise only from None
            raise
        finally:
            with trio.CancelScope(shield=True):
                await self.client.aclose()
                await self._containment.aclose()
        self.log.info("stopped")

    async def _lifeline(self, fd: int) -> None:
        """Exit when the node that started this worker is gone (its end of the socket closed)."""
        sock = trio.socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_STREAM)
        os.close(fd)
        while True:
            try:
                data = await sock.recv(64)
            except OSError as e:
                if e.errno not in (errno.ECONNRESET, errno.EPIPE):
                    raise
                data = b""
            if not data:
                break
        self.log.error("the node that started this worker is gone: killing the running build and exiting")
        with trio.CancelScope(shield=True):
            if self.current is not None:
                await self.current.kill_now()
            if self._containment is not None:
                await self._containment.aclose()
        # No report: the gateway went with the node, and its build-tracker errors the build when it is back.
        os._exit(70)

    async def _register(self) -> bool:
        """Register, retrying while the gateway is unreachable; False when stopped before that worked."""
        delay, failures = 0.5, 0
        while not self.stopping.is_set():
            try:
                running = [self.current.build.id] if self.current else []
                self.heartbeat_interval_s = await self.client.register(self.platform, list(self.options.tags), running)
                return True
            except GatewayError as e:
                if failures % WARN_EVERY == 0:
                    self.log.warning("cannot register yet: %s; retrying every %.0f s at most", e, RETRY_MAX_S)
                failures += 1
            except GatewayRefused as e:
                raise ConfigError(f"the gateway refused to register this worker: {e}", key="--name",
                                  value=self.options.name) from e
            with trio.move_on_after(delay):
                await self.stopping.wait()
            delay = min(delay * 2, RETRY_MAX_S)
        return False

    async def _heartbeat_loop(self) -> None:
        failures = 0
        while True:
            await trio.sleep(self.heartbeat_interval_s)
            builds = [self.current.build.id] if self.current else []
            try:
                abort, self.heartbeat_interval_s = await self.client.heartbeat(builds)
                failures = 0
            except GatewayRefused as e:
                if e.status not in (401, 404):  # 401: credential unknown there (pruned); 404: not registered
                    self.log.warning("heartbeat refused: %s", e)
                    continue
                self.log.warning("the gateway no longer knows this worker (%s): registering again", e)
                await self._register()
                continue
            except GatewayError as e:
                if failures % WARN_EVERY == 0:
                    self.log.warning("heartbeat failed: %s; the build-tracker errors this worker's build if this lasts", e)
                failures += 1
                continue
            current = self.current
            if current is not None and current.build.id in abort:
                current.server_stopped(abort[current.build.id])

    async def _claim_loop(self) -> None:
        delay, failures = self.options.poll_interval_s, 0
        while not self.stopping.is_set():
            try:
                build = await self.client.claim(active_builds=0)
                failures, delay = 0, self.options.poll_interval_s
            except GatewayError as e:
                if failures % WARN_EVERY == 0:
                    self.log.warning("cannot ask for work: %s", e)
                failures += 1
                build, delay = None, min(max(delay * 2, 0.5), RETRY_MAX_S)
            except GatewayRefused as e:
                if e.status not in (401, 404):  # 401: credential unknown there (pruned); 404: not registered
                    raise
                self.log.warning("the gateway no longer knows this worker (%s): registering again", e)
                if not await self._register():
                    return
                continue
            if build is None:
                with trio.move_on_after(delay):
                    await self.stopping.wait()
                continue
            assert self._containment is not None
            run = BuildRun(build, self.client, self._containment.for_build(build.id), self.options.work_dir, self.log,
                           kill_grace_s=self.options.kill_grace_s, keep_dir=self.options.keep_build_dirs,
                           user=self.options.user)
            self.current = run
            if self._hard_stop is not None:
                run.stop(self._hard_stop)
            elif self.stopping.is_set():
                assert self._nursery is not None
                self._nursery.start_soon(self._kill_after_grace, "asked to stop")
            try:
                await run.run()
            finally:
                self.current = None


def _sole_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        else:
            leaves.append(e)

    walk(group)
    return leaves[0] if len(leaves) == 1 else None


async def run_worker(options: WorkerOptions, *, handle_signals: bool = True,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run one worker until stopped (SIGTERM/SIGINT when ``handle_signals``, or cancellation)."""
    await Worker(options, handle_signals=handle_signals).run(task_status=task_status)
