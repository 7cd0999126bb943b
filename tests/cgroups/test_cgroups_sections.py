"""Stats read by section (``Cgroup.stats(sections)``): what each section reads on
v2, v1 and hybrid fixture hosts, the ones left out read as None, unknown
names refused; and on the real kernel, the sections the metrics page reads
agree with a full snapshot of a group with a real child in it."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from cgroups import STATS_SECTIONS, Cgroup, CgroupTree, Stats

if TYPE_CHECKING:
    from conftest import FixtureHost

MiB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")

#: What the node's metrics page reads at every scrape.
METRICS = frozenset({"memory", "cpu", "pressure", "pids"})

#: The fields of each section, written out here rather than taken from the code under test.
SECTION_FIELDS: dict[str, tuple[str, ...]] = {
    "memory": ("memory_usage_bytes", "memory_working_set_bytes", "memory_peak_bytes", "memory_limit_bytes",
               "memory_events_oom_kill"),
    "memory_detail": ("memory_anon_bytes", "memory_file_bytes", "memory_kernel_bytes", "memory_sock_bytes",
                      "memory_shmem_bytes", "memory_events_low", "memory_events_high", "memory_events_max",
                      "memory_events_oom"),
    "cpu": ("cpu_usage_seconds", "cpu_user_seconds", "cpu_system_seconds", "cpu_throttled_seconds"),
    "pressure": ("pressure_cpu_some_seconds", "pressure_cpu_full_seconds", "pressure_memory_some_seconds",
                 "pressure_memory_full_seconds", "pressure_io_some_seconds", "pressure_io_full_seconds"),
    "pids": ("pids_current", "pids_max"),
    "io": ("io_read_bytes", "io_write_bytes"),
}

# The api group of each fixture host, as test_cgroups_stats.py reads it whole.
V2_CORE = {
    "memory_usage_bytes": 144 * MiB, "memory_working_set_bytes": (144 - 30) * MiB, "memory_peak_bytes": 192 * MiB,
    "memory_limit_bytes": 256 * MiB, "memory_events_oom_kill": 1,
    "cpu_usage_seconds": 12.345678, "cpu_user_seconds": 10.0, "cpu_system_seconds": 2.345678, "cpu_throttled_seconds": 2.5,
    "pressure_cpu_some_seconds": 3.2, "pressure_cpu_full_seconds": 1.1, "pressure_memory_some_seconds": 0.45,
    "pressure_memory_full_seconds": 0.25, "pressure_io_some_seconds": 0.09, "pressure_io_full_seconds": 0.08,
    "pids_current": 7, "pids_max": None,
}
V1_CORE = {
    **V2_CORE,
    "cpu_usage_seconds": 12.345678901, "cpu_user_seconds": 1000 / TICK, "cpu_system_seconds": 234 / TICK,
    **dict.fromkeys(SECTION_FIELDS["pressure"]),  # no per-cgroup pressure on v1
}
HYBRID_CORE = {**V2_CORE, "memory_limit_bytes": None, "pids_current": 2, "pids_max": 64}


def _leaf(host: FixtureHost, name: str = "api") -> Cgroup:
    return CgroupTree(host.layout(), "web-node").leaf(name)


def _only(full: Stats, sections: frozenset[str]) -> Stats:
    """``full`` with every field of the sections not in ``sections`` set to None."""
    kept = {f for s in sections for f in SECTION_FIELDS[s]}
    return dataclasses.replace(full, **{f.name: None for f in dataclasses.fields(full) if f.name not in kept})


def _check_metrics_sections(group: Cgroup, core: dict[str, Any]) -> None:
    part = group.stats(METRICS)
    for name, value in core.items():
        assert getattr(part, name) == value, name
    for name in (*SECTION_FIELDS["memory_detail"], *SECTION_FIELDS["io"]):
        assert getattr(part, name) is None, f"{name} was read though no section asked for it"
    full = group.stats()
    for name, value in core.items():
        assert getattr(full, name) == value, name
    assert full.memory_anon_bytes == 96 * MiB and full.io_read_bytes is not None
    assert part == _only(full, METRICS)


def test_section_fields_cover_every_stats_field_once() -> None:
    named = [f for fields in SECTION_FIELDS.values() for f in fields]
    assert sorted(named) == sorted(f.name for f in dataclasses.fields(Stats))
    assert set(SECTION_FIELDS) == STATS_SECTIONS


def test_metrics_sections_on_v2_fixture(v2_host: FixtureHost) -> None:
    _check_metrics_sections(_leaf(v2_host), V2_CORE)


def test_metrics_sections_on_v1_fixture(v1_host: FixtureHost) -> None:
    _check_metrics_sections(_leaf(v1_host), V1_CORE)


def test_metrics_sections_on_hybrid_fixture(hybrid_host: FixtureHost) -> None:
    _check_metrics_sections(_leaf(hybrid_host), HYBRID_CORE)


@pytest.mark.parametrize("host_name", ["v2_host", "v1_host", "hybrid_host"])
def test_every_combination_of_sections_reads_just_its_fields_on_each_fixture(host_name: str,
                                                                             request: pytest.FixtureRequest) -> None:
    group = _leaf(request.getfixturevalue(host_name))
    full = group.stats(STATS_SECTIONS)
    assert full == group.stats()
    names = sorted(STATS_SECTIONS)
    for n in range(len(names) + 1):
        for combo in itertools.combinations(names, n):
            sections = frozenset(combo)
            assert group.stats(sections) == _only(full, sections), sorted(sections)


def test_no_section_reads_all_none_on_v2_fixture(v2_host: FixtureHost) -> None:
    s = _leaf(v2_host).stats(frozenset())
    assert all(getattr(s, f.name) is None for f in dataclasses.fields(s))


def test_memory_detail_alone_leaves_the_core_memory_fields_none_on_v2_fixture(v2_host: FixtureHost) -> None:
    s = _leaf(v2_host).stats(frozenset({"memory_detail"}))
    for name in SECTION_FIELDS["memory"]:
        assert getattr(s, name) is None, name
    assert (s.memory_anon_bytes, s.memory_file_bytes, s.memory_shmem_bytes) == (96 * MiB, 40 * MiB, 1 * MiB)
    assert (s.memory_events_high, s.memory_events_max, s.memory_events_oom) == (12, 3, 1)
    assert s.cpu_usage_seconds is None and s.pids_current is None


def test_memory_detail_alone_leaves_the_core_memory_fields_none_on_v1_fixture(v1_host: FixtureHost) -> None:
    s = _leaf(v1_host).stats(frozenset({"memory_detail"}))
    for name in SECTION_FIELDS["memory"]:
        assert getattr(s, name) is None, name
    assert (s.memory_anon_bytes, s.memory_events_max) == (96 * MiB, 3)


def test_memory_alone_leaves_the_detail_none_on_v2_fixture(v2_host: FixtureHost) -> None:
    s = _leaf(v2_host).stats(frozenset({"memory"}))
    assert s.memory_usage_bytes == 144 * MiB and s.memory_events_oom_kill == 1
    for name in SECTION_FIELDS["memory_detail"]:
        assert getattr(s, name) is None, name


def test_pids_section_counts_procs_without_a_pids_hierarchy_on_v1_fixture(v1_host: FixtureHost) -> None:
    paths = _leaf(v1_host).paths()
    del paths["pids"]
    s = Cgroup("api", paths).stats(frozenset({"pids"}))
    assert (s.pids_current, s.pids_max) == (2, None)  # cgroup.procs lists 5001 and 5002
    assert s.memory_usage_bytes is None


@pytest.mark.parametrize("sections", [
    frozenset({"swap"}),
    frozenset({"memory", "cpu", "network"}),
    frozenset({"Memory"}),
])
def test_unknown_section_is_refused_naming_it_on_v2_fixture(v2_host: FixtureHost, sections: frozenset[str]) -> None:
    group = _leaf(v2_host)
    unknown = sorted(sections - STATS_SECTIONS)
    with pytest.raises(ValueError, match="unknown stats sections") as info:
        group.stats(sections)
    message = str(info.value)
    for name in unknown:
        assert repr(name) in message, message
    for known in sorted(sections & STATS_SECTIONS):
        assert repr(known) not in message.split("known:")[0], message


def test_unknown_section_is_refused_for_a_group_that_does_not_exist(v2_host: FixtureHost) -> None:
    with pytest.raises(ValueError, match="'bogus'"):
        _leaf(v2_host, "ghost").stats(frozenset({"bogus"}))


# -- real kernel -------------------------------------------------------------------

# Touch `mib` MiB of anonymous memory, say "ready", then live until stdin closes.
CHILD = """
import sys
block = bytearray(int(sys.argv[1]) << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
print("ready", flush=True)
sys.stdin.read()
"""


def _close(a: float | None, b: float | None, tolerance: float) -> bool:
    return a is not None and b is not None and abs(a - b) <= tolerance


@pytest.mark.real_kernel
def test_real_kernel_metrics_sections_agree_with_a_full_snapshot(
        real_tree: CgroupTree, spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    group = real_tree.leaf("api")
    group.create()
    proc = spawn(group.placement_argv([sys.executable, "-c", CHILD, "20"]), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n", f"the child did not start (exit status {proc.poll()})"
    assert group.pids() == [proc.pid]

    part = group.stats(METRICS)
    full = group.stats()
    again = group.stats(METRICS)

    assert part.memory_usage_bytes is not None and part.memory_usage_bytes >= 20 * MiB, part.memory_usage_bytes
    assert part.memory_working_set_bytes is not None and part.memory_working_set_bytes <= part.memory_usage_bytes
    assert part.memory_peak_bytes is not None and part.memory_peak_bytes >= part.memory_usage_bytes - MiB
    assert part.memory_limit_bytes is None  # no limit set
    assert part.memory_events_oom_kill in (0, None)
    assert part.pids_current is not None and part.pids_current >= 1
    assert part.cpu_usage_seconds is not None and part.cpu_usage_seconds > 0
    for name in (*SECTION_FIELDS["memory_detail"], *SECTION_FIELDS["io"]):
        assert getattr(part, name) is None, f"{name} was read though no section asked for it"
    assert full.memory_anon_bytes is not None and full.memory_anon_bytes >= 20 * MiB

    # The child sleeps on stdin: the group barely moves between the three reads.
    assert _close(part.memory_usage_bytes, full.memory_usage_bytes, 2 * MiB), (part, full)
    assert _close(full.memory_usage_bytes, again.memory_usage_bytes, 2 * MiB), (full, again)
    assert part.pids_current == full.pids_current == again.pids_current
    assert part.pids_max == full.pids_max
    assert part.cpu_usage_seconds <= (full.cpu_usage_seconds or 0) + 1e-6  # a counter, read in that order
    assert _close(part.cpu_usage_seconds, again.cpu_usage_seconds, 0.05), (part, again)
    assert _close(part.cpu_user_seconds, full.cpu_user_seconds, 0.05)
    assert _close(part.cpu_system_seconds, full.cpu_system_seconds, 0.05)
    for name in SECTION_FIELDS["pressure"]:
        a, b = getattr(part, name), getattr(full, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert _close(a, b, 0.05), (name, a, b)
    assert (part.pressure_cpu_some_seconds is not None) == (real_tree.layout.unified_mount is not None)
