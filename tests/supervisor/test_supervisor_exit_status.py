"""Exit statuses decoded once, in words an operator can act on."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from web_node.supervisor import ExitFacts, describe_exit

MiB = 1024**2


def test_clean_exit() -> None:
    facts = describe_exit(0)
    assert facts == ExitFacts("exited cleanly (status 0)", failed=False, oom_killed=False, status=0)


@pytest.mark.parametrize("status", [1, 3, 70, 255])
def test_exit_status(status: int) -> None:
    facts = describe_exit(status)
    assert facts.text.startswith(f"exited with status {status}")
    assert facts.failed and not facts.oom_killed
    assert facts.status == status and facts.signal_name is None


def test_status_2_is_a_configuration_the_child_refused() -> None:
    facts = describe_exit(2)
    assert facts.text == "exited with status 2 (configuration refused by the child)"
    assert facts.failed


def test_status_125_is_a_failed_cgroup_placement() -> None:
    import cgroups

    assert cgroups.PLACEMENT_FAILED == 125
    facts = describe_exit(125)
    assert facts.failed and "could not be placed in its cgroup" in facts.text


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV, signal.SIGABRT, signal.SIGINT])
def test_killed_by_signal(sig: signal.Signals) -> None:
    facts = describe_exit(-int(sig))
    assert facts.text == f"killed by {sig.name}"
    assert facts.failed and not facts.oom_killed
    assert facts.signal_name == sig.name


def test_a_signal_without_a_name() -> None:
    facts = describe_exit(-200)
    assert facts.text == "killed by signal 200"
    assert facts.failed


def test_sigkill_with_an_oom_kill_in_the_cgroup_is_the_oom_killer() -> None:
    facts = describe_exit(-9, oom_kills=1, memory_limit_bytes=20 * MiB)
    assert facts.text == "killed by SIGKILL: OOM at limit 20 MiB"
    assert facts.failed and facts.oom_killed and facts.signal_name == "SIGKILL"


def test_oom_limit_in_the_operators_units() -> None:
    assert describe_exit(-9, oom_kills=2, memory_limit_bytes=256 * MiB).text == "killed by SIGKILL: OOM at limit 256 MiB"
    assert describe_exit(-9, oom_kills=1, memory_limit_bytes=1536 * MiB).text == "killed by SIGKILL: OOM at limit 1.5 GiB"


def test_oom_without_a_group_limit_does_not_claim_a_limit() -> None:
    """An OOM kill in a group without memory_max (a parent cgroup or the whole
    machine ran out): "OOM at limit unlimited" reads as nonsense at 3 a.m."""
    facts = describe_exit(-9, oom_kills=1, memory_limit_bytes=None)
    assert facts.oom_killed
    assert "OOM" in facts.text
    assert "limit unlimited" not in facts.text


def test_other_signals_are_not_blamed_on_oom() -> None:
    facts = describe_exit(-15, oom_kills=1, memory_limit_bytes=64 * MiB)
    assert facts.text == "killed by SIGTERM"
    assert not facts.oom_killed


def test_a_plain_sigkill_is_not_an_oom() -> None:
    facts = describe_exit(-9, oom_kills=0, memory_limit_bytes=64 * MiB)
    assert facts.text == "killed by SIGKILL"
    assert not facts.oom_killed


def test_real_returncodes_of_real_children() -> None:
    """What subprocess really hands back, decoded."""
    code = "import os, signal, sys; n = int(sys.argv[1]); os.kill(os.getpid(), -n) if n < 0 else sys.exit(n)"
    for wanted in (0, 3, -int(signal.SIGKILL), -int(signal.SIGTERM)):
        rc = subprocess.run([sys.executable, "-c", code, str(wanted)], timeout=30).returncode
        assert rc == wanted
    assert describe_exit(subprocess.run([sys.executable, "-c", code, "-9"], timeout=30).returncode).text == "killed by SIGKILL"
    assert describe_exit(subprocess.run([sys.executable, "-c", code, "3"], timeout=30).returncode).text == "exited with status 3"
