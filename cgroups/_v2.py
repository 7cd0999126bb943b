"""cgroup v2 interface files (Documentation/admin-guide/cgroup-v2.rst).

Readers take a cgroup directory of the cgroup2 tree and return partial
``Stats`` fields; writers take a :class:`Limits` and write the v2 files.
Times in cpu.stat and in the PSI ``total=`` fields are microseconds.
"""

from __future__ import annotations

import os
from typing import Any

from ._errors import CgroupControllerMissing
from ._files import (
    Reader,
    int_of,
    keyed_int,
    parse_io_stat,
    pressure_totals,
    read_bytes,
    read_int,
    write_text,
)
from ._limits import CPU_PERIOD_US, Limits
from ._units import USEC_PER_S

# Part of memory.stat "kernel" on kernels before 5.18, which lack that key.
_KERNEL_PARTS = (b"kernel_stack", b"pagetables", b"sec_pagetables", b"percpu", b"slab", b"vmalloc")


def read_memory(d: str, read: Reader = read_bytes, *, detail: bool = True) -> dict[str, Any]:
    """Usage, working set, peak, limit and OOM kills; with ``detail`` also the breakdown and the other events."""
    current = int_of(read(d + "/memory.current"))
    stat = read(d + "/memory.stat")
    events = read(d + "/memory.events")
    values: dict[str, Any] = {
        "memory_usage_bytes": current,
        "memory_working_set_bytes": _working_set(current, keyed_int(stat, b"inactive_file")),
        "memory_peak_bytes": int_of(read(d + "/memory.peak")),
        "memory_limit_bytes": int_of(read(d + "/memory.max")),
        "memory_events_oom_kill": keyed_int(events, b"oom_kill"),
    }
    if detail:
        kernel = keyed_int(stat, b"kernel")
        if kernel is None:
            parts = [keyed_int(stat, k) for k in _KERNEL_PARTS]
            if any(p is not None for p in parts):
                kernel = sum(p or 0 for p in parts)
        values.update({
            "memory_anon_bytes": keyed_int(stat, b"anon"),
            "memory_file_bytes": keyed_int(stat, b"file"),
            "memory_kernel_bytes": kernel,
            "memory_sock_bytes": keyed_int(stat, b"sock"),
            "memory_shmem_bytes": keyed_int(stat, b"shmem"),
            "memory_events_low": keyed_int(events, b"low"),
            "memory_events_high": keyed_int(events, b"high"),
            "memory_events_max": keyed_int(events, b"max"),
            "memory_events_oom": keyed_int(events, b"oom"),
        })
    return values


def _working_set(usage: int | None, inactive_file: int | None) -> int | None:
    if usage is None:
        return None
    return max(0, usage - (inactive_file or 0))


def read_cpu(d: str, *, throttling: bool, read: Reader = read_bytes) -> dict[str, Any]:
    stat = read(d + "/cpu.stat")
    out = {
        "cpu_usage_seconds": _usec(keyed_int(stat, b"usage_usec")),
        "cpu_user_seconds": _usec(keyed_int(stat, b"user_usec")),
        "cpu_system_seconds": _usec(keyed_int(stat, b"system_usec")),
    }
    if throttling:
        out["cpu_throttled_seconds"] = _usec(keyed_int(stat, b"throttled_usec"))
    return out


_PRESSURE_FIELDS = (
    ("cpu", "pressure_cpu_some_seconds", "pressure_cpu_full_seconds"),
    ("memory", "pressure_memory_some_seconds", "pressure_memory_full_seconds"),
    ("io", "pressure_io_some_seconds", "pressure_io_full_seconds"),
)


def read_pressure(d: str, read: Reader = read_bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for resource, some_key, full_key in _PRESSURE_FIELDS:
        some, full = pressure_totals(read(f"{d}/{resource}.pressure"))
        out[some_key] = _usec(some)
        out[full_key] = _usec(full)
    return out


def read_pids(d: str, read: Reader = read_bytes) -> dict[str, Any]:
    return {"pids_current": int_of(read(d + "/pids.current")), "pids_max": int_of(read(d + "/pids.max"))}


def read_io(d: str, read: Reader = read_bytes) -> dict[str, Any]:
    data = read(d + "/io.stat")
    if data is None:
        return {"io_read_bytes": None, "io_write_bytes": None}
    read_total, write_total = parse_io_stat(data.decode("ascii", "replace"))
    return {"io_read_bytes": read_total, "io_write_bytes": write_total}


def _usec(value: int | None) -> float | None:
    return None if value is None else value / USEC_PER_S


def memory_limit_bytes(d: str) -> int | None:
    return read_int(d + "/memory.max")


def oom_kill_count(d: str) -> int | None:
    return keyed_int(read_bytes(d + "/memory.events"), b"oom_kill")


# -- limits ------------------------------------------------------------------


def write_memory_limits(d: str, limits: Limits) -> None:
    for setting, filename in (
        ("memory_max_bytes", "memory.max"),
        ("memory_high_bytes", "memory.high"),
        ("memory_low_bytes", "memory.low"),
        ("swap_max_bytes", "memory.swap.max"),
    ):
        value = getattr(limits, setting)
        if value is None:
            continue
        path = os.path.join(d, filename)
        if setting == "swap_max_bytes" and not os.path.exists(path) and os.path.exists(d + "/memory.max"):
            raise CgroupControllerMissing(
                f"cannot set swap_max_bytes: {path} does not exist; this kernel does not account swap per "
                f"cgroup (CONFIG_MEMCG_SWAP off, or booted with swapaccount=0)",
                controller="memory",
                setting=setting,
                path=path,
            )
        write_text(path, str(value), controller="memory", setting=setting)


def write_cpu_limits(d: str, limits: Limits) -> None:
    quota = limits.cpu_quota_us()
    if quota is not None:
        write_text(d + "/cpu.max", f"{quota} {CPU_PERIOD_US}", controller="cpu", setting="cpu_max_cores")
    if limits.cpu_weight is not None:
        write_text(d + "/cpu.weight", str(limits.cpu_weight), controller="cpu", setting="cpu_weight")


def write_pids_limit(d: str, limits: Limits) -> None:
    if limits.pids_max is not None:
        write_text(d + "/pids.max", str(limits.pids_max), controller="pids", setting="pids_max")
