"""CPU time per member and per endpoint, finer than a process.

Several members may share one process, and one http member serves many
endpoints from one trio thread, so the kernel's per-cgroup CPU cannot tell
them apart. A :class:`trio.abc.Instrument` can: trio calls it right after
each *task step* (the stretch of Python a task runs between two
checkpoints). :class:`CpuInstrument` reads the thread's CPU clock there and
adds the CPU time since the previous step to the :class:`Account` held by
the task's context variable:

- ``enter_member`` sets the variable to the member's account at the start of
  the member's task; every task spawned below it (hypercorn's connection
  tasks, a periodic loop) inherits it;
- the ASGI wrapper sets it to the endpoint's account for the task that
  handles one request (and the tasks that task spawns).

What is not counted: work in other threads (``trio.to_thread``, e.g. SQLite
calls), time the loop sleeps waiting for I/O, and steps of tasks that belong
to no member (trio's own). Those still show in the group's cgroup CPU;
``web_node_member_cpu_seconds_total`` is the part spent in the member's own
trio tasks.
"""

from __future__ import annotations

import contextvars
import os
import time

import trio

#: Set to 0 to switch task accounting off (e.g. to measure what it costs).
ENV_TASK_ACCOUNTING = "WEB_NODE_TASK_ACCOUNTING"


def task_accounting_wanted() -> bool:
    return os.environ.get(ENV_TASK_ACCOUNTING, "1").strip().lower() not in ("0", "false", "no", "off")


class Account:
    """CPU seconds charged so far to one member or one endpoint of a member."""

    __slots__ = ("endpoint", "member", "seconds")

    def __init__(self, member: str, endpoint: str | None = None) -> None:
        self.member = member
        self.endpoint = endpoint
        self.seconds = 0.0

    def __repr__(self) -> str:
        return f"Account({self.member!r}, {self.endpoint!r}, {self.seconds:.6f})"


class CpuInstrument(trio.abc.Instrument):
    """Charges the thread CPU time of each task step to the task's account.

    One hook, one clock read a step: the CPU time since the end of the
    previous step is charged to the task whose step just ended. That
    interval is the step itself plus the run loop's own work just before it
    (picking the task, handling I/O events, the instrument call), so the
    loop's overhead is shared out in proportion to steps. Time the thread
    sleeps in epoll does not count: the clock is the thread's CPU time.
    Two hooks (before and after each step) would leave the loop's work out,
    at twice the cost (trio's instrument dispatch is the larger part of it;
    measured in bench/bench_metrics.py).

    Tasks without an account (trio's own system tasks, anything started
    before ``enter_member``) are not charged.
    """

    def __init__(self, var: contextvars.ContextVar[Account | None]) -> None:
        self._var = var
        self._clock = time.thread_time
        self._last = self._clock()
        #: Task steps so far. Metrics state only changes in task steps, so a page made while this
        #: stood at N is still right while it does (see ProcessMetrics.render_blocks).
        self.steps = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        now = self._clock()
        # Read after the step: a step that set the variable (the ASGI wrapper's
        # first step) is charged to the account it set.
        account = task.context.get(self._var)
        if account is not None:
            account.seconds += now - self._last
        self._last = now
        self.steps += 1  # last: a page made before this reads the old count, and is made again
