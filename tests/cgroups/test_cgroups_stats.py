"""Stats snapshots on fixture hosts: units, sources per layout, missing files."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import pytest

from cgroups import Cgroup, CgroupTree, Stats
from cgroups._files import parse_blkio_bytes, parse_io_stat, parse_limit, parse_pressure

if TYPE_CHECKING:
    from conftest import FixtureHost

MiB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")


def _leaf(host: FixtureHost, name: str) -> Cgroup:
    return CgroupTree(host.layout(), "web-node").leaf(name)


def test_v2_fixture_stats_in_bytes_and_seconds(v2_host: FixtureHost) -> None:
    s = _leaf(v2_host, "api").stats()
    assert s == Stats(
        memory_usage_bytes=144 * MiB,
        memory_working_set_bytes=(144 - 30) * MiB,  # usage minus inactive_file
        memory_peak_bytes=192 * MiB,
        memory_limit_bytes=256 * MiB,
        memory_anon_bytes=96 * MiB,
        memory_file_bytes=40 * MiB,
        memory_kernel_bytes=6 * MiB,
        memory_sock_bytes=4096,
        memory_shmem_bytes=1 * MiB,
        memory_events_low=0,
        memory_events_high=12,
        memory_events_max=3,
        memory_events_oom=1,
        memory_events_oom_kill=1,
        cpu_usage_seconds=12.345678,  # usage_usec 12345678
        cpu_user_seconds=10.0,
        cpu_system_seconds=2.345678,
        cpu_throttled_seconds=2.5,
        pressure_cpu_some_seconds=3.2,  # total=3200000 µs
        pressure_cpu_full_seconds=1.1,
        pressure_memory_some_seconds=0.45,
        pressure_memory_full_seconds=0.25,
        pressure_io_some_seconds=0.09,
        pressure_io_full_seconds=0.08,
        pids_current=7,
        pids_max=None,  # "max"
        io_read_bytes=3 * MiB,  # two devices
        io_write_bytes=4 * MiB,
    )


def test_v2_fixture_stats_of_an_older_kernel(v2_host: FixtureHost) -> None:
    # "ui" is laid out as kernel 5.10 shows it.
    s = _leaf(v2_host, "ui").stats()
    assert s.memory_peak_bytes is None  # memory.peak: 5.19+
    assert s.memory_limit_bytes is None  # memory.max: "max"
    # No "kernel" key (5.18+): kernel_stack + pagetables + percpu + slab.
    assert s.memory_kernel_bytes == 196608 + 524288 + 0 + 1572864
    assert s.pressure_cpu_some_seconds == 0.002
    assert s.pressure_cpu_full_seconds is None  # the "full" line of cpu.pressure: 5.13+
    assert (s.io_read_bytes, s.io_write_bytes) == (0, 0)  # empty io.stat: no I/O yet
    assert (s.pids_current, s.pids_max) == (3, 100)
    assert s.cpu_throttled_seconds == 0.0


def test_v2_fixture_missing_files_are_none_not_errors(v2_host: FixtureHost) -> None:
    api = "system.slice/web-node.service/web-node/api"
    for name in ("memory.stat", "memory.events", "cpu.stat", "io.pressure", "pids.max", "io.stat"):
        v2_host.path(f"{api}/{name}").unlink()
    s = _leaf(v2_host, "api").stats()
    assert s.memory_usage_bytes == 144 * MiB
    assert s.memory_working_set_bytes == 144 * MiB  # no inactive_file known
    assert s.memory_anon_bytes is None and s.memory_events_oom_kill is None
    assert s.cpu_usage_seconds is None and s.cpu_throttled_seconds is None
    assert s.pressure_io_some_seconds is None and s.pressure_io_full_seconds is None
    assert s.pids_max is None and s.io_read_bytes is None


def test_v2_fixture_group_that_does_not_exist_reads_all_none(v2_host: FixtureHost) -> None:
    s = _leaf(v2_host, "ghost").stats()
    assert all(getattr(s, f.name) is None for f in dataclasses.fields(s))


def test_v2_fixture_stats_snapshot_is_frozen(v2_host: FixtureHost) -> None:
    s = _leaf(v2_host, "api").stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.memory_usage_bytes = 1  # type: ignore[misc]


def test_v2_fixture_oom_facts(v2_host: FixtureHost) -> None:
    api = _leaf(v2_host, "api")
    assert api.oom_kill_count() == 1
    assert api.memory_limit_bytes() == 256 * MiB
    assert _leaf(v2_host, "ui").memory_limit_bytes() is None
    assert _leaf(v2_host, "ghost").oom_kill_count() is None


def test_v2_fixture_pids_and_populated(v2_host: FixtureHost) -> None:
    api = _leaf(v2_host, "api")
    assert api.pids() == [5001, 5002]
    assert api.populated()
    v2_host.write("system.slice/web-node.service/web-node/api/cgroup.events", "populated 0\nfrozen 0\n")
    v2_host.write("system.slice/web-node.service/web-node/api/cgroup.procs", "")
    assert not api.populated()
    assert api.wait_empty(0.01)


def test_v1_fixture_stats_in_bytes_and_seconds(v1_host: FixtureHost) -> None:
    s = _leaf(v1_host, "api").stats()
    assert s == Stats(
        memory_usage_bytes=144 * MiB,
        memory_working_set_bytes=(144 - 30) * MiB,  # minus total_inactive_file
        memory_peak_bytes=192 * MiB,  # max_usage_in_bytes
        memory_limit_bytes=256 * MiB,
        memory_anon_bytes=96 * MiB,  # total_rss
        memory_file_bytes=40 * MiB,  # total_cache
        memory_kernel_bytes=6 * MiB,  # memory.kmem.usage_in_bytes
        memory_sock_bytes=4096,  # memory.kmem.tcp.usage_in_bytes
        memory_shmem_bytes=1 * MiB,
        memory_events_low=None,  # no v1 equivalent
        memory_events_high=None,
        memory_events_max=3,  # memory.failcnt
        memory_events_oom=None,
        memory_events_oom_kill=1,  # memory.oom_control
        cpu_usage_seconds=12.345678901,  # cpuacct.usage, ns
        cpu_user_seconds=1000 / TICK,  # cpuacct.stat, clock ticks
        cpu_system_seconds=234 / TICK,
        cpu_throttled_seconds=2.5,  # cpu.stat throttled_time, ns
        pressure_cpu_some_seconds=None,  # PSI per cgroup is a v2 thing
        pressure_cpu_full_seconds=None,
        pressure_memory_some_seconds=None,
        pressure_memory_full_seconds=None,
        pressure_io_some_seconds=None,
        pressure_io_full_seconds=None,
        pids_current=7,
        pids_max=None,
        io_read_bytes=3 * MiB,
        io_write_bytes=4 * MiB,
    )


def test_v1_fixture_pids_counted_from_procs_without_a_pids_hierarchy(v1_host: FixtureHost) -> None:
    paths = _leaf(v1_host, "api").paths()
    del paths["pids"]
    s = Cgroup("api", paths).stats()
    assert s.pids_current == 2  # cgroup.procs lists 5001 and 5002
    assert s.pids_max is None


def test_v1_fixture_oom_facts_and_unlimited_limit(v1_host: FixtureHost) -> None:
    api = _leaf(v1_host, "api")
    assert api.oom_kill_count() == 1  # memory.oom_control oom_kill, read through cgroupspy
    assert api.memory_limit_bytes() == 256 * MiB
    v1_host.write("memory/system.slice/web-node.service/web-node/api/memory.limit_in_bytes", "9223372036854771712\n")
    assert api.memory_limit_bytes() is None  # the kernel's "no limit"
    assert api.stats().memory_limit_bytes is None


def test_v1_fixture_comounted_hierarchies_share_one_procs_file(v1_host: FixtureHost) -> None:
    api = _leaf(v1_host, "api")
    paths = api.paths()
    assert paths["cpu"] == paths["cpuacct"]
    files = api.procs_files()
    assert len(files) == len(set(files)) == len(set(paths.values()))


def test_hybrid_fixture_takes_cpu_and_pressure_from_cgroup2(hybrid_host: FixtureHost) -> None:
    s = _leaf(hybrid_host, "api").stats()
    # cpu.stat of the cgroup2 tree (µs), not cpuacct (which says 99.99 s here).
    assert s.cpu_usage_seconds == 12.345678
    assert s.cpu_user_seconds == 10.0
    # Throttling comes from the v1 cpu hierarchy, where the cpu controller is.
    assert s.cpu_throttled_seconds == 2.5
    assert s.pressure_cpu_some_seconds == 3.2
    assert s.pressure_memory_full_seconds == 0.25
    # Memory from v1, "no limit" as None; pids from the v1 pids hierarchy.
    assert s.memory_usage_bytes == 144 * MiB
    assert s.memory_limit_bytes is None
    assert (s.pids_current, s.pids_max) == (2, 64)
    assert (s.io_read_bytes, s.io_write_bytes) == (0, 0)


def test_hybrid_fixture_path_for_humans_is_the_cgroup2_one(hybrid_host: FixtureHost) -> None:
    api = _leaf(hybrid_host, "api")
    assert api.path() == f"{hybrid_host.sys_root}/unified/system.slice/web-node.service/web-node/api"


# -- parsers on the kernel's documented formats ---------------------------------------


def test_parse_pressure() -> None:
    text = "some avg10=0.12 avg60=0.34 avg300=0.56 total=1234567\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=89\n"
    assert parse_pressure(text) == {"some": 1234567, "full": 89}


def test_parse_io_stat() -> None:
    text = (
        "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n"
        "8:0 rbytes=90430464 wbytes=299008000 rios=8950 wios=1252 dbytes=50331648 dios=3021\n"
    )
    assert parse_io_stat(text) == (1459200 + 90430464, 314773504 + 299008000)


def test_parse_blkio_bytes() -> None:
    assert parse_blkio_bytes("8:0 Read 10\n8:0 Write 20\n8:0 Total 30\n8:16 Read 1\nTotal 31\n") == (11, 20)
    assert parse_blkio_bytes("Total 0\n") == (0, 0)


def test_parse_limit() -> None:
    assert parse_limit("max\n") is None
    assert parse_limit("268435456\n") == 268435456
    assert parse_limit("") is None
