"""cgroup v1 controllers (Documentation/admin-guide/cgroup-v1/*.rst).

Limits are written and single values read through cgroupspy's controller
objects (``MemoryController``, ``CpuController``), which know the v1 file
names and their "-1 means unlimited" convention. The stats snapshot reads the
same files with :func:`cgroups._files.read_bytes` instead: cgroupspy opens
each file in buffered text mode, which made a snapshot ~4x slower (130 µs for
seven memory files against ~35 µs, measured on this kind of machine).

Units: cpuacct.usage is nanoseconds, cpuacct.stat is USER_HZ clock ticks,
cpu.stat throttled_time is nanoseconds, memory files are bytes.
"""

from __future__ import annotations

import os
from typing import Any

from cgroupspy.controllers import CpuController, MemoryController
from cgroupspy.nodes import Node

from ._errors import CgroupControllerMissing, CgroupError
from ._files import (
    Reader,
    int_of,
    keyed_int,
    parse_blkio_bytes,
    read_bytes,
    read_int,
    write_error,
    write_text,
)
from ._limits import CPU_PERIOD_US, Limits, weight_to_shares
from ._units import CLOCK_TICKS_PER_S, NSEC_PER_S

#: A v1 memory limit at or above this is "no limit". The kernel shows
#: PAGE_COUNTER_MAX pages in bytes: 9223372036854771712 with 4 KiB pages,
#: 9223372036854710272 with 64 KiB pages. Anything from 2**62 up (4 EiB) is
#: no real limit on any machine.
UNLIMITED_THRESHOLD = 1 << 62


def _unlimited_to_none(value: int | None) -> int | None:
    if value is None or value >= UNLIMITED_THRESHOLD or value < 0:
        return None
    return value


def _controller_node(directory: str) -> Node:
    # A cgroupspy Node without parent: its full_path is the directory itself,
    # so a controller object reads and writes the files of that one cgroup.
    return Node(directory.encode())


def memory_controller(directory: str) -> Any:
    return MemoryController(_controller_node(directory))


def cpu_controller(directory: str) -> Any:
    return CpuController(_controller_node(directory))


# -- stats (fast path, no cgroupspy) -------------------------------------------


def read_memory(d: str, read: Reader = read_bytes, *, detail: bool = True) -> dict[str, Any]:
    """Usage, working set, peak, limit and OOM kills; with ``detail`` also the breakdown and failcnt."""
    usage = int_of(read(d + "/memory.usage_in_bytes"))
    stat = read(d + "/memory.stat")

    # total_* include descendants (the v1 "hierarchy" numbers); a leaf that a
    # child process split further would otherwise be undercounted.
    def total(key: str) -> int | None:
        value = keyed_int(stat, b"total_" + key.encode())
        return keyed_int(stat, key.encode()) if value is None else value

    inactive_file = total("inactive_file")
    values: dict[str, Any] = {
        # usage_in_bytes is the charge counter itself (slightly "fuzzy" per the
        # v1 docs, per-CPU batches); it is what the limit is enforced against.
        "memory_usage_bytes": usage,
        "memory_working_set_bytes": None if usage is None else max(0, usage - (inactive_file or 0)),
        "memory_peak_bytes": int_of(read(d + "/memory.max_usage_in_bytes")),
        # The kernel shows "no limit" as 9223372036854771712 (4 KiB pages).
        "memory_limit_bytes": _unlimited_to_none(int_of(read(d + "/memory.limit_in_bytes"))),
        # memory.oom_control has "oom_kill N" from kernel 4.13 on.
        "memory_events_oom_kill": keyed_int(read(d + "/memory.oom_control"), b"oom_kill"),
    }
    if detail:
        values.update({
            # v1 "rss" is anonymous memory (and swap cache); "cache" is page cache including shmem.
            "memory_anon_bytes": total("rss"),
            "memory_file_bytes": total("cache"),
            "memory_kernel_bytes": int_of(read(d + "/memory.kmem.usage_in_bytes")),
            "memory_sock_bytes": int_of(read(d + "/memory.kmem.tcp.usage_in_bytes")),
            "memory_shmem_bytes": total("shmem"),
            # v1 has no low/high/oom event counters. failcnt counts the times usage
            # hit the limit, which is what v2 memory.events "max" counts.
            "memory_events_max": int_of(read(d + "/memory.failcnt")),
        })
    return values


def read_cpuacct(d: str, read: Reader = read_bytes) -> dict[str, Any]:
    usage_ns = int_of(read(d + "/cpuacct.usage"))
    stat = read(d + "/cpuacct.stat")
    user, system = keyed_int(stat, b"user"), keyed_int(stat, b"system")
    return {
        "cpu_usage_seconds": None if usage_ns is None else usage_ns / NSEC_PER_S,
        # cpuacct.stat counts USER_HZ ticks, not nanoseconds.
        "cpu_user_seconds": None if user is None else user / CLOCK_TICKS_PER_S,
        "cpu_system_seconds": None if system is None else system / CLOCK_TICKS_PER_S,
    }


def read_throttled_seconds(d: str, read: Reader = read_bytes) -> float | None:
    # v1 cpu.stat (cpu hierarchy): nr_periods, nr_throttled, throttled_time (ns).
    throttled = keyed_int(read(d + "/cpu.stat"), b"throttled_time")
    return None if throttled is None else throttled / NSEC_PER_S


def read_pids(d: str, read: Reader = read_bytes) -> dict[str, Any]:
    return {"pids_current": int_of(read(d + "/pids.current")), "pids_max": int_of(read(d + "/pids.max"))}


def read_io(d: str, read: Reader = read_bytes) -> dict[str, Any]:
    # The throttle files count every bio whatever the I/O scheduler; the old
    # CFQ-only blkio.io_service_bytes files are gone from current kernels.
    for name in ("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_service_bytes",
                 "blkio.io_service_bytes_recursive"):
        data = read(f"{d}/{name}")
        if data is not None:
            read_total, write_total = parse_blkio_bytes(data.decode("ascii", "replace"))
            return {"io_read_bytes": read_total, "io_write_bytes": write_total}
    return {"io_read_bytes": None, "io_write_bytes": None}


# -- single values (cgroupspy) ---------------------------------------------------


def memory_limit_bytes(d: str) -> int | None:
    value = memory_controller(d).get_content("limit_in_bytes")
    return _unlimited_to_none(value) if isinstance(value, int) else None


def oom_kill_count(d: str) -> int | None:
    content = memory_controller(d).get_content("oom_control")
    if isinstance(content, dict):
        value = content.get("oom_kill")
        return value if isinstance(value, int) else None
    return None


# -- limits (cgroupspy) ------------------------------------------------------------


def _set(ctl: Any, attr: str, filename: str, value: int | None, *, controller: str, setting: str) -> None:
    """Set one cgroupspy property, with our errors (and no file created on a fixture)."""
    path = os.path.join(ctl.node.full_path.decode(), filename)
    if not os.path.exists(path):
        raise CgroupControllerMissing(
            f"cannot set {setting}: {path} does not exist; the v1 {controller} hierarchy of this "
            f"kernel lacks that file",
            controller=controller,
            setting=setting,
            path=path,
        )
    try:
        setattr(ctl, attr, value)  # cgroupspy writes None as -1: "no limit"
    except OSError as exc:
        raise write_error(exc, path=path, value=value, setting=setting) from None


def write_memory_limits(d: str, limits: Limits) -> None:
    if limits.memory_low_bytes is not None:
        raise CgroupControllerMissing(
            f"cannot set memory_low_bytes on {d}: cgroup v1 has no memory.low (best-effort protection); "
            f"it needs the cgroup v2 memory controller. Leave memory_low unset on this host",
            controller="memory",
            setting="memory_low_bytes",
            path=d,
        )
    mem = memory_controller(d)
    if limits.memory_high_bytes is not None:
        # The closest v1 knob: the soft limit is only enforced under global memory
        # pressure (v2 memory.high throttles as soon as usage crosses it).
        _set(mem, "soft_limit_in_bytes", "memory.soft_limit_in_bytes", limits.memory_high_bytes,
             controller="memory", setting="memory_high_bytes")
    if limits.memory_max_bytes is None and limits.swap_max_bytes is None:
        return

    # v1 limits memory+swap together (memory.memsw.limit_in_bytes), and the
    # kernel refuses (EINVAL) any moment where memsw < limit_in_bytes.
    memsw_path = d + "/memory.memsw.limit_in_bytes"
    has_memsw = os.path.exists(memsw_path)
    current_mem = _unlimited_to_none(read_int(d + "/memory.limit_in_bytes"))
    current_memsw = _unlimited_to_none(read_int(memsw_path)) if has_memsw else None
    new_mem = limits.memory_max_bytes if limits.memory_max_bytes is not None else current_mem

    new_memsw: int | None = None
    if limits.swap_max_bytes is not None:
        if not has_memsw:
            raise CgroupControllerMissing(
                f"cannot set swap_max_bytes: {memsw_path} does not exist; this kernel does not account "
                f"swap per cgroup (CONFIG_MEMCG_SWAP off, or booted without swapaccount=1)",
                controller="memory",
                setting="swap_max_bytes",
                path=memsw_path,
            )
        if new_mem is None:
            raise CgroupError(
                f"cannot set swap_max_bytes on {d} without a memory limit: cgroup v1 limits memory plus "
                f"swap together (memory.memsw.limit_in_bytes); set memory_max_bytes too",
                path=memsw_path,
            )
        new_memsw = new_mem + limits.swap_max_bytes
    elif current_memsw is not None and new_mem is not None:
        # Keep the swap allowance the group had.
        new_memsw = new_mem + max(0, current_memsw - (current_mem or 0))

    # Order the two writes so that memsw >= limit holds after each one.
    mem_first = new_memsw is None or current_memsw is None or new_mem is None or new_mem <= current_memsw
    steps: list[tuple[str, str, int, str]] = []
    if limits.memory_max_bytes is not None:
        # Written values are rounded to whole pages by the kernel.
        steps.append(("limit_in_bytes", "memory.limit_in_bytes", limits.memory_max_bytes, "memory_max_bytes"))
    if new_memsw is not None:
        step = ("memsw_limit_in_bytes", "memory.memsw.limit_in_bytes", new_memsw, "swap_max_bytes")
        steps.insert(len(steps) if mem_first else 0, step)
    for attr, filename, value, setting in steps:
        _set(mem, attr, filename, value, controller="memory", setting=setting)


def write_cpu_limits(d: str, limits: Limits) -> None:
    cpu = cpu_controller(d)
    quota = limits.cpu_quota_us()
    if quota is not None:
        _set(cpu, "cfs_period_us", "cpu.cfs_period_us", CPU_PERIOD_US, controller="cpu", setting="cpu_max_cores")
        _set(cpu, "cfs_quota_us", "cpu.cfs_quota_us", quota, controller="cpu", setting="cpu_max_cores")
    if limits.cpu_weight is not None:
        _set(cpu, "shares", "cpu.shares", weight_to_shares(limits.cpu_weight), controller="cpu", setting="cpu_weight")


def write_pids_limit(d: str, limits: Limits) -> None:
    # cgroupspy has no pids controller; the file takes a number or "max" as on v2.
    if limits.pids_max is not None:
        write_text(d + "/pids.max", str(limits.pids_max), controller="pids", setting="pids_max")


# -- freezer -----------------------------------------------------------------------


def freeze(d: str) -> None:
    write_text(d + "/freezer.state", "FROZEN", controller="freezer", setting="freeze")


def thaw(d: str) -> None:
    write_text(d + "/freezer.state", "THAWED", controller="freezer", setting="thaw")
