"""The limits a group may have, in cgroup v2 terms and units."""

from __future__ import annotations

from dataclasses import dataclass, fields

#: cpu.max is written as "$QUOTA $PERIOD" microseconds; we always use this period
#: (the kernel's default), so cores = quota / period.
CPU_PERIOD_US = 100_000
#: The kernel refuses a quota below 1 ms.
CPU_MIN_QUOTA_US = 1_000


@dataclass(frozen=True)
class Limits:
    """Limits of one group. ``None`` means "leave this setting as it is".

    Written in cgroup v2 form (memory.max, memory.high, memory.low,
    memory.swap.max, cpu.max, cpu.weight, pids.max) and translated for v1
    by :meth:`Cgroup.apply_limits`.
    """

    memory_max_bytes: int | None = None
    memory_high_bytes: int | None = None
    memory_low_bytes: int | None = None
    swap_max_bytes: int | None = None
    cpu_max_cores: float | None = None
    cpu_weight: int | None = None
    pids_max: int | None = None

    def __post_init__(self) -> None:
        for name in ("memory_max_bytes", "memory_high_bytes", "pids_max"):
            _check_int(name, getattr(self, name), minimum=1)
        # 0 is meaningful for these two: "no swap" and "no protection".
        for name in ("memory_low_bytes", "swap_max_bytes"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.cpu_weight is not None:
            _check_int("cpu_weight", self.cpu_weight, minimum=1)
            if self.cpu_weight > 10_000:
                raise ValueError(f"cpu_weight must be 1..10000 (100 is the default share), got {self.cpu_weight}")
        cores = self.cpu_max_cores
        if cores is not None:
            if isinstance(cores, bool) or not isinstance(cores, int | float):
                raise TypeError(f"cpu_max_cores must be a number of cores, got {cores!r}")
            min_cores = CPU_MIN_QUOTA_US / CPU_PERIOD_US
            if not cores >= min_cores:  # also refuses NaN
                raise ValueError(f"cpu_max_cores must be at least {min_cores} (1 ms of CPU per 100 ms), got {cores}")

    def is_empty(self) -> bool:
        """True when no setting is given."""
        return all(getattr(self, f.name) is None for f in fields(self))

    def cpu_quota_us(self) -> int | None:
        """``cpu_max_cores`` as a CFS quota per :data:`CPU_PERIOD_US`."""
        if self.cpu_max_cores is None:
            return None
        return max(CPU_MIN_QUOTA_US, round(self.cpu_max_cores * CPU_PERIOD_US))


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def weight_to_shares(weight: int) -> int:
    """cgroup v2 cpu.weight (1..10000, default 100) to v1 cpu.shares (2..262144, default 1024).

    The same linear map systemd uses (weight * 1024 / 100, clamped), so the
    defaults match and ratios between groups are kept.
    """
    return min(262_144, max(2, weight * 1024 // 100))
