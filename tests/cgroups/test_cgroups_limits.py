"""Limits: validation, the v2 files written, and their v1 translation (fixture copies)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from cgroups import CgroupControllerMissing, CgroupError, CgroupTree, Limits, format_bytes
from cgroups._limits import weight_to_shares

if TYPE_CHECKING:
    from conftest import FixtureHost

MiB = 1 << 20
U = 9223372036854771712
V2_API = "system.slice/web-node.service/web-node/api"
V1_API = "system.slice/web-node.service/web-node/api"

ALL = Limits(
    memory_max_bytes=256 * MiB,
    memory_high_bytes=200 * MiB,
    memory_low_bytes=64 * MiB,
    swap_max_bytes=0,
    cpu_max_cores=1.5,
    cpu_weight=200,
    pids_max=128,
)


def test_v2_fixture_limits_written_in_v2_form(v2_host: FixtureHost) -> None:
    CgroupTree(v2_host.layout()).leaf("api").apply_limits(ALL)
    def read(name: str) -> str:
        return v2_host.read(f"{V2_API}/{name}")

    assert read("memory.max") == str(256 * MiB)
    assert read("memory.high") == str(200 * MiB)
    assert read("memory.low") == str(64 * MiB)
    assert read("memory.swap.max") == "0"
    assert read("cpu.max") == "150000 100000"  # 1.5 cores of each 100 ms period
    assert read("cpu.weight") == "200"
    assert read("pids.max") == "128"


def test_v2_fixture_only_given_limits_are_written(v2_host: FixtureHost) -> None:
    CgroupTree(v2_host.layout()).leaf("api").apply_limits(Limits(cpu_weight=50))
    assert v2_host.read(f"{V2_API}/cpu.weight") == "50"
    assert v2_host.read(f"{V2_API}/memory.max") == "268435456\n"  # untouched
    assert v2_host.read(f"{V2_API}/cpu.max") == "50000 100000\n"


def test_v2_fixture_missing_controller_is_refused_clearly(v2_host: FixtureHost) -> None:
    v2_host.write(f"{V2_API}/cgroup.controllers", "cpu pids\n")
    api = CgroupTree(v2_host.layout()).leaf("api")
    with pytest.raises(CgroupControllerMissing) as caught:
        api.apply_limits(Limits(memory_max_bytes=64 * MiB))
    assert caught.value.controller == "memory"
    assert caught.value.setting == "memory_max_bytes"
    assert "cgroup.subtree_control" in str(caught.value)
    assert caught.value.path == api.path()


def test_v2_fixture_swap_without_swap_accounting_is_refused(v2_host: FixtureHost) -> None:
    v2_host.path(f"{V2_API}/memory.swap.max").unlink()
    with pytest.raises(CgroupControllerMissing, match="swapaccount") as caught:
        CgroupTree(v2_host.layout()).leaf("api").apply_limits(Limits(swap_max_bytes=0))
    assert caught.value.setting == "swap_max_bytes"


def test_v1_fixture_limits_translated(v1_host: FixtureHost) -> None:
    CgroupTree(v1_host.layout()).leaf("api").apply_limits(
        Limits(memory_max_bytes=128 * MiB, memory_high_bytes=100 * MiB, cpu_max_cores=0.5, cpu_weight=200, pids_max=64)
    )
    def mem(name: str) -> str:
        return v1_host.read(f"memory/{V1_API}/{name}")

    def cpu(name: str) -> str:
        return v1_host.read(f"cpu,cpuacct/{V1_API}/{name}")

    assert mem("memory.limit_in_bytes") == str(128 * MiB)
    assert mem("memory.soft_limit_in_bytes") == str(100 * MiB)  # memory.high -> soft limit
    assert mem("memory.memsw.limit_in_bytes") == f"{U}\n"  # swap allowance unlimited: untouched
    assert cpu("cpu.cfs_period_us") == "100000"
    assert cpu("cpu.cfs_quota_us") == "50000"
    assert cpu("cpu.shares") == "2048"  # weight 200 -> 2 x the default 1024
    assert v1_host.read(f"pids/{V1_API}/pids.max") == "64"


def test_v1_fixture_swap_is_memory_plus_swap(v1_host: FixtureHost) -> None:
    CgroupTree(v1_host.layout()).leaf("api").apply_limits(Limits(memory_max_bytes=128 * MiB, swap_max_bytes=32 * MiB))
    assert v1_host.read(f"memory/{V1_API}/memory.memsw.limit_in_bytes") == str(160 * MiB)


def test_v1_fixture_new_memory_limit_keeps_the_swap_allowance(v1_host: FixtureHost) -> None:
    v1_host.write(f"memory/{V1_API}/memory.memsw.limit_in_bytes", str(300 * MiB))  # 256 MiB + 44 MiB swap
    CgroupTree(v1_host.layout()).leaf("api").apply_limits(Limits(memory_max_bytes=512 * MiB))
    assert v1_host.read(f"memory/{V1_API}/memory.memsw.limit_in_bytes") == str(556 * MiB)


def test_v1_fixture_swap_needs_a_memory_limit(v1_host: FixtureHost) -> None:
    v1_host.write(f"memory/{V1_API}/memory.limit_in_bytes", f"{U}\n")
    with pytest.raises(CgroupError, match="set memory_max_bytes too"):
        CgroupTree(v1_host.layout()).leaf("api").apply_limits(Limits(swap_max_bytes=0))


def test_v1_fixture_memory_low_has_no_v1_equivalent(v1_host: FixtureHost) -> None:
    with pytest.raises(CgroupControllerMissing, match=r"no memory\.low") as caught:
        CgroupTree(v1_host.layout()).leaf("api").apply_limits(Limits(memory_low_bytes=MiB))
    assert (caught.value.controller, caught.value.setting) == ("memory", "memory_low_bytes")


def test_v1_fixture_missing_pids_hierarchy_is_refused(v1_host: FixtureHost) -> None:
    mountinfo = v1_host.proc("self/mountinfo")
    mountinfo.write_text("".join(line for line in mountinfo.read_text().splitlines(True) if "pids" not in line))
    with pytest.raises(CgroupControllerMissing, match="no v1 hierarchy mounts the pids controller") as caught:
        CgroupTree(v1_host.layout()).leaf("api").apply_limits(Limits(pids_max=10))
    assert caught.value.controller == "pids"


def test_limits_validation() -> None:
    assert Limits().is_empty()
    assert not Limits(pids_max=1).is_empty()
    with pytest.raises(ValueError, match="memory_max_bytes must be at least 1"):
        Limits(memory_max_bytes=0)
    with pytest.raises(ValueError, match="pids_max"):
        Limits(pids_max=-1)
    with pytest.raises(ValueError, match=r"cpu_weight must be 1\.\.10000"):
        Limits(cpu_weight=10_001)
    with pytest.raises(ValueError, match="cpu_weight"):
        Limits(cpu_weight=0)
    with pytest.raises(ValueError, match=r"cpu_max_cores must be at least 0\.01"):
        Limits(cpu_max_cores=0.001)
    with pytest.raises(ValueError, match="cpu_max_cores"):
        Limits(cpu_max_cores=float("nan"))
    with pytest.raises(TypeError, match="memory_high_bytes must be an int"):
        Limits(memory_high_bytes=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Limits(pids_max=True)
    assert Limits(swap_max_bytes=0, memory_low_bytes=0).swap_max_bytes == 0
    assert Limits(cpu_max_cores=2).cpu_quota_us() == 200_000


def test_weight_to_shares_keeps_the_defaults_equal() -> None:
    assert weight_to_shares(100) == 1024
    assert weight_to_shares(1) == 10
    assert weight_to_shares(10_000) == 102_400


def test_format_bytes() -> None:
    assert format_bytes(None) == "unlimited"
    assert format_bytes(256 * MiB) == "256 MiB"
    assert format_bytes(1536 * MiB) == "1.5 GiB"
    assert format_bytes(4096) == "4 KiB"
    assert format_bytes(512) == "512 B"
    assert format_bytes(0) == "0 B"
