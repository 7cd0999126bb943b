"""The pure cgroup v2 host as operators have it (and as the QEMU guest of
``make test-v2`` has it, tools/v2-guest): one cgroup2 mount holding every
controller, and a node started inside a delegated, non-root cgroup that
already holds its process (a systemd service with ``Delegate=yes``).

On a hybrid or v1 host these tests skip, saying where they run; inside the
guest (``WEB_NODE_REQUIRE_V2=1``) a skip is a failure (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_helpers import REQUIRE_V2_ENV, remove_cgroup_root, unique_cgroup_root

from cgroups import Cgroup, CgroupTree, Layout, detect_layout

pytestmark = pytest.mark.real_kernel

REPO_ROOT = Path(__file__).resolve().parents[2]
#: What the node enables for its groups (cgroups.CgroupTree.create's default).
NODE_CONTROLLERS = {"memory", "cpu", "pids", "io"}


def pure_v2() -> Layout:
    layout = detect_layout()
    if layout.kind != "v2":
        pytest.skip(f"needs a pure cgroup v2 host, this one is {layout.kind}; `make test-v2` runs it in a QEMU guest")
    return layout


def in_guest() -> bool:
    return os.environ.get(REQUIRE_V2_ENV) == "1"


def words(path: Path) -> set[str]:
    return set(path.read_text().split())


def test_real_kernel_cgroup2_is_the_only_hierarchy_and_offers_the_node_its_controllers() -> None:
    layout = pure_v2()
    assert layout.unified_mount == "/sys/fs/cgroup" and dict(layout.v1_mounts) == {}, layout.describe()
    assert NODE_CONTROLLERS <= words(Path("/sys/fs/cgroup/cgroup.controllers"))
    own = Path("/proc/self/cgroup").read_text().splitlines()
    assert len(own) == 1 and own[0].startswith("0::/"), own  # no v1 line at all
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    cgroup_mounts = [m for m in mounts if m[2] in ("cgroup", "cgroup2")]
    assert [(m[1], m[2]) for m in cgroup_mounts] == [("/sys/fs/cgroup", "cgroup2")], cgroup_mounts
    if in_guest():
        # The guest runs its command in the root cgroup, with cgroup2 mounted as systemd mounts it.
        assert own == ["0::/"]
        assert {"nsdelegate", "memory_recursiveprot"} <= set(cgroup_mounts[0][3].split(",")), cgroup_mounts


# A node's cgroup set-up, run as the only process of a delegated service cgroup.
_DELEGATED = """
import sys
sys.path.insert(0, sys.argv[1])
import cgroups

def own():
    return open("/proc/self/cgroup").read().strip()

tree = cgroups.CgroupTree(cgroups.detect_layout(), "web-node")
tree.create()
api = tree.leaf("api")
api.create()
api.apply_limits(cgroups.Limits(memory_max_bytes=64 << 20, pids_max=50))
print(own(), flush=True)
sys.stdin.readline()
tree.destroy()
print(own(), flush=True)
"""


@pytest.fixture
def service_slice() -> Iterator[CgroupTree]:
    """``/<unique>.slice`` with the node's controllers enabled for its children, as systemd's
    system.slice has them; killed and removed afterwards, also when the test failed."""
    tree = CgroupTree(pure_v2(), unique_cgroup_root() + ".slice")
    try:
        tree.create(move_self=False)
        yield tree
    finally:
        with contextlib.suppress(Exception):
            tree.destroy()
        remove_cgroup_root(tree.root)


def test_real_kernel_a_node_in_a_delegated_service_cgroup_moves_into_its_own_leaf_and_gives_it_back(
        service_slice: CgroupTree) -> None:
    """cgroup v2's "no internal processes" rule: the service cgroup holds the node, so before
    it can enable controllers there the node moves itself into <service>/web-node/supervisor;
    on destroy it moves back and disables them again: the tree is left as it was found."""
    slice_dir = Path(service_slice.paths()["unified"])
    service = slice_dir / "web-node.service"
    service.mkdir()
    assert NODE_CONTROLLERS <= words(service / "cgroup.controllers")  # delegated to it
    assert words(service / "cgroup.subtree_control") == set()
    argv = Cgroup("service", {"unified": str(service)}).placement_argv(
        [sys.executable, "-c", _DELEGATED, str(REPO_ROOT)])
    node = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert node.stdin is not None and node.stdout is not None
    try:
        first = node.stdout.readline().strip()
        service_path = "/" + str(service.relative_to("/sys/fs/cgroup"))
        assert first == f"0::{service_path}/web-node/supervisor", (first, node.stderr.read() if node.poll() is not None else "")
        assert (service / "cgroup.procs").read_text() == ""  # nothing internal left
        assert NODE_CONTROLLERS <= words(service / "cgroup.subtree_control")
        assert NODE_CONTROLLERS <= words(service / "web-node" / "cgroup.subtree_control")
        api = service / "web-node" / "api"
        assert (api / "memory.max").read_text() == f"{64 << 20}\n"
        assert (api / "pids.max").read_text() == "50\n"
        assert (service / "web-node" / "supervisor" / "cgroup.procs").read_text().split() == [str(node.pid)]

        node.stdin.write("\n")
        node.stdin.flush()
        last = node.stdout.readline().strip()
        assert node.wait(timeout=60) == 0, node.stderr.read()
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert last == f"0::{service_path}", last
    assert words(service / "cgroup.subtree_control") == set()
    assert [p.name for p in service.iterdir() if p.is_dir()] == []
