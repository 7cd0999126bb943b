"""Where a restart decision happens: policies, backoff with jitter, the crash-loop limit.

Pure decisions on a clock we pass in: no processes, no sleeping.
"""

from __future__ import annotations

import random
import statistics

import pytest

from web_node.supervisor import RestartDecision, RestartTracker
from web_node.supervisor._restart_policy import BACKOFF_CAP_S, BACKOFF_FIRST_S, STABLE_AFTER_S


def fail(tracker: RestartTracker, now: float, *, ran_s: float = 1.0, policy: str = "always") -> RestartDecision:
    return tracker.decide(policy, failed=True, now=now, ran_s=ran_s)


def test_first_backoff_is_about_a_tenth_of_a_second() -> None:
    assert BACKOFF_FIRST_S == pytest.approx(0.1)
    delays = [fail(RestartTracker(restart_limit=5, restart_window_s=60), now=0.0).delay_s for _ in range(400)]
    assert all(0.08 - 1e-9 <= d <= 0.12 + 1e-9 for d in delays), (min(delays), max(delays))
    assert statistics.mean(delays) == pytest.approx(0.1, rel=0.05)


def test_backoff_doubles_with_each_failure_in_a_row() -> None:
    tracker = RestartTracker(restart_limit=100, restart_window_s=60, jitter=0.0)
    delays = [fail(tracker, now=float(i)).delay_s for i in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])


def test_jitter_is_within_twenty_percent_and_really_varies() -> None:
    """Groups that died together must not all come back in the same instant."""
    random.seed(1234)
    for step in range(5):
        nominal = BACKOFF_FIRST_S * 2**step
        seen = []
        for _ in range(200):
            tracker = RestartTracker(restart_limit=100, restart_window_s=60)
            for i in range(step):
                fail(tracker, now=float(i))
            seen.append(fail(tracker, now=float(step)).delay_s)
        assert min(seen) >= nominal * 0.8 - 1e-9
        assert max(seen) <= nominal * 1.2 + 1e-9
        assert max(seen) - min(seen) > nominal * 0.2, f"jitter barely varies at step {step}: {min(seen)}..{max(seen)}"


def test_backoff_is_capped_at_thirty_seconds() -> None:
    assert BACKOFF_CAP_S == pytest.approx(30.0)
    tracker = RestartTracker(restart_limit=1000, restart_window_s=1.0, jitter=0.0)
    delays = [fail(tracker, now=10.0 * i).delay_s for i in range(20)]
    assert delays[-1] == pytest.approx(30.0)
    assert max(delays) == pytest.approx(30.0)
    assert delays[8] == pytest.approx(25.6) and delays[9] == pytest.approx(30.0)


def test_capped_backoff_keeps_its_jitter_around_the_cap() -> None:
    tracker = RestartTracker(restart_limit=1000, restart_window_s=1.0)
    delays = [fail(tracker, now=10.0 * i).delay_s for i in range(60)][20:]
    assert all(30.0 * 0.8 - 1e-9 <= d <= 30.0 * 1.2 + 1e-9 for d in delays), delays
    assert len({round(d, 6) for d in delays}) > 1


def test_a_long_enough_run_resets_the_backoff() -> None:
    tracker = RestartTracker(restart_limit=100, restart_window_s=600, jitter=0.0)
    for i in range(5):
        fail(tracker, now=float(i))
    assert fail(tracker, now=10.0).delay_s == pytest.approx(3.2)
    # Up long enough to count as healthy: the next failure starts over at 0.1 s.
    assert fail(tracker, now=100.0, ran_s=STABLE_AFTER_S).delay_s == pytest.approx(0.1)
    assert fail(tracker, now=101.0, ran_s=0.5).delay_s == pytest.approx(0.2)


def test_a_short_run_does_not_reset_the_backoff() -> None:
    tracker = RestartTracker(restart_limit=100, restart_window_s=600, jitter=0.0)
    fail(tracker, now=0.0)
    fail(tracker, now=1.0)
    assert fail(tracker, now=2.0, ran_s=STABLE_AFTER_S - 1).delay_s == pytest.approx(0.4)


def test_gives_up_after_restart_limit_within_the_window() -> None:
    tracker = RestartTracker(restart_limit=3, restart_window_s=60)
    decisions = [fail(tracker, now=float(i)) for i in range(4)]
    assert [d.restart for d in decisions] == [True, True, True, False]
    last = decisions[-1]
    assert last.reason.startswith("giving up")
    assert "restart_limit = 3" in last.reason and "60 s" in last.reason
    assert tracker.restarts_in_window == 3
    # Still a crash loop a moment later.
    assert not fail(tracker, now=5.0).restart


def test_restarts_outside_the_window_are_forgotten() -> None:
    tracker = RestartTracker(restart_limit=2, restart_window_s=10)
    assert fail(tracker, now=0.0).restart
    assert fail(tracker, now=1.0).restart
    assert not fail(tracker, now=5.0).restart
    # Both earlier restarts are now older than the window.
    decision = fail(tracker, now=12.0)
    assert decision.restart, decision.reason
    assert tracker.restarts_in_window == 1


def test_restart_limit_zero_gives_up_at_the_first_failure() -> None:
    decision = fail(RestartTracker(restart_limit=0, restart_window_s=60), now=0.0)
    assert not decision.restart
    assert "giving up" in decision.reason


@pytest.mark.parametrize(
    ("policy", "failed", "restart"),
    [
        ("always", True, True),
        ("always", False, True),
        ("on-failure", True, True),
        ("on-failure", False, False),
        ("never", True, False),
        ("never", False, False),
    ],
)
def test_policies(policy: str, failed: bool, restart: bool) -> None:
    decision = RestartTracker(restart_limit=5, restart_window_s=60).decide(policy, failed=failed, now=0.0, ran_s=1.0)
    assert decision.restart is restart
    if restart:
        assert decision.delay_s > 0
        assert decision.reason.startswith("restarting in ")
    else:
        assert decision.delay_s == 0
        assert decision.reason.startswith("not restarting")


def test_never_and_clean_exits_say_why_they_do_not_restart() -> None:
    tracker = RestartTracker(restart_limit=5, restart_window_s=60)
    assert "restart policy is never" in tracker.decide("never", failed=True, now=0.0, ran_s=1.0).reason
    clean = tracker.decide("on-failure", failed=False, now=0.0, ran_s=1.0).reason
    assert "exited cleanly" in clean and "on-failure" in clean


def test_exits_that_are_not_restarted_do_not_count_against_the_limit() -> None:
    tracker = RestartTracker(restart_limit=1, restart_window_s=60)
    for i in range(5):
        tracker.decide("on-failure", failed=False, now=float(i), ran_s=1.0)
        tracker.decide("never", failed=True, now=float(i), ran_s=1.0)
    assert tracker.restarts_in_window == 0
    assert fail(tracker, now=10.0, policy="on-failure").restart


def test_reason_shows_the_delay_it_chose() -> None:
    decision = fail(RestartTracker(restart_limit=5, restart_window_s=60, jitter=0.0), now=0.0)
    assert decision.reason == "restarting in 0.1 s"
