"""Running one claimed build: its steps as shell processes, their output as events.

Each step is ``/bin/sh -c STEP`` in the build's directory, stdout and stderr
merged, in a process group of its own (and the build's cgroup where the host
allows), as the build user with the build's own environment (``_sandbox``).
Output is sent to the gateway in batches as ``log`` events
(``{"output": text, "step": i}``); the answer to each batch says whether the
build was stopped on the server (aborted, or failed by the build-tracker), and
then the build's processes are killed.

The build ends one of these ways:

- every step exited 0: ``succeeded``; a step exited non-zero: ``failed``
  (later steps do not run);
- it ran past its timeout: killed, ``failed`` with "timed out after 10m";
- the server stopped it (abort): killed; the server already has the status;
- the worker was asked to stop: killed, ``errored`` with a message saying so;
- a step could not be started at all: ``errored``.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from web_node.members.build_tracker import short_duration, timed_out_message
from web_node.privilege import RunAs, drop_argv
from web_node.worker._client import ClaimedBuild, GatewayClient, GatewayError, GatewayRefused
from web_node.worker._containment import BuildCage, signal_group
from web_node.worker._sandbox import build_env, make_build_dir, remove_build_dir

READ_CHUNK = 65536
# Output is sent at most this often, and as soon as this much is waiting.
FLUSH_INTERVAL_S = 0.25
FLUSH_BYTES = 256 * 1024
# One log event carries at most this much text; more becomes several events.
MAX_EVENT_TEXT = 64 * 1024
# Output text in one batch sent to the gateway (see EventQueue.take).
MAX_BATCH_TEXT = 1024 * 1024
# Unsent output kept while the gateway is unreachable; beyond it the oldest is dropped (and said so).
MAX_BUFFERED_BYTES = 16 * 1024 * 1024
# When a step's shell exited but something it started still holds the output pipe open.
PIPE_DRAIN_S = 2.0
RETRY_MAX_S = 5.0
# How long unsent output, then the result, are retried while the gateway is away (each).
PATIENCE_S = 60.0
HURRIED_PATIENCE_S = 5.0
PLACEMENT_FAILED = 125  # cgroups.PLACEMENT_FAILED: the exit status of the placement shim that failed


@dataclass
class StopRequest:
    """Why the build is being stopped early; set before its cancel scope is cancelled."""

    status: str | None  # final status to report; None: the server already decided (abort)
    message: str
    log_line: str
    hurry: bool = False  # the worker is stopping: give the gateway seconds, not a minute, to take the result


def _weight(event: dict[str, Any]) -> int:
    """What an event counts against MAX_BUFFERED_BYTES: its output text, or a nominal 64 bytes."""
    text = event["payload"].get("output")
    return max(len(text), 64) if isinstance(text, str) else 64


@dataclass
class EventQueue:
    """Events waiting to be sent, with consecutive output of one step merged."""

    events: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0
    dropped: int = 0
    changed: trio.Event = field(default_factory=trio.Event)  # set while events wait
    full: trio.Event = field(default_factory=trio.Event)  # set while FLUSH_BYTES or more wait

    def add(self, type_: str, payload: dict[str, Any]) -> None:
        last = self.events[-1] if self.events else None
        text = payload.get("output")
        if (type_ == "log" and last is not None and last["type"] == "log" and isinstance(text, str)
                and last["payload"].get("step") == payload.get("step")
                and len(last["payload"]["output"]) + len(text) <= MAX_EVENT_TEXT):
            self.size -= _weight(last)
            last["payload"]["output"] += text
            self.size += _weight(last)
        else:
            event = {"type": type_, "payload": dict(payload)}
            self.events.append(event)
            self.size += _weight(event)
        while self.size > MAX_BUFFERED_BYTES and len(self.events) > 1:
            self.size -= _weight(self.events.pop(0))
            self.dropped += 1
        self.changed.set()
        if self.size >= FLUSH_BYTES:
            self.full.set()

    def take(self, limit: int = 500) -> list[dict[str, Any]]:
        """The next batch: at most ``limit`` events and MAX_BATCH_TEXT of output (at least one event).

        Invariant: a batch's JSON stays under the gateway's SendBuildEvents body limit (8 MiB by
        default) even when every character is escaped six-fold (``\\u0000``), so a loud build is
        never refused as too large and killed."""
        count, text = 0, 0
        for event in self.events[:limit]:
            text += _weight(event)
            if count and text > MAX_BATCH_TEXT:
                break
            count += 1
        batch, self.events = self.events[:count], self.events[count:]
        self.size -= sum(_weight(e) for e in batch)
        if not self.events:
            self.changed = trio.Event()
        if self.size < FLUSH_BYTES:
            self.full = trio.Event()
        return batch

    def put_back(self, batch: list[dict[str, Any]]) -> None:
        self.events[:0] = batch
        self.size += sum(_weight(e) for e in batch)
        self.changed.set()


class BuildRun:
    """One claimed build, from its first step to the report of its result."""

    def __init__(self, build: ClaimedBuild, client: GatewayClient, cage: BuildCage, work_dir: str,
                 log: logging.LoggerAdapter[logging.Logger], *, kill_grace_s: float, keep_dir: bool = False,
                 user: RunAs | None = None) -> None:
        self.build = build
        self.client = client
        self.cage = cage
        self.dir = os.path.join(work_dir, f"build-{build.id}")
        self.log = log
        self.kill_grace_s = kill_grace_s
        self.keep_dir = keep_dir
        self.user = user  # None: steps run as the worker's own user
        self.pgid: int | None = None  # the running step's process group
        self.queue = EventQueue()
        self.scope = trio.CancelScope()
        self.stop_request: StopRequest | None = None
        self.server_status: str | None = None
        self._send_lock = trio.Lock()
        self._send_failures = 0
        # Batches are numbered 1, 2, 3 ... per build; one the gateway may have stored (its answer was lost)
        # is re-sent as it was, same number, same events, so that the gateway stores it once.
        self._batch_seq = 0
        self._unanswered: tuple[int, list[dict[str, Any]]] | None = None
        self._placement_failed = False

    # -- stopping from outside -------------------------------------------------

    def stop(self, request: StopRequest) -> None:
        """Stop the build now (its processes get SIGTERM, then SIGKILL after the grace)."""
        if self.stop_request is None:
            self.stop_request = request
        self.scope.cancel()

    async def kill_now(self) -> None:
        """SIGKILL every process of the build at once, and remove its cgroup (the node is gone: nobody waits)."""
        await self.cage.kill_all(self.pgid)
        await self.cage.close()

    def server_stopped(self, status: str) -> None:
        self.server_status = status
        self.stop(StopRequest(None, f"the server ended this build ({status or 'finished'})",
                              f"was ended on the server ({status or 'finished'}): killing its processes"))

    # -- the whole build ---------------------------------------------------------

    async def run(self) -> str:
        """Run the build and report its result; returns the final status as this worker saw it."""
        b = self.build
        started = time.monotonic()
        self.log.info("%s: starting %d step(s) in %s (%s)", b.label, len(b.steps), self.dir, self.cage.description)
        status, message = "errored", None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop)
                self.queue.add("status", {"status": "started", "worker": self.client.worker})
                with self.scope:
                    self.scope.deadline = trio.current_time() + b.timeout_s
                    try:
                        status, message = await self._run_steps()
                    except Exception as e:  # a build that cannot start is errored; the worker goes on
                        self.log.error("%s could not be run: %s: %s", b.label, type(e).__name__, e)
                        status, message = "errored", f"worker {self.client.worker} could not run this build: {e}"
                if self.scope.cancelled_caught:
                    request = self.stop_request or StopRequest(
                        "failed", timed_out_message(b.timeout_s), f"timed out after {short_duration(b.timeout_s)}: killed")
                    self.log.warning("%s %s", b.label, request.log_line)
                    status, message = request.status or (self.server_status or "aborted"), request.message
                    if request.status is not None:
                        self.queue.add("log", {"output": f"\n{message}\n", "step": None})
                await self._flush_all()
                nursery.cancel_scope.cancel()
        finally:
            await self._cleanup()
        if self.server_status is None:
            await self._report(status, message)
        self.log.info("%s %s after %.1f s", b.label, status, time.monotonic() - started)
        return status

    async def _run_steps(self) -> tuple[str, str | None]:
        await trio.to_thread.run_sync(make_build_dir, self.dir, self.user)
        env = build_env(self.dir, self.user, {
            "BUILD_ID": str(self.build.id), "BUILD_PIPELINE_NAME": self.build.pipeline,
            "BUILD_JOB_NAME": self.build.job, "BUILD_WORKER": self.client.worker})
        for index, step in enumerate(self.build.steps):
            code = await self._run_step(index, step.run, env)
            if code == PLACEMENT_FAILED and self._placement_failed:
                return "errored", f"step {index + 1} could not be placed in the build's cgroup (see the step's output)"
            if code != 0:
                self.queue.add("log", {"output": f"\nstep {index + 1} {_describe_exit(code)}\n", "step": index})
                return "failed", None
        return "succeeded", None

    async def _run_step(self, index: int, command: str, env: dict[str, str]) -> int:
        shell = ["/bin/sh", "-c", command]
        # Placement (root) first, then the drop: the build cannot leave its cgroup.
        argv = self.cage.argv(drop_argv(self.user, shell) if self.user is not None else shell)
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=self.dir, env=env, process_group=0,
        )
        # The leader's pid is the group id; we never reap it before the group is dealt with.
        pgid = self.pgid = proc.pid
        pidfd = os.pidfd_open(proc.pid)
        try:
            assert proc.stdout is not None
            async with trio.open_nursery() as nursery:
                pumped = trio.Event()
                nursery.start_soon(self._pump, proc.stdout, index, pumped)
                await trio.lowlevel.wait_readable(pidfd)  # the shell exited; a zombie until reaped
                # What the step left running (background jobs, daemons) ends with the step; this also
                # closes the output pipe they may hold.
                await self.cage.kill_all(pgid)
                with trio.move_on_after(PIPE_DRAIN_S):
                    await pumped.wait()
                nursery.cancel_scope.cancel()
            return await proc.wait()
        finally:
            with trio.CancelScope(shield=True):
                await self._stop_step(proc, pgid, pidfd)
                self.pgid = None
                trio.lowlevel.notify_closing(pidfd)
                os.close(pidfd)
                if proc.stdout is not None:
                    await proc.stdout.aclose()

    async def _stop_step(self, proc: trio.Process, pgid: int, pidfd: int) -> None:
        """The one way a step is stopped early: SIGTERM to its group, the grace, then SIGKILL to all of the build."""
        if proc.returncode is not None:
            return
        signal_group(pgid, signal.SIGTERM)
        with trio.move_on_after(self.kill_grace_s):
            await trio.lowlevel.wait_readable(pidfd)
        await self.cage.kill_all(pgid)
        await proc.wait()

    async def _pump(self, stream: trio.abc.ReceiveStream, index: int, done: trio.Event) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        first = True
        try:
            while True:
                data = await stream.receive_some(READ_CHUNK)
                if not data:
                    break
                if first and self.cage.cgroup is not None:
                    # The placement shim's own words (it exits 125 then): a step may exit 125 by itself too.
                    self._placement_failed = b"cgroups-place: " in data
                first = False
                text = decoder.decode(data)
                if text:
                    self.queue.add("log", {"output": text, "step": index})
            tail = decoder.decode(b"", final=True)
            if tail:
                self.queue.add("log", {"output": tail, "step": index})
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            done.set()

    # -- talking to the gateway --------------------------------------------------

    async def _send_loop(self) -> None:
        # Output after a quiet spell goes out at once; what follows within FLUSH_INTERVAL_S is batched.
        while True:
            if self._unanswered is None:
                await self.queue.changed.wait()
            await self._send_once()
            with trio.move_on_after(FLUSH_INTERVAL_S):
                await self.queue.full.wait()

    async def _send_once(self) -> bool:
        """Send what is queued; False when the gateway could not take it (kept for later)."""
        async with self._send_lock:
            if self._unanswered is not None:
                seq, batch = self._unanswered
            else:
                if self.queue.dropped:
                    dropped, self.queue.dropped = self.queue.dropped, 0
                    self.queue.events.insert(0, {"type": "log", "payload": {
                        "output": f"\n[web-node worker: {dropped} output chunk(s) lost while the gateway was unreachable]\n",
                        "step": None}})
                batch = self.queue.take()
                if not batch:
                    return True
                self._batch_seq += 1
                seq = self._batch_seq
            try:
                answer = await self.client.send_events(self.build.id, batch, seq)
            except GatewayError as e:
                self._unanswered = (seq, batch)
                self._send_failures += 1
                if self._send_failures % 10 == 1:
                    self.log.warning("%s: cannot send output now (%s); retrying every second", self.build.label, e)
                await trio.sleep(1.0)
                return False
            except GatewayRefused as e:
                # 404/409: the build is gone or not ours any more; either way it must stop.
                self._unanswered = None
                self.log.warning("%s: the gateway refused its output: %s", self.build.label, e)
                self.server_stopped("gone")
                return True
            self._unanswered = None
            self._send_failures = 0
            if answer.abort:
                self.server_stopped(answer.status)
            return True

    @property
    def _patience_s(self) -> float:
        """How long unsent output and the result are retried while the gateway is away."""
        return HURRIED_PATIENCE_S if self.stop_request is not None and self.stop_request.hurry else PATIENCE_S

    async def _flush_all(self) -> None:
        """Send everything still queued, retrying for a while if the gateway is briefly away."""
        with trio.move_on_after(self._patience_s):
            while True:
                # Taking the lock waits for a batch the send loop has in flight: only then does an empty
                # queue mean that everything was sent (cancelling that send would lose the batch).
                async with self._send_lock:
                    if not self.queue.events and not self.queue.dropped and self._unanswered is None:
                        return
                await self._send_once()

    async def _report(self, status: str, message: str | None) -> None:
        delay = 0.5
        patience_s = self._patience_s
        with trio.move_on_after(patience_s) as scope:
            while True:
                try:
                    doc = await self.client.finish(self.build.id, status, message)
                    if not doc.get("accepted", True):
                        final = (doc.get("build") or {}).get("status")
                        self.log.info("%s had already ended on the server as %s", self.build.label, final)
                    return
                except GatewayError as e:
                    self.log.warning("%s: cannot report %s yet (%s); retrying", self.build.label, status, e)
                except GatewayRefused as e:
                    self.log.warning("%s: the gateway refused its result %s: %s", self.build.label, status, e)
                    return
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        if scope.cancelled_caught:
            self.log.error("%s: could not report %s to the gateway within %.0f s; the build-tracker will end it",
                           self.build.label, status, patience_s)

    async def _cleanup(self) -> None:
        with trio.CancelScope(shield=True):
            await self.cage.close()
            if not self.keep_dir:
                await trio.to_thread.run_sync(remove_build_dir, self.dir)


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"
