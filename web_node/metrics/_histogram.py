"""A plain histogram: observe() is a bisect and two additions, no locks, no labels.

The process metrics keep their state in plain objects and build metric
families only when scraped, so the hot paths (every request, every run)
never touch prometheus_client's locks and label lookups.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate

from prometheus_client.utils import floatToGoString

#: Request latency, from 1 ms to 30 s (slower answers, such as event streams, land in +Inf).
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Periodic run durations, from 10 ms to 10 min.
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0)


class Histogram:
    __slots__ = ("bounds", "counts", "les", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram bounds must be strictly increasing, got {list(bounds)}")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        #: The "le" label values, formatted once, ending with "+Inf".
        self.les = tuple([str(floatToGoString(b)) for b in self.bounds] + ["+Inf"])  # type: ignore[no-untyped-call]

    def observe(self, value: float) -> None:
        # bisect_left puts a value equal to a bound into that bound's bucket: "le" is inclusive.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        """The count of each bucket and all below it, in the order of ``les``."""
        return list(accumulate(self.counts))

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative ``(le, count)`` pairs."""
        return list(zip(self.les, self.cumulative(), strict=True))
