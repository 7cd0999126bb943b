"""This host's cgroups, as the node sees them.

``WEB_NODE_CGROUP_FS`` points the node at another cgroup mount point: for
containers that mount cgroupfs elsewhere, and for tests that show the node's
degraded mode by pointing it at a directory with no cgroups at all.
"""

from __future__ import annotations

import os

import cgroups

ENV_CGROUP_FS = "WEB_NODE_CGROUP_FS"


def detect_host_layout() -> cgroups.Layout:
    return cgroups.detect_layout(sys_root=os.environ.get(ENV_CGROUP_FS, "/sys/fs/cgroup"))
