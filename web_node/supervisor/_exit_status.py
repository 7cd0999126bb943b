"""Exit statuses decoded once: a child's end, in words an operator can act on."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from web_node.units import format_size


@dataclass(frozen=True)
class ExitFacts:
    text: str  # "exited with status 3", "killed by SIGKILL: OOM at limit 64 MiB"
    failed: bool  # anything but a clean exit 0
    oom_killed: bool
    signal_name: str | None = None
    status: int | None = None


def describe_exit(returncode: int, *, oom_kills: int = 0, memory_limit_bytes: int | None = None) -> ExitFacts:
    """``returncode`` as subprocess gives it (negative: killed by that signal).

    ``oom_kills`` is how many OOM kills the kernel counted in the group's
    cgroup while this process ran (memory.events oom_kill or v1
    memory.oom_control); a SIGKILL with a positive count is the OOM killer's.
    """
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if oom_kills > 0 and -returncode == signal.SIGKILL:
            where = (f"OOM at limit {format_size(memory_limit_bytes)}" if memory_limit_bytes is not None else
                     "OOM, although the group has no memory_max: a parent cgroup or the whole machine ran out of memory")
            return ExitFacts(f"killed by SIGKILL: {where}", failed=True, oom_killed=True, signal_name=name)
        return ExitFacts(f"killed by {name}", failed=True, oom_killed=False, signal_name=name)
    # The placement shim exits 125 when it could not enter the cgroup; a shell reports a
    # signal death of an exec'd child as 128+N, which we never see since the shim execs.
    if returncode == 125:
        return ExitFacts("exited with status 125: could not be placed in its cgroup (see the line above)",
                         failed=True, oom_killed=False, status=125)
    if returncode == 0:
        return ExitFacts("exited cleanly (status 0)", failed=False, oom_killed=oom_kills > 0, status=0)
    text = f"exited with status {returncode}"
    if returncode == 2:
        text += " (configuration refused by the child)"
    return ExitFacts(text, failed=True, oom_killed=oom_kills > 0, status=returncode)
