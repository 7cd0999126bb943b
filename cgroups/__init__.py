"""cgroups: create, limit, read and empty cgroups on v2, hybrid and v1 hosts.

A small synchronous library; it knows nothing of its callers. Async callers
run the blocking calls (``Cgroup.wait_empty``, ``Cgroup.remove``,
``CgroupTree.destroy``) in a worker thread.

    layout = detect_layout()                 # what this host has, and may we write
    tree = CgroupTree(layout, "web-node")    # below our own cgroup
    tree.create()                            # idempotent
    tree.cleanup_stale()                     # leftovers of a crashed run
    api = tree.leaf("api"); api.create()
    api.apply_limits(Limits(memory_max_bytes=256 << 20, cpu_max_cores=0.5))
    argv = api.placement_argv([sys.executable, "-m", "server"])   # inside before exec
    ...
    api.stats()                              # one frozen snapshot
    api.kill(); api.wait_empty(5.0); api.remove()
    tree.destroy()

``python -m cgroups`` prints what was detected and, per limit, whether the
kernel will enforce it for groups of a tree (``tree_report``).
"""

from __future__ import annotations

from ._cgroup import Cgroup
from ._detect import Layout, LimitEnforcement, TreeReport, detect_layout, tree_report
from ._errors import CgroupBusyError, CgroupControllerMissing, CgroupError, CgroupPermissionError
from ._limits import Limits
from ._placement import PLACEMENT_FAILED
from ._stats import SECTIONS as STATS_SECTIONS
from ._stats import Stats
from ._tree import CgroupTree
from ._units import format_bytes

__all__ = [
    "PLACEMENT_FAILED",
    "STATS_SECTIONS",
    "Cgroup",
    "CgroupBusyError",
    "CgroupControllerMissing",
    "CgroupError",
    "CgroupPermissionError",
    "CgroupTree",
    "Layout",
    "LimitEnforcement",
    "Limits",
    "Stats",
    "TreeReport",
    "detect_layout",
    "format_bytes",
    "tree_report",
]
