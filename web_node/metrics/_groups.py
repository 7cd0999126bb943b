"""Per-group metrics: what the supervisor knows plus the group's cgroup files, read at scrape time.

Every value of :class:`cgroups.Stats` may be None (the file is missing on
this kernel or layout, or the controller is not available to the group): the
sample is then left out rather than exported as a misleading 0. The memory
limit is also left out when the group is unlimited.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import get_args

import cgroups
from web_node.metrics._exposition import PageWriter, format_value, labels
from web_node.supervisor import GroupSnapshot, GroupState

#: Every state a group can be in, for web_node_group_state (one sample each, 1 for the current one).
GROUP_STATES: tuple[str, ...] = get_args(GroupState)

#: The group label of the page ``--in-process`` serves: the one process and its own cgroup.
IN_PROCESS_GROUP = "in-process"

log = logging.getLogger("web_node.metrics")

#: What the page shows of a cgroup: read nothing else at scrape time (no memory breakdown, no I/O).
STATS_SECTIONS = frozenset({"memory", "cpu", "pressure", "pids"})


@dataclass(frozen=True)
class GroupReading:
    """One group at scrape time: the supervisor's snapshot and its cgroup's stats (None: no cgroup or unreadable)."""

    snapshot: GroupSnapshot
    stats: cgroups.Stats | None


def read_stats(snapshots: Iterable[GroupSnapshot], errors: dict[str, int] | None = None) -> list[GroupReading]:
    """Read each group's cgroup once. A group whose cgroup cannot be read keeps
    its supervisor metrics; the failure is counted in ``errors`` (group -> count) and logged."""
    out = []
    for snap in snapshots:
        stats = None
        if snap.cgroup is not None:
            try:
                stats = snap.cgroup.stats(STATS_SECTIONS)
            except (OSError, cgroups.CgroupError) as e:
                log.warning("metrics: cannot read the cgroup of group %s (%s): %s; "
                            "its cgroup metrics are left out of this scrape",
                            snap.name, snap.cgroup.path() if snap.cgroup.paths() else "-", e)
                if errors is not None:
                    errors[snap.name] = errors.get(snap.name, 0) + 1
        out.append(GroupReading(snap, stats))
    return out


_SUPERVISOR_HELP = {
    "web_node_group_up": "1 when the group's process is running and reported ready, else 0",
    "web_node_group_state": "1 for the group's current supervisor state (starting, up, backing-off, gave-up, stopping, stopped)",
    "web_node_group_restarts_total": "Times the supervisor restarted the group's process",
    "web_node_group_start_time_seconds": "UNIX time the group's current (or last) process started",
}

#: Families read from the cgroup: (name, type, help, ((extra label, Stats field), ...)).
_CGROUP_FAMILIES: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...] = (
    ("web_node_group_memory_usage_bytes", "gauge",
     "Memory charged to the group's cgroup, page cache included (memory.current / memory.usage_in_bytes)",
     (("", "memory_usage_bytes"),)),
    ("web_node_group_memory_working_set_bytes", "gauge",
     "Memory usage minus inactive file cache: what the kernel cannot easily reclaim", (("", "memory_working_set_bytes"),)),
    ("web_node_group_memory_peak_bytes", "gauge",
     "Highest memory usage of the cgroup (memory.peak / memory.max_usage_in_bytes)", (("", "memory_peak_bytes"),)),
    ("web_node_group_memory_limit_bytes", "gauge",
     "The group's memory limit (memory.max); absent when unlimited", (("", "memory_limit_bytes"),)),
    ("web_node_group_oom_kills_total", "counter",
     "Processes of the group killed by the kernel's OOM killer", (("", "memory_events_oom_kill"),)),
    ("web_node_group_cpu_seconds_total", "counter", "CPU time used by the group's processes, by mode (user, system)",
     (('mode="user"', "cpu_user_seconds"), ('mode="system"', "cpu_system_seconds"))),
    ("web_node_group_cpu_throttled_seconds_total", "counter",
     "Time the group was throttled by its cpu_max", (("", "cpu_throttled_seconds"),)),
    ("web_node_group_pressure_waiting_seconds_total", "counter",
     "Time some of the group's tasks waited for a resource (PSI 'some' total)",
     (('resource="cpu"', "pressure_cpu_some_seconds"), ('resource="memory"', "pressure_memory_some_seconds"),
      ('resource="io"', "pressure_io_some_seconds"))),
    # "full" for cpu is defined for cgroups (all tasks stalled, e.g. throttled) since kernel 5.13.
    ("web_node_group_pressure_stalled_seconds_total", "counter",
     "Time all of the group's tasks were stalled on a resource (PSI 'full' total)",
     (('resource="cpu"', "pressure_cpu_full_seconds"), ('resource="memory"', "pressure_memory_full_seconds"),
      ('resource="io"', "pressure_io_full_seconds"))),
    ("web_node_group_pids", "gauge", "Processes and threads in the group's cgroup", (("", "pids_current"),)),
    ("web_node_group_pids_limit", "gauge", "The group's pids limit (pids.max); absent when unlimited", (("", "pids_max"),)),
)


def write_group_families(writer: PageWriter, readings: Sequence[GroupReading]) -> None:
    """The web_node_group_* families of SPEC.md for these groups.

    Each family's samples are one comprehension: with 50 groups this is
    about a thousand samples per scrape, and a call per sample was a tenth
    of the node's scrape time.
    """
    rows = [(_group_labels(r.snapshot.name), r.snapshot, r.stats) for r in readings]
    name = "web_node_group_up"
    writer.family(name, "gauge", _SUPERVISOR_HELP[name])
    writer.lines("".join([f"{name}{{{g}}} {1 if snap.up else 0}\n" for g, snap, _ in rows]))
    name = "web_node_group_state"
    writer.family(name, "gauge", _SUPERVISOR_HELP[name])
    writer.lines("".join([_state_lines(g, snap.state) for g, snap, _ in rows]))
    name = "web_node_group_restarts_total"
    writer.family(name, "counter", _SUPERVISOR_HELP[name])
    writer.lines("".join([f"{name}{{{g}}} {snap.restarts:d}\n" for g, snap, _ in rows]))
    name = "web_node_group_start_time_seconds"
    writer.family(name, "gauge", _SUPERVISOR_HELP[name])
    writer.lines("".join([f"{name}{{{g}}} {format_value(snap.start_time)}\n"
                          for g, snap, _ in rows if snap.start_time is not None]))
    for name, kind, help_text, fields in _CGROUP_FAMILIES:
        writer.family(name, kind, help_text)
        for extra, field_name in fields:
            sep = "," if extra else ""
            writer.lines("".join([f"{name}{{{g}{sep}{extra}}} {format_value(value)}\n"
                                  for g, _, stats in rows
                                  if stats is not None and (value := getattr(stats, field_name)) is not None]))


@functools.lru_cache(maxsize=1024)
def _group_labels(group: str) -> str:
    return labels(group=group)


@functools.lru_cache(maxsize=4096)
def _state_lines(group_labels: str, current: str) -> str:
    return "".join(f'web_node_group_state{{{group_labels},state="{state}"}} {1 if state == current else 0}\n'
                   for state in GROUP_STATES)


def write_scrape_errors(writer: PageWriter, groups: Iterable[str], errors: dict[str, int]) -> None:
    name = "web_node_scrape_errors_total"
    writer.family(name, "counter",
                  "Scrapes in which part of a group's metrics (its child's page, its cgroup) could not be had; the log says why")
    for group in groups:
        writer.sample(name, labels(group=group), errors.get(group, 0))


def own_cgroup(layout: cgroups.Layout, name: str = IN_PROCESS_GROUP) -> cgroups.Cgroup | None:
    """The cgroup this process is in, in every hierarchy of ``layout`` (None when the host has none).

    In a container that is the container's cgroup; on a host it may be a
    cgroup shared with other processes (a login session, a service): its
    numbers then describe all of them, not this process alone.
    """
    if layout.kind == "none":
        return None
    paths = {key: d for key in layout.hierarchies() if (d := layout.own_dir(key)) is not None}
    return cgroups.Cgroup(name, paths) if paths else None
