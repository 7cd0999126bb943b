"""Benchmark: one full ``Cgroup.stats()`` snapshot per group (target: under 200 µs).

Measures on the real kernel of this machine (a leaf with a live child, below
a unique test root that is removed afterwards) and on the fixture trees of
tests/cgroups/fixtures (pure v2, hybrid, v1), and prints a markdown table.

    python bench/bench_cgroup_stats.py [--snapshots N]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cgroups import Cgroup, CgroupTree, detect_layout

TARGET_US = 200.0
REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "cgroups" / "fixtures"


@dataclass(frozen=True)
class Row:
    target: str
    layout: str
    snapshots: int
    mean_us: float
    p50_us: float
    p99_us: float

    def markdown(self) -> str:
        verdict = "yes" if self.p50_us < TARGET_US else "**no**"
        return (f"| {self.target} | {self.layout} | {self.snapshots} | {self.mean_us:.1f} | {self.p50_us:.1f} "
                f"| {self.p99_us:.1f} | {verdict} |")


def measure(target: str, layout: str, group: Cgroup, snapshots: int) -> Row:
    for _ in range(min(200, snapshots)):  # warm caches (dentries, the interpreter)
        group.stats()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(snapshots):
        t0 = clock()
        group.stats()
        samples.append((clock() - t0) / 1000)
    samples.sort()
    return Row(target, layout, snapshots, statistics.fmean(samples), samples[len(samples) // 2],
               samples[min(len(samples) - 1, int(len(samples) * 0.99))])


@contextmanager
def real_group() -> Iterator[tuple[str, Cgroup]]:
    """A leaf with one sleeping child, below a unique root; removed on exit."""
    layout = detect_layout()
    tree = CgroupTree(layout, f"web-node-bench-{os.getpid()}-{secrets.token_hex(4)}")
    tree.create()
    child: subprocess.Popen[bytes] | None = None
    try:
        group = tree.leaf("bench")
        group.create()
        child = subprocess.Popen(group.placement_argv(["/bin/sh", "-c", "echo ready; exec sleep 600"]),
                                 stdout=subprocess.PIPE)
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        yield layout.kind, group
    finally:
        if child is not None:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
        tree.destroy()


def fixture_group(name: str) -> tuple[str, Cgroup]:
    base = FIXTURES / name
    layout = detect_layout(sys_root=str(base / "sys" / "fs" / "cgroup"), proc_root=str(base / "proc"))
    return layout.kind, CgroupTree(layout, "web-node").leaf("api")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--snapshots", type=int, default=5000)
    args = parser.parse_args(argv)

    rows: list[Row] = []
    notes: list[str] = []
    layout = detect_layout()
    if os.geteuid() == 0 and layout.writable:
        with real_group() as (kind, group):
            rows.append(measure("real kernel (this machine)", kind, group, args.snapshots))
    else:
        notes.append(f"real kernel skipped: {'not root' if os.geteuid() else 'cgroups not writable'}")
    for name in ("v2", "hybrid", "v1"):
        kind, group = fixture_group(name)
        rows.append(measure(f"{name} fixture (tmpfs/disk files)", kind, group, args.snapshots))

    print(f"## cgroup stats snapshot: one `Cgroup.stats()` (target < {TARGET_US:.0f} µs)")
    print()
    print(f"python {sys.version.split()[0]}, kernel {os.uname().release}, {os.cpu_count()} CPUs")
    print()
    print("| target | layout | snapshots | mean µs | p50 µs | p99 µs | p50 under target |")
    print("|---|---|---:|---:|---:|---:|---|")
    for row in rows:
        print(row.markdown())
    for note in notes:
        print(f"\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
