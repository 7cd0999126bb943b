"""Which cgroup tree roots belong to this node, remembered in its data_dir.

The node kills and removes everything below its ``cgroup_root`` (the
leftovers of a crashed run at start, every group at stop). That is only
safe below a root the node made itself: ``cgroup_root = "/system.slice"``
would otherwise kill every system service. So:

- When the node makes a root directory, it records the path and the
  directory's inode number in ``DATA_DIR/cgroup-roots.json``. The inode tells
  the very directory we made from one that was removed and made again by
  someone else under the same name.
- A root that already exists and is not recorded is *foreign*. The node
  refuses it if it holds any cgroup or any process (:class:`ForeignCgroupRoot`
  names the path and the fix); an empty one (``mkdir`` by an operator) holds
  nothing that could be harmed: the node takes it over and records it.
- After a stop, the entries of the roots that are gone are dropped.

Invariant: :meth:`RootClaim.check` passing means every existing root path is
recorded as ours or is empty; nothing outside such roots is ever killed or
removed by the node.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping

from web_node.errors import SupervisorError

MARKER = "cgroup-roots.json"


class ForeignCgroupRoot(SupervisorError):
    """``cgroup_root`` names an existing cgroup this node did not make, holding cgroups or processes."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class RootClaim:
    """The node's record of its cgroup tree roots (``DATA_DIR/cgroup-roots.json``)."""

    def __init__(self, data_dir: str, cgroup_root: str, paths: Mapping[str, str]) -> None:
        self.marker = os.path.join(data_dir, MARKER)
        self.cgroup_root = cgroup_root
        self.paths = list(dict.fromkeys(paths.values()))  # the tree's order: cgroup2 first

    def check(self) -> None:
        """Raise :class:`ForeignCgroupRoot` for an existing root not made by this node that holds something."""
        recorded = self._load()
        for path in self.paths:
            try:
                ino = os.stat(path).st_ino
            except FileNotFoundError:
                continue  # we make it
            if recorded.get(path) == ino:
                continue  # made by this node (this data_dir) in an earlier run
            children, procs = _contents(path)
            if children or procs:
                raise ForeignCgroupRoot(_refusal(self.cgroup_root, path, children, procs, self.marker), path=path)
            # Empty (an operator's mkdir, or our own lock just made it): nothing there to harm; taken over.

    def record(self) -> None:
        """Remember every root path that exists now as ours (call right after making the tree)."""
        recorded = self._load()
        for path in self.paths:
            with contextlib.suppress(FileNotFoundError):
                recorded[path] = os.stat(path).st_ino
        self._save(recorded)

    def forget_removed(self) -> None:
        """Drop the entries of roots that no longer exist (after the tree was removed)."""
        recorded = {p: ino for p, ino in self._load().items() if os.path.isdir(p)}
        if recorded:
            self._save(recorded)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.marker)

    def _load(self) -> dict[str, int]:
        try:
            with open(self.marker) as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise SupervisorError(
                f"cannot read {self.marker}, this node's record of the cgroups it made ({e}); without it the "
                f"node cannot tell its own cgroups from others'. Remove the file if no node runs with this "
                f"data_dir and no cgroup is left below {self.cgroup_root}") from None
        roots = data.get("roots", {}) if isinstance(data, dict) else {}
        return {str(p): int(ino) for p, ino in roots.items() if isinstance(ino, int)}

    def _save(self, recorded: Mapping[str, int]) -> None:
        tmp = self.marker + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"roots": dict(sorted(recorded.items()))}, f, indent=1)
        os.replace(tmp, self.marker)


def _contents(path: str) -> tuple[list[str], list[int]]:
    with os.scandir(path) as entries:
        children = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            procs = [int(p) for p in f.read().split()]
    except FileNotFoundError:
        procs = []
    return children, procs


def _shown(items: Iterable[object], limit: int = 6) -> str:
    items = list(items)
    return ", ".join(map(str, items[:limit])) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _refusal(root: str, path: str, children: list[str], procs: list[int], marker: str) -> str:
    held = []
    if children:
        held.append(f"cgroup(s) {_shown(children)}")
    if procs:
        held.append(f"process(es) {_shown(procs)}")
    return (
        f"refusing cgroup_root {root!r}: {path} already exists, was not made by this node (it is not recorded "
        f"in {marker}) and holds {' and '.join(held)}. The node kills and removes everything below its "
        f"cgroup_root, so it only uses a root it made itself. Fix: set [node] cgroup_root to a cgroup of its "
        f"own (e.g. \"web-node\", made below the node's own cgroup); or, if these are the leftovers of a "
        f"web-node that ran with another data_dir, start it with that data_dir, or remove them by hand "
        f"(rmdir, deepest first)"
    )


__all__ = ["MARKER", "ForeignCgroupRoot", "RootClaim"]
