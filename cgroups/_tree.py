"""The node's cgroup tree: one root, one leaf per group.

::

    <own cgroup>/                  the node's cgroup (or the hierarchy root for "/web-node")
      web-node/                    the tree root, no processes of its own
        supervisor/                cgroup v2 only, when needed: the node itself
        api/  ui/  backend/ ...    one leaf per group

On cgroup v2 a non-root cgroup may enable controllers for its children
(``cgroup.subtree_control``) only while it holds no processes itself: the
"no internal processes" rule. The node starts inside its own cgroup, so
before enabling memory/cpu/pids/io there, :meth:`CgroupTree.create` moves
the node into the ``supervisor`` leaf; :meth:`CgroupTree.destroy` moves it
back. v1 hierarchies have no such rule: the leaves are just made in each.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable

from ._cgroup import Cgroup
from ._detect import UNIFIED, Layout
from ._errors import CgroupBusyError, CgroupControllerMissing, CgroupError, CgroupPermissionError, error_from_os
from ._files import parse_pids, parse_words, read_text, write_text

#: The leaf the node moves itself into on cgroup v2 (not a group).
SUPERVISOR = "supervisor"

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,254}\Z")

_NO_INTERNAL_PROCESSES = (
    "cgroup v2 lets a non-root cgroup enable controllers for its children only while it holds no "
    "processes itself (the \"no internal processes\" rule)"
)


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"invalid cgroup name {name!r}: use letters, digits and _ . @ + - (not starting with . or -), "
            f"at most 255 characters"
        )
    return name


class CgroupTree:
    """The node's cgroups below ``root`` in every hierarchy of ``layout``.

    ``root`` is relative to the node's own cgroup in each hierarchy
    (``"web-node"``), or absolute from each hierarchy's root
    (``"/web-node"``). Constructing a tree touches nothing; :meth:`create`
    does. Not thread-safe: one owner (the supervisor) drives it.
    """

    def __init__(self, layout: Layout, root: str = "web-node") -> None:
        parts = [p for p in root.split("/") if p]
        if not parts:
            raise ValueError(f"invalid cgroup root {root!r}: give a name such as 'web-node' or '/web-node'")
        for part in parts:
            _check_name(part)
        self.layout = layout
        self.root = root
        self._absolute = root.startswith("/")
        self._rel = "/".join(parts)
        # The unified cgroup the node was moved out of, and what we enabled where.
        self._moved_from: str | None = None
        self._enabled: list[tuple[str, list[str]]] = []

    def __repr__(self) -> str:
        return f"CgroupTree({self.layout.kind!r}, root={self.root!r})"

    # -- where -----------------------------------------------------------------

    def paths(self) -> dict[str, str]:
        """Hierarchy key -> absolute directory of the tree root (empty when no cgroups)."""
        out = {}
        for key in self.layout.hierarchies():
            base = self._anchor(key)
            if base is not None:
                out[key] = os.path.join(base, self._rel)
        return out

    def _anchor(self, key: str) -> str | None:
        """The existing cgroup the tree root is made below, in one hierarchy."""
        if self._absolute:
            return self.layout.mount_of(key)
        own = self.layout.own_dir(key)
        # Detected again after create() moved the node into <root>/supervisor
        # (or by a node exec'd from there): the tree is still the one above.
        suffix = f"/{self._rel}/{SUPERVISOR}"
        if own is not None and key == UNIFIED and own.endswith(suffix):
            return own[: -len(suffix)]
        return own

    def leaf(self, name: str) -> Cgroup:
        """The group ``name`` (it need not exist yet)."""
        _check_name(name)
        return Cgroup(name, {key: os.path.join(d, name) for key, d in self.paths().items()})

    def leaves(self) -> list[Cgroup]:
        """The groups that exist below the root, in any hierarchy (not ``supervisor``)."""
        names: set[str] = set()
        for d in set(self.paths().values()):
            try:
                with os.scandir(d) as entries:
                    names.update(e.name for e in entries if e.is_dir(follow_symlinks=False))
            except (FileNotFoundError, NotADirectoryError):
                continue
        names.discard(SUPERVISOR)
        return [self.leaf(n) for n in sorted(names) if _NAME.match(n)]

    # -- create ------------------------------------------------------------------

    def create(self, *, enable_controllers: Iterable[str] = ("memory", "cpu", "pids", "io"), move_self: bool = True) -> None:
        """Make the tree root in every hierarchy and enable controllers for the leaves.

        Idempotent. On cgroup v2, enabling a controller in a non-root cgroup
        that holds the node itself first moves the node into the
        ``supervisor`` leaf (``move_self=True``); any other process there
        makes it fail with :class:`CgroupBusyError`. Controllers this host
        does not offer are skipped (``layout.controllers`` says which exist).
        Raises :class:`CgroupPermissionError` when cgroups are not writable.
        """
        layout = self.layout
        if layout.kind == "none":
            raise CgroupError("cannot create the cgroup tree: " + " ".join(layout.problems), path=layout.sys_root)
        if not layout.writable:
            raise CgroupPermissionError(
                f"cannot create the cgroup tree {self.root}: cgroups are not writable here: " + " ".join(layout.problems),
                path=layout.sys_root,
            )
        paths = self.paths()
        for d in dict.fromkeys(paths.values()):
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as exc:
                raise error_from_os(exc, action="create", path=d) from None
        if UNIFIED in paths:
            self._enable_v2(paths[UNIFIED], list(dict.fromkeys(enable_controllers)), move_self)

    def _enable_v2(self, root_dir: str, wanted: list[str], move_self: bool) -> None:
        anchor = self._anchor(UNIFIED)
        assert anchor is not None
        available = parse_words(read_text(os.path.join(anchor, "cgroup.controllers")) or "")
        wanted = [c for c in wanted if c in available]
        if not wanted:
            return
        # Every cgroup from the anchor down to the root must enable them
        # (top-down constraint), the root too so that its leaves get them.
        chain = [anchor]
        for part in self._rel.split("/"):
            chain.append(os.path.join(chain[-1], part))
        for d in chain:
            enabled = parse_words(read_text(os.path.join(d, "cgroup.subtree_control")) or "")
            missing = [c for c in wanted if c not in enabled]
            if not missing:
                continue
            if not _is_root_cgroup(d):
                self._make_room(d, root_dir, move_self)
            path = os.path.join(d, "cgroup.subtree_control")
            try:
                write_text(path, " ".join("+" + c for c in missing), controller=missing[0], setting="enable_controllers")
            except CgroupBusyError as exc:
                raise CgroupBusyError(
                    f"cannot enable {' '.join(missing)} in {path}: {_NO_INTERNAL_PROCESSES}, and the kernel "
                    f"said it is busy ({exc}); move every process out of {d} into a leaf below it",
                    path=path,
                ) from None
            self._enabled.append((d, missing))

    def _make_room(self, d: str, root_dir: str, move_self: bool) -> None:
        """Empty ``d`` of the node itself, the only process we may move."""
        pids = parse_pids(read_text(os.path.join(d, "cgroup.procs")) or "")
        me = os.getpid()
        others = [p for p in pids if p != me]
        if others:
            shown = ", ".join(map(str, others[:8])) + (" ..." if len(others) > 8 else "")
            raise CgroupBusyError(
                f"cannot enable controllers below {d}: it holds processes other than this node ({shown}), "
                f"and {_NO_INTERNAL_PROCESSES}. Run the node in a cgroup of its own (systemd: a service "
                f"with Delegate=yes) or move those processes into a leaf below {d}",
                path=d,
            )
        if me not in pids:
            return
        if not move_self:
            raise CgroupBusyError(
                f"cannot enable controllers below {d}: this node (pid {me}) is in it and {_NO_INTERNAL_PROCESSES}; "
                f"call create(move_self=True) to move the node into {root_dir}/{SUPERVISOR}",
                path=d,
            )
        leaf_dir = os.path.join(root_dir, SUPERVISOR)
        try:
            os.makedirs(leaf_dir, exist_ok=True)
        except OSError as exc:
            raise error_from_os(exc, action="create", path=leaf_dir) from None
        write_text(os.path.join(leaf_dir, "cgroup.procs"), str(me), controller="cgroup", setting="move_self")
        self._moved_from = d

    # -- cleanup -----------------------------------------------------------------

    def cleanup_stale(self) -> list[str]:
        """Kill and remove the leaves a crashed earlier run left behind; their names.

        Refuses (:class:`CgroupBusyError`) when the ``supervisor`` leaf holds
        another live process: then another node uses this tree right now.
        """
        self._check_not_in_use()
        removed = []
        for leaf in self.leaves():
            leaf.remove()
            removed.append(leaf.name)
        return removed

    def _check_not_in_use(self) -> None:
        supervisor = self.leaf(SUPERVISOR)
        me = os.getpid()
        others = [p for p in supervisor.pids() if p != me]
        if others:
            raise CgroupBusyError(
                f"{supervisor.path()} holds process(es) {others[:8]}: another node seems to run with cgroup "
                f"root {self.root!r}; refusing to kill its groups. Stop it, or give this node another cgroup_root",
                path=supervisor.path(),
            )

    def destroy(self) -> None:
        """Empty and remove every leaf, then the root, deepest first; idempotent.

        If :meth:`create` moved the node into ``supervisor``, the node first
        goes back to the cgroup it came from (controllers enabled there by
        ``create`` are disabled again, as the kernel requires). Every step
        is tried even when an earlier one failed; the first error is raised
        at the end.
        """
        paths = self.paths()
        if not paths:
            return
        self._check_not_in_use()
        errors: list[CgroupError] = []
        for leaf in self.leaves():
            _collect(errors, leaf.remove)
        supervisor = self.leaf(SUPERVISOR)
        if supervisor.exists():
            if os.getpid() in supervisor.pids():
                _collect(errors, functools.partial(self._move_back, paths[UNIFIED]))
            if os.getpid() not in supervisor.pids():
                _collect(errors, supervisor.remove)
        for d in dict.fromkeys(paths.values()):
            _collect(errors, functools.partial(self._remove_root_dir, d))
        # Give back what create() enabled above the root (bottom-up).
        root = paths.get(UNIFIED)
        for d, controllers in reversed(self._enabled):
            if root is not None and (d == root or _is_below(d, root)):
                continue
            if os.path.isdir(d):
                _disable(d, controllers, strict=False)
        self._enabled.clear()
        if errors:
            raise errors[0]

    def _move_back(self, root_dir: str) -> None:
        target = self._moved_from or self._anchor(UNIFIED)
        assert target is not None
        # The kernel refuses to move a process into a non-root cgroup with
        # controllers enabled for its children: undo them bottom-up first.
        _disable(root_dir, sorted(_subtree_control(root_dir)), strict=False)
        for d, controllers in reversed(self._enabled):
            if d != root_dir and not _is_below(d, root_dir):
                _disable(d, controllers, strict=False)
        self._enabled = [(d, c) for d, c in self._enabled if _is_below(d, root_dir) or d == root_dir]
        try:
            write_text(os.path.join(target, "cgroup.procs"), str(os.getpid()), controller="cgroup", setting="move_self")
        except CgroupError as exc:
            raise CgroupBusyError(
                f"cannot move this node (pid {os.getpid()}) back to {target}: {exc}. The tree root stays until "
                f"the node exits; the next start reuses it",
                path=target,
            ) from None
        self._moved_from = None

    @staticmethod
    def _remove_root_dir(d: str) -> None:
        if not os.path.isdir(d):
            return
        # Leftovers that are not valid group names, or cgroups made below them.
        with os.scandir(d) as entries:
            stray = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        for name in stray:
            Cgroup(name, {"dir": os.path.join(d, name)}).remove()
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise error_from_os(exc, action="remove", path=d) from None


def _collect(errors: list[CgroupError], step: Callable[[], None]) -> None:
    try:
        step()
    except CgroupError as exc:
        errors.append(exc)


def _is_root_cgroup(d: str) -> bool:
    # cgroup.events exists on every non-root cgroup (cgroup-v2.rst); the root
    # of a cgroup namespace is a non-root cgroup and obeys the rule.
    return not os.path.exists(os.path.join(d, "cgroup.events"))


def _is_below(d: str, parent: str) -> bool:
    return d.startswith(parent.rstrip("/") + "/")


def _subtree_control(d: str) -> frozenset[str]:
    return parse_words(read_text(os.path.join(d, "cgroup.subtree_control")) or "")


def _disable(d: str, controllers: list[str], *, strict: bool) -> None:
    if not controllers:
        return
    try:
        write_text(os.path.join(d, "cgroup.subtree_control"), " ".join("-" + c for c in controllers),
                   controller=controllers[0], setting="disable_controllers")
    except (CgroupBusyError, CgroupControllerMissing, CgroupPermissionError):
        # Still used below (another child enabled them) or gone: not ours to force.
        if strict:
            raise
