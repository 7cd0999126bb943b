"""The in-process runner: members of one group as tasks of one trio nursery.

Used directly by ``--in-process`` (every chosen member in this one process,
restarted in-process by its group's policy) and by each group child the
supervisor spawns (where a failing member ends the process with a non-zero
status and the supervisor restarts the whole group).

Ownership, outermost first: the runner's nursery -> one supervised task per
member -> the member's own work (an http server, a periodic loop, a daemon).
Shutdown is a cancel scope with a ``shutdown_grace`` deadline.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from web_node._signals import STOP, receive_signals
from web_node.config import Config, GroupSettings
from web_node.errors import MemberError, NotFound, StoreError
from web_node.log import member_logger, node_logger
from web_node.members import Member, MemberContext, Registry
from web_node.metrics import ProcessMetrics
from web_node.store import AsyncStore, Component, open_store
from web_node.supervisor import RestartTracker

COMPONENT_HEARTBEAT_S = 10.0


class MemberExited(MemberError):
    """A member's work ended although it should run until stopped."""


@dataclass
class _MemberRun:
    member: Member
    ctx: MemberContext
    stop: trio.Event = field(default_factory=trio.Event)  # asks an http server to drain


@dataclass
class RunnerOptions:
    """``restart_in_process``: restart failed members here by their group's
    policy (``--in-process``); otherwise any member failure ends the process
    so that the supervisor restarts the whole group."""

    restart_in_process: bool = True
    listen_fds: Mapping[str, int] = field(default_factory=dict)
    node_fd: int | None = None  # socket to the node: "ready" goes out, EOF means the node died
    metrics_socket: str | None = None  # group child: serve this process's metrics here for the node
    group_name: str | None = None  # the group this child is (None in --in-process mode)


class RunnerFailed(Exception):
    """The runner gives up: one line says which member and why."""


async def run_members(
    config: Config,
    registry: Registry,
    groups: list[GroupSettings],
    options: RunnerOptions,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every member of ``groups`` until SIGTERM/SIGINT (or cancellation).

    The signals are received from the first moment of the loop: one that
    came while the process was importing or its members were starting stops
    it just as cleanly (members not yet started are not started; exit 0).
    Raises RunnerFailed when a member failed and its policy says stop.
    """
    log = node_logger(options.group_name or "node")
    with receive_signals(*STOP) as signals:
        await _run_members(config, registry, groups, options, log, signals, task_status)


async def _run_members(
    config: Config,
    registry: Registry,
    groups: list[GroupSettings],
    options: RunnerOptions,
    log: logging.LoggerAdapter[logging.Logger],
    signals: AsyncIterator[int],
    task_status: trio.TaskStatus[None],
) -> None:
    os.makedirs(config.node.data_dir, exist_ok=True)
    store = AsyncStore(await trio.to_thread.run_sync(open_store, config.node.database, config.node.data_dir))
    metrics = ProcessMetrics()
    metrics.install_instrument()
    failure: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            stopping = trio.Event()
            stop_requested = trio.Event()
            runs: list[_MemberRun] = []
            aux: list[trio.CancelScope] = []  # helpers that end as soon as a stop begins
            startup = trio.CancelScope()  # a stop signal while members start cancels the rest of the start
            await nursery.start(_in_scope, aux, partial(_read_stop_signal, signals, stop_requested, startup, log,
                                                        config.node.shutdown_grace_s))
            with startup:
                await _start_all(nursery, config, registry, groups, options, log, store, metrics, runs, aux,
                                 stopping, failure)
            task_status.started()
            if not startup.cancelled_caught:
                failed = [r.member.name for r in runs if r.ctx.state.get("failed_to_start")]
                log.info("ready: %s%s", ", ".join(r.member.name for r in runs if r.member.name not in failed),
                         f" (failed to start, restarting by policy: {', '.join(failed)})" if failed else "")
            await stop_requested.wait()
            for scope in aux:
                scope.cancel()
            # Graceful stop: http servers drain, periodic loops end at their next wait.
            stopping.set()
            for run in runs:
                run.stop.set()
            nursery.cancel_scope.deadline = trio.current_time() + config.node.shutdown_grace_s
            # Everything that is not an http server stops now; servers get the grace.
            for run in runs:
                if run.member.kind != "http":
                    run.ctx.state.get("cancel_scope", trio.CancelScope()).cancel()
        if not failure:
            log.info("stopped: every member ended")
    finally:
        metrics.uninstall_instrument()
        with trio.CancelScope(shield=True):
            await store.close()
    if failure:
        raise RunnerFailed(failure[0])


async def _start_all(nursery: trio.Nursery, config: Config, registry: Registry, groups: list[GroupSettings],
                     options: RunnerOptions, log: logging.LoggerAdapter[logging.Logger], store: AsyncStore,
                     metrics: ProcessMetrics, runs: list[_MemberRun], aux: list[trio.CancelScope],
                     stopping: trio.Event, failure: list[str]) -> None:
    """Start every member, then the helpers; the lifeline says "ready" to the node last."""
    for group in groups:
        for name in group.members:
            member = registry.get(name)
            ctx = MemberContext(
                member=member, config=config, group=group.name,
                log=member_logger(name, group=group.name), store=store, metrics=metrics,
                listen_fd=options.listen_fds.get(name),
            )
            metrics.set_member_enabled(name)
            run = _MemberRun(member, ctx)
            ctx.state["stopping"] = run.stop  # long-lived responses (live logs) end at a graceful stop
            runs.append(run)
            await nursery.start(partial(_supervise_member, run, group, options, stopping, failure, nursery.cancel_scope))
    nursery.start_soon(_in_scope, aux, partial(_heartbeat_components, runs, store))
    if options.metrics_socket:
        await nursery.start(_in_scope, aux, partial(metrics.serve_socket, options.metrics_socket))
    elif options.group_name is None and config.node.metrics_listen:
        await nursery.start(_in_scope, aux, partial(metrics.serve_page, config.node.metrics_listen))
    if options.node_fd is not None:
        # Said "ready" to the node through this socket only once every member started.
        await nursery.start(_in_scope, aux, partial(_lifeline, options.node_fd, log))


async def _in_scope(scopes: list[trio.CancelScope], fn: Any, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.CancelScope() as scope:
        scopes.append(scope)
        await fn(task_status=task_status)


async def _read_stop_signal(signals: AsyncIterator[int], stop_requested: trio.Event, startup: trio.CancelScope,
                            log: logging.LoggerAdapter[logging.Logger], grace_s: float, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The one task that reads SIGTERM/SIGINT (also one that came before the loop ran)."""
    task_status.started()
    async for signum in signals:
        log.info("received %s: stopping every member within %.1f s", signal.Signals(signum).name, grace_s)
        startup.cancel()  # no effect once every member started
        stop_requested.set()
        return


async def _lifeline(fd: int, log: logging.LoggerAdapter[logging.Logger], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """End this child when the node is gone (PR_SET_PDEATHSIG cannot be used
    from a trio-spawned child: it fires when trio's spawning thread exits)."""
    sock = trio.socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_STREAM)
    os.close(fd)
    await sock.send(b"ready\n")
    task_status.started()
    while True:
        try:
            data = await sock.recv(64)
        except OSError as e:
            if e.errno not in (errno.ECONNRESET, errno.EPIPE):
                raise
            data = b""
        if not data:
            log.error("the node process is gone: this group stops now")
            # No grace: no supervisor is left to wait for us, and the next node start cleans the cgroup.
            os._exit(70)


async def _supervise_member(
    run: _MemberRun,
    group: GroupSettings,
    options: RunnerOptions,
    stopping: trio.Event,
    failure: list[str],
    runner_scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    member, log = run.member, run.ctx.log
    run.ctx.metrics.enter_member(member.name)
    tracker = RestartTracker(group.restart_limit, group.restart_window_s)
    first = True
    while True:
        started_at = time.monotonic()
        try:
            with trio.CancelScope() as scope:
                run.ctx.state["cancel_scope"] = scope
                if first:
                    await _start_member(run, task_status)
                else:
                    await _start_member(run, trio.TASK_STATUS_IGNORED)
                if not stopping.is_set():
                    raise MemberExited(f"member {member.name} returned although it should run until stopped", member=member.name)
            return
        except Exception as e:  # a member's failure must not take its siblings down unjudged
            if stopping.is_set():
                return
            ran_s = time.monotonic() - started_at
            reason = f"{type(e).__name__}: {e}"
            log.error("member %s failed after %.1f s: %s", member.name, ran_s, reason, exc_info=not isinstance(e, MemberError))
            if first:
                # Never reported ready: tell the caller instead of hanging its start.
                run.ctx.state["failed_to_start"] = True
                task_status.started()
                first = False
            decision = tracker.decide(group.restart, failed=True, now=time.monotonic(), ran_s=ran_s)
            if not options.restart_in_process or not decision.restart:
                why = decision.reason if options.restart_in_process else "its group's process exits so that the node restarts it"
                failure.append(f"member {member.name} failed ({reason}); {why}")
                runner_scope.cancel()
                return
            log.warning("restarting member %s in %.1f s (%s)", member.name, decision.delay_s, decision.reason)
            await trio.sleep(decision.delay_s)
        first = False


async def _start_member(run: _MemberRun, task_status: trio.TaskStatus[None]) -> None:
    kind = run.member.kind
    if kind == "http":
        await _serve_http(run, task_status)
    elif kind == "periodic":
        await _run_periodic(run, task_status)
    else:
        assert run.member.run is not None
        async with trio.open_nursery() as nursery:
            await nursery.start(run.member.run, run.ctx)
            task_status.started()


async def _serve_http(run: _MemberRun, task_status: trio.TaskStatus[None]) -> None:
    ctx = run.ctx
    assert run.member.make_app is not None
    app = ctx.metrics.wrap_app(await run.member.make_app(ctx), run.member, ctx.settings.disabled_endpoints)
    from web_node.http import serve, server_config  # the web stack: imported by group children only

    # hypercorn's own "Running on" line repeats ours; keep only its warnings and errors.
    server_log = logging.getLogger(f"hypercorn.{run.member.name}")
    server_log.setLevel(logging.WARNING)
    bind = f"fd://{ctx.listen_fd}" if ctx.listen_fd is not None else ctx.settings.listen or ""
    # Connection cap, header timeout, TLS: [members.X] keys (config.HttpSettings).
    cfg = server_config(ctx.settings.http, bind=bind, grace_s=ctx.config.node.shutdown_grace_s, errorlog=server_log)
    try:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, cfg, ctx.settings.http, shutdown_trigger=run.stop.wait))
            ctx.log.info("serving on %s", ", ".join(binds) if binds else cfg.bind[0])
            task_status.started()
    except* OSError as group:
        e = _first_leaf(group)
        raise MemberError(f"member {run.member.name} cannot listen on {cfg.bind[0]}: {getattr(e, 'strerror', None) or e}; "
                          f"set [members.{run.member.name}] listen to a free HOST:PORT", member=run.member.name) from None


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _run_periodic(run: _MemberRun, task_status: trio.TaskStatus[None]) -> None:
    ctx, member = run.ctx, run.member
    assert member.tick is not None
    interval = ctx.settings.interval_s or member.interval_s or 10.0
    task_status.started()
    # Spread the first runs of members started together.
    await trio.sleep(random.uniform(0, min(1.0, interval / 10)))
    while True:
        if await _is_paused(ctx):
            ctx.metrics.record_run(member.name, "skipped_paused", time.time())
            ctx.log.debug("paused: skipping this run")
        else:
            began = time.monotonic()
            try:
                await member.tick(ctx)
            except (trio.Cancelled, KeyboardInterrupt):
                raise
            except Exception as e:  # one failed run is counted and logged; the next run may succeed
                ctx.metrics.record_run(member.name, "error", time.time(), time.monotonic() - began)
                ctx.log.error("run failed after %.2f s: %s: %s", time.monotonic() - began, type(e).__name__, e, exc_info=e)
            else:
                ctx.metrics.record_run(member.name, "ok", time.time(), time.monotonic() - began)
                ctx.state["last_run_at"] = time.time()
        await trio.sleep(interval)


async def _is_paused(ctx: MemberContext) -> bool:
    try:
        return (await ctx.store.get_component(ctx.member.name)).paused
    except NotFound:
        return False
    except StoreError as e:
        ctx.log.warning("cannot read whether this member is paused (%s); running anyway", e)
        return False


async def _heartbeat_components(runs: list[_MemberRun], store: AsyncStore, *,
                                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Register each member in the components table and keep its heartbeat fresh."""
    host = socket.gethostname()
    now = time.time()
    for run in runs:
        try:
            await store.register_component(Component(
                name=run.member.name, group=run.ctx.group, host=host, pid=os.getpid(), started_at=now,
                heartbeat_at=now, interval_s=run.ctx.settings.interval_s, last_run_at=None))
        except StoreError as e:
            run.ctx.log.warning("cannot register in the components table: %s", e)
    while True:
        await trio.sleep(COMPONENT_HEARTBEAT_S)
        for run in runs:
            try:
                await store.heartbeat_component(run.member.name, time.time(), run.ctx.state.get("last_run_at"))
            except StoreError as e:
                run.ctx.log.warning("component heartbeat failed: %s", e)

