"""One stats snapshot of a group: the Stats object and where each value comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _v1, _v2
from ._files import Reader, parse_pids, read_bytes


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of one group, read in one go. Bytes and seconds, whatever the kernel's unit.

    Every field is ``None`` when this kernel or layout does not give it (the
    file is missing, or the controller is not available to the group);
    ``memory_limit_bytes`` and ``pids_max`` are also ``None`` when unlimited.
    Counters (events, seconds) only grow while the group exists.
    """

    # memory: v2 memory.current/peak/max/stat/events; v1 memory.usage_in_bytes, ...
    memory_usage_bytes: int | None = None
    #: usage minus inactive_file: what the kernel could not easily reclaim (as cAdvisor/kubelet count it).
    memory_working_set_bytes: int | None = None
    #: highest usage seen; v2 memory.peak needs kernel 5.19, v1 memory.max_usage_in_bytes.
    memory_peak_bytes: int | None = None
    memory_limit_bytes: int | None = None
    memory_anon_bytes: int | None = None
    #: page cache, including shmem/tmpfs.
    memory_file_bytes: int | None = None
    memory_kernel_bytes: int | None = None
    memory_sock_bytes: int | None = None
    memory_shmem_bytes: int | None = None
    memory_events_low: int | None = None
    memory_events_high: int | None = None
    #: times usage was about to go over the limit (v1: memory.failcnt).
    memory_events_max: int | None = None
    memory_events_oom: int | None = None
    memory_events_oom_kill: int | None = None
    # cpu: cpu.stat (µs) on v2 and hybrid, cpuacct.usage (ns) and cpuacct.stat (ticks) on v1
    cpu_usage_seconds: float | None = None
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    #: time throttled by the group's own cpu.max; only with the cpu controller on.
    cpu_throttled_seconds: float | None = None
    # pressure stall information, "total=" of *.pressure (µs), cgroup v2 only
    pressure_cpu_some_seconds: float | None = None
    pressure_cpu_full_seconds: float | None = None
    pressure_memory_some_seconds: float | None = None
    pressure_memory_full_seconds: float | None = None
    pressure_io_some_seconds: float | None = None
    pressure_io_full_seconds: float | None = None
    # pids
    pids_current: int | None = None
    pids_max: int | None = None
    # io, all devices
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None


@dataclass(frozen=True)
class Sources:
    """Where a group's files are: the directory per hierarchy, or None.

    Decided once per group from which hierarchies exist: a controller bound
    to a v1 hierarchy is never also on cgroup v2, so "a v1 memory dir
    exists" means "memory comes from v1" without trying the v2 file.
    """

    unified: str | None
    memory: str | None = None
    cpu: str | None = None
    cpuacct: str | None = None
    pids: str | None = None
    blkio: str | None = None
    freezer: str | None = None
    procs_dirs: tuple[str, ...] = ()


#: The parts of a snapshot, to read fewer files when only some are wanted (see Cgroup.stats):
#: memory (usage, working set, peak, limit, OOM kills), memory_detail (anon, file, kernel, sock,
#: shmem, the other memory events), cpu (usage, user, system, throttled), pressure, pids, io.
SECTIONS = frozenset({"memory", "memory_detail", "cpu", "pressure", "pids", "io"})


def read_stats(src: Sources, read: Reader = read_bytes, sections: frozenset[str] = SECTIONS) -> Stats:
    """Read ``sections`` once; missing files and sections not asked for give ``None`` fields."""
    if not sections <= SECTIONS:
        unknown = sections - SECTIONS
        raise ValueError(f"unknown stats sections {sorted(unknown)}; known: {sorted(SECTIONS)}")
    values: dict[str, Any] = {}
    unified = src.unified

    if "memory" in sections or "memory_detail" in sections:
        detail = "memory_detail" in sections
        if src.memory is not None:
            values.update(_v1.read_memory(src.memory, read, detail=detail))
        elif unified is not None:
            values.update(_v2.read_memory(unified, read, detail=detail))
        if "memory" not in sections:  # the detail alone: drop what was read with it
            for key in _MEMORY_CORE:
                values.pop(key, None)
    if "cpu" in sections:
        _read_cpu(src, read, values)
    if "pressure" in sections and unified is not None:
        # Pressure stall information exists per cgroup on cgroup v2 only.
        values.update(_v2.read_pressure(unified, read))
    if "pids" in sections:
        _read_pids(src, read, values)
    if "io" in sections:
        if src.blkio is not None:
            values.update(_v1.read_io(src.blkio, read))
        elif unified is not None:
            values.update(_v2.read_io(unified, read))
    return Stats(**values)


_MEMORY_CORE = ("memory_usage_bytes", "memory_working_set_bytes", "memory_peak_bytes", "memory_limit_bytes",
                "memory_events_oom_kill")


def _read_cpu(src: Sources, read: Reader, values: dict[str, Any]) -> None:
    unified = src.unified

    # In hybrid mode cpu.stat of the cgroup2 tree gives usage/user/system in µs
    # even with no controller there; it is more precise than cpuacct's ticks.
    if unified is not None:
        values.update(_v2.read_cpu(unified, throttling=src.cpu is None, read=read))
    elif src.cpuacct is not None:
        values.update(_v1.read_cpuacct(src.cpuacct, read))
    if src.cpu is not None:
        values["cpu_throttled_seconds"] = _v1.read_throttled_seconds(src.cpu, read)


def _read_pids(src: Sources, read: Reader, values: dict[str, Any]) -> None:
    if src.pids is not None:
        values.update(_v1.read_pids(src.pids, read))
    elif src.unified is not None:
        values.update(_v2.read_pids(src.unified, read))
    if values.get("pids_current") is None:
        # v1 without a pids hierarchy (or v2 without the pids controller):
        # count the processes instead.
        values["pids_current"] = _count_procs(src.procs_dirs, read)


def _count_procs(dirs: tuple[str, ...], read: Reader) -> int | None:
    for d in dirs:
        data = read(d + "/cgroup.procs")
        if data is not None:
            return len(parse_pids(data.decode("ascii", "replace")))
    return None
