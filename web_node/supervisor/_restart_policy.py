"""Where a restart decision happens: policy, exponential backoff with jitter,
and the crash-loop limit.

Backoff starts at 100 ms and doubles with each failure in a row, capped at
30 s; a group that stayed up for ``STABLE_AFTER_S`` (10 s) counts as healthy again
and its backoff starts over. More than ``restart_limit`` restarts within
``restart_window`` means a crash loop: give up.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

BACKOFF_FIRST_S = 0.1
BACKOFF_CAP_S = 30.0
STABLE_AFTER_S = 10.0


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    delay_s: float
    reason: str  # "restarting in 0.4 s" or "giving up: 6 restarts in 60 s"


@dataclass
class RestartTracker:
    restart_limit: int
    restart_window_s: float
    jitter: float = 0.2  # +-20 %: groups that died together do not come back in lockstep
    _restarts: deque[float] = field(default_factory=deque)
    _failures_in_a_row: int = 0

    @property
    def restarts_in_window(self) -> int:
        return len(self._restarts)

    def decide(self, policy: str, *, failed: bool, now: float, ran_s: float) -> RestartDecision:
        """Judge one exit. ``failed`` is False for a clean exit (status 0)."""
        if policy == "never" or (policy == "on-failure" and not failed):
            why = "restart policy is never" if policy == "never" else "it exited cleanly and restart policy is on-failure"
            return RestartDecision(False, 0.0, f"not restarting: {why}")
        if ran_s >= STABLE_AFTER_S:
            self._failures_in_a_row = 0
        while self._restarts and now - self._restarts[0] > self.restart_window_s:
            self._restarts.popleft()
        if len(self._restarts) >= self.restart_limit:
            return RestartDecision(
                False, 0.0,
                f"giving up: {len(self._restarts) + 1} failures within {self.restart_window_s:g} s "
                f"(restart_limit = {self.restart_limit}); fix the cause, then restart the node or send it SIGHUP")
        self._restarts.append(now)
        delay = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2**self._failures_in_a_row)
        delay *= random.uniform(1 - self.jitter, 1 + self.jitter)
        self._failures_in_a_row += 1
        return RestartDecision(True, delay, f"restarting in {delay:.1f} s")
