"""What the node knows about each group, as frozen snapshots for readers
(status command, metrics collectors) that must not touch live state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import cgroups

GroupState = Literal["starting", "up", "backing-off", "gave-up", "stopping", "stopped"]


@dataclass(frozen=True)
class GroupSnapshot:
    name: str
    members: tuple[str, ...]
    state: GroupState
    pid: int | None
    restarts: int
    start_time: float | None  # UNIX time the current process started
    last_exit: str | None  # "killed by SIGKILL: OOM at limit 64 MiB", ...
    cgroup: cgroups.Cgroup | None  # None in degraded mode (no cgroups)
    metrics_socket: str | None  # where the child serves its own metrics page

    @property
    def up(self) -> bool:
        return self.state == "up"
