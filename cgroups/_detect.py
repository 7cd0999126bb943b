"""Which cgroup layout this host has, and what we may do with it.

Four layouts exist in the wild:

``v2``
    one cgroup2 mount at /sys/fs/cgroup holding every controller (current
    systemd distributions, most production Linux today).
``hybrid``
    cgroup v1 hierarchies per controller at /sys/fs/cgroup/<controller>,
    plus a cgroup2 mount (usually /sys/fs/cgroup/unified) that holds few or
    no controllers but gives cpu.stat, PSI, cgroup.kill, cgroup.freeze and
    cgroup.events in every cgroup.
``v1``
    only the per-controller v1 hierarchies.
``none``
    no cgroup filesystem at all (some containers, some sandboxes).

Everything here reads files below ``sys_root`` and ``proc_root`` only, so a
fixture tree can stand in for the real one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ._files import parse_words, read_text

DEFAULT_SYS_ROOT = "/sys/fs/cgroup"

#: The hierarchy key of the cgroup2 tree in ``own_paths`` and ``paths()``.
UNIFIED = "unified"

#: Controller names the kernel may bind to a v1 hierarchy.
V1_CONTROLLERS = frozenset({
    "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb", "memory",
    "misc", "net_cls", "net_prio", "perf_event", "pids", "rdma",
})

#: The v1 hierarchies a group joins: the ones we limit, read or freeze with.
TREE_V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "blkio", "freezer")

#: What each controller gives a group, for messages about a missing one.
_CONTROLLER_USE = {
    "memory": "memory limits, memory stats and OOM facts",
    "cpu": "CPU limits and weights, throttling stats",
    "pids": "the pids limit and count",
    "io": "I/O byte counts",
}

Kind = Literal["v2", "hybrid", "v1", "none"]


@dataclass(frozen=True)
class Layout:
    """The cgroup layout of this host as seen by one process.

    ``own_paths`` maps each hierarchy key (``"unified"`` or a v1 controller
    name) to the process's cgroup in that hierarchy as seen inside its mount:
    the path from /proc/<pid>/cgroup, less the mount's own root when the
    mount shows only a subtree (a container without a cgroup namespace).
    """

    kind: Kind
    sys_root: str
    unified_mount: str | None
    v1_mounts: Mapping[str, str]
    controllers: frozenset[str]
    own_paths: Mapping[str, str]
    writable: bool
    problems: tuple[str, ...]
    #: cgroup v2 controllers the own cgroup may hand out (its cgroup.controllers).
    v2_available: frozenset[str] = field(default_factory=frozenset)
    #: cgroup v2 controllers enabled for the own cgroup's children (its cgroup.subtree_control).
    v2_enabled: frozenset[str] = field(default_factory=frozenset)

    def mount_of(self, key: str) -> str | None:
        """The mount directory of a hierarchy key, or None."""
        if key == UNIFIED:
            return self.unified_mount
        return self.v1_mounts.get(key)

    def own_dir(self, key: str) -> str | None:
        """The directory of this process's own cgroup in a hierarchy."""
        mount = self.mount_of(key)
        own = self.own_paths.get(key)
        if mount is None or own is None:
            return None
        return join_cgroup(mount, own)

    def hierarchies(self) -> list[str]:
        """Hierarchy keys a group lives in: unified first, then the useful v1 ones."""
        keys = [UNIFIED] if self.unified_mount is not None else []
        keys.extend(c for c in TREE_V1_CONTROLLERS if c in self.v1_mounts)
        return keys

    def describe(self) -> str:
        """A multi-line report for humans (``python -m cgroups``, ``web-node plan``)."""
        lines = [f"cgroup layout: {self.kind} ({_KIND_WORDS[self.kind]})"]
        if self.unified_mount is not None:
            own = self.own_paths.get(UNIFIED, "?")
            lines.append(f"cgroup2 mount: {self.unified_mount}    own cgroup: {own}")
            lines.append(f"  v2 controllers available: {_words(self.v2_available)}")
            lines.append(f"  v2 controllers enabled for children: {_words(self.v2_enabled)}")
        if self.v1_mounts:
            lines.append("cgroup v1 hierarchies:")
            width = max(len(c) for c in self.v1_mounts)
            mount_width = max(len(m) for m in self.v1_mounts.values())
            for controller in sorted(self.v1_mounts):
                own = self.own_paths.get(controller, "?")
                mount = self.v1_mounts[controller]
                lines.append(f"  {controller:<{width}}  {mount:<{mount_width}}  own cgroup: {own}")
        lines.append(f"usable controllers: {_words(self.controllers)}")
        lines.append(f"can write (create groups, set limits): {'yes' if self.writable else 'no'}")
        if self.problems:
            lines.append("problems:")
            lines.extend(f"  - {p}" for p in self.problems)
        else:
            lines.append("problems: none")
        return "\n".join(lines)


_KIND_WORDS: Mapping[Kind, str] = {
    "v2": "cgroup v2, one unified hierarchy",
    "hybrid": "cgroup v1 controllers plus a cgroup2 tree for cpu.stat, pressure, kill and events",
    "v1": "cgroup v1 hierarchies only",
    "none": "no cgroup filesystem: no limits and no per-group stats",
}


def _words(names: frozenset[str]) -> str:
    return " ".join(sorted(names)) or "none"


def join_cgroup(mount: str, cgroup_path: str) -> str:
    """``/sys/fs/cgroup/memory`` + ``/a/b`` -> ``/sys/fs/cgroup/memory/a/b``."""
    rel = cgroup_path.strip("/")
    return os.path.join(mount, rel) if rel else mount


# -- /proc/<pid>/mountinfo ---------------------------------------------------


@dataclass(frozen=True)
class _Mount:
    directory: str  # where it is, below sys_root
    root: str  # which cgroup of the hierarchy the mount shows at its top
    fstype: str
    read_only: bool
    options: frozenset[str]


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field_text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \040 \011 \012 \134.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field_text)


def _rebase(mount_point: str, sys_root: str) -> str | None:
    """Map a mount point from mountinfo to a directory below ``sys_root``.

    Mount points at or below ``sys_root`` are taken as they are. Mount points
    below the standard /sys/fs/cgroup are read relative to ``sys_root``, so a
    fixture tree (whose mountinfo speaks of /sys/fs/cgroup) stands in for the
    real one. Anything else is not ours to use.
    """
    root = sys_root.rstrip("/") or "/"
    if mount_point == root or mount_point.startswith(root + "/"):
        return mount_point
    if mount_point == DEFAULT_SYS_ROOT or mount_point.startswith(DEFAULT_SYS_ROOT + "/"):
        return root + mount_point[len(DEFAULT_SYS_ROOT):]
    return None


def parse_mountinfo(text: str, sys_root: str) -> list[_Mount]:
    """cgroup and cgroup2 mounts below ``sys_root`` from /proc/<pid>/mountinfo.

    Line format (proc(5)): ``id parent maj:min root mount-point options
    [optional fields...] - fstype source super-options``.
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 2:
            continue
        fstype = fields[sep + 1]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        directory = _rebase(_unescape(fields[4]), sys_root)
        if directory is None:
            continue
        mount_options = fields[5].split(",")
        super_options = fields[sep + 3].split(",") if len(fields) > sep + 3 else []
        mounts.append(_Mount(
            directory=directory,
            root=_unescape(fields[3]),
            fstype=fstype,
            read_only="ro" in mount_options or "ro" in super_options,
            options=frozenset(super_options),
        ))
    return mounts


def _scan_mounts(sys_root: str) -> list[_Mount]:
    """Without mountinfo: guess the mounts from the directories themselves.

    A cgroup2 root has ``cgroup.controllers``; a v1 hierarchy has ``tasks``
    and is named after its controllers (``cpu,cpuacct``).
    """
    mounts = []
    if os.path.exists(os.path.join(sys_root, "cgroup.controllers")):
        return [_Mount(sys_root, "/", "cgroup2", False, frozenset())]
    try:
        names = sorted(os.listdir(sys_root))
    except OSError:
        return []
    for name in names:
        path = os.path.join(sys_root, name)
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        if os.path.exists(os.path.join(path, "cgroup.controllers")):
            mounts.append(_Mount(path, "/", "cgroup2", False, frozenset()))
        elif os.path.exists(os.path.join(path, "tasks")):
            mounts.append(_Mount(path, "/", "cgroup", False, frozenset(name.split(","))))
    return mounts


# -- /proc/<pid>/cgroup ------------------------------------------------------


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Hierarchy key -> cgroup path from /proc/<pid>/cgroup.

    ``0::/a/b`` is the cgroup2 line (key ``"unified"``); ``4:memory:/x`` and
    ``2:cpu,cpuacct:/x`` are v1 lines (one key per controller);
    ``1:name=systemd:/x`` names no controller and is skipped.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier_id, controllers, path = parts
        # A zombie whose cgroup was removed shows "/path (deleted)".
        path = path.removesuffix(" (deleted)")
        if hier_id == "0" and controllers == "":
            out[UNIFIED] = path
            continue
        for controller in controllers.split(","):
            if controller in V1_CONTROLLERS:
                out[controller] = path
    return out


def _relative_to_mount(path: str, mount_root: str) -> str | None:
    """The cgroup path as seen inside a mount that shows ``mount_root`` at its top."""
    if mount_root in ("", "/"):
        return path
    if path == mount_root:
        return "/"
    if path.startswith(mount_root.rstrip("/") + "/"):
        return path[len(mount_root.rstrip("/")):]
    return None


# -- detection ---------------------------------------------------------------


def detect_layout(sys_root: str = DEFAULT_SYS_ROOT, proc_root: str = "/proc", pid: str = "self") -> Layout:
    """Detect the cgroup layout, controllers, own cgroup and writability.

    Reads ``{proc_root}/{pid}/mountinfo`` (falling back to looking at the
    directories below ``sys_root``) and ``{proc_root}/{pid}/cgroup``. Never
    raises for a missing or odd file: what is wrong goes into ``problems``.
    """
    mountinfo = read_text(os.path.join(proc_root, pid, "mountinfo"))
    mounts = parse_mountinfo(mountinfo, sys_root) if mountinfo is not None else _scan_mounts(sys_root)
    proc_cgroup = read_text(os.path.join(proc_root, pid, "cgroup")) or ""
    membership = parse_proc_cgroup(proc_cgroup)

    problems: list[str] = []
    unified: _Mount | None = None
    v1: dict[str, _Mount] = {}
    for mount in mounts:
        if mount.fstype == "cgroup2":
            # Prefer sys_root itself (pure v2) over a nested one.
            if unified is None or mount.directory == sys_root.rstrip("/"):
                unified = mount
        else:
            for controller in sorted(mount.options & V1_CONTROLLERS):
                v1.setdefault(controller, mount)

    kind: Kind
    if unified is not None and v1:
        kind = "hybrid"
    elif unified is not None:
        kind = "v2"
    elif v1:
        kind = "v1"
    else:
        kind = "none"

    # Own cgroup per hierarchy, as seen inside each mount.
    own_paths: dict[str, str] = {}
    hier_mounts: dict[str, _Mount] = dict(v1)
    if unified is not None:
        hier_mounts[UNIFIED] = unified
    for key, mount in sorted(hier_mounts.items()):
        path = membership.get(key)
        if path is None:
            problems.append(
                f"{proc_root}/{pid}/cgroup has no line for the {_hier_name(key)} hierarchy mounted at "
                f"{mount.directory}: cannot tell our own cgroup there; is {proc_root} this system's proc?"
            )
            continue
        rel = _relative_to_mount(path, mount.root)
        if rel is None or rel.startswith("/.."):
            problems.append(
                f"our cgroup {path} in the {_hier_name(key)} hierarchy is outside what the mount at "
                f"{mount.directory} shows ({mount.root}): groups cannot be made below it; give this "
                f"process a cgroup namespace (docker --cgroupns=private) or mount the whole hierarchy"
            )
            continue
        own_paths[key] = rel

    v2_available: frozenset[str] = frozenset()
    v2_enabled: frozenset[str] = frozenset()
    if unified is not None and UNIFIED in own_paths:
        own_unified = join_cgroup(unified.directory, own_paths[UNIFIED])
        v2_available = parse_words(read_text(os.path.join(own_unified, "cgroup.controllers")) or "")
        v2_enabled = parse_words(read_text(os.path.join(own_unified, "cgroup.subtree_control")) or "")

    controllers = v2_available | frozenset(v1)
    layout_v1_mounts = {c: m.directory for c, m in v1.items()}

    writable = kind != "none"
    if kind == "none":
        problems.append(
            f"no cgroup filesystem below {sys_root}: groups run without limits and without per-group "
            f"stats; mount cgroup2 there (mount -t cgroup2 none {sys_root}) or run where cgroups are available"
        )
    keys = ([UNIFIED] if unified is not None else []) + [c for c in TREE_V1_CONTROLLERS if c in v1]
    checked: set[str] = set()
    for key in keys:
        mount = hier_mounts[key]
        if mount.directory in checked:
            continue
        checked.add(mount.directory)
        if mount.read_only:
            writable = False
            problems.append(
                f"{mount.fstype} mounted read-only at {mount.directory}: groups, limits and per-group stats are "
                f"unavailable; run with a delegated cgroup (systemd Delegate=yes), a writable cgroup "
                f"namespace (docker --cgroupns=private), or as root on the host"
            )
            continue
        if key not in own_paths:
            writable = False
            continue
        own_dir = join_cgroup(mount.directory, own_paths[key])
        if not os.path.isdir(own_dir):
            writable = False
            problems.append(
                f"our own cgroup directory {own_dir} does not exist: {sys_root} is not the cgroup "
                f"filesystem this process lives in"
            )
        elif not os.access(own_dir, os.W_OK):
            writable = False
            problems.append(
                f"no write permission on {own_dir} (uid {os.geteuid()}): cannot create groups there; run as "
                f"root or delegate that cgroup to this user (systemd Delegate=yes)"
            )

    if kind != "none":
        problems.extend(_missing_controller_problems(kind, controllers, sys_root))

    return Layout(
        kind=kind,
        sys_root=sys_root,
        unified_mount=unified.directory if unified is not None else None,
        v1_mounts=layout_v1_mounts,
        controllers=controllers,
        own_paths=own_paths,
        writable=writable,
        problems=tuple(problems),
        v2_available=v2_available,
        v2_enabled=v2_enabled,
    )


def _hier_name(key: str) -> str:
    return "cgroup2" if key == UNIFIED else f"v1 {key}"


def _missing_controller_problems(kind: Kind, controllers: frozenset[str], sys_root: str) -> list[str]:
    out = []
    for controller, use in _CONTROLLER_USE.items():
        v1_name = "blkio" if controller == "io" else controller
        if controller in controllers or v1_name in controllers:
            continue
        v2_fix = (
            "our cgroup2 cgroup does not list it in cgroup.controllers: the parent must enable it in its "
            "cgroup.subtree_control (systemd: Delegate=yes on the unit)"
        )
        v1_fix = f"no v1 hierarchy mounts it (mount -t cgroup -o {v1_name} cgroup {sys_root}/{v1_name})"
        fix = v2_fix if kind == "v2" else v1_fix if kind == "v1" else f"{v1_fix}, and {v2_fix}"
        out.append(f"{controller} controller unavailable: no {use} per group; {fix}")
    return out


# -- what a tree of groups gets ----------------------------------------------

#: The limits a group may have (cgroups.Limits fields less their unit suffix), in report order.
LIMIT_SETTINGS = ("memory_max", "memory_high", "memory_low", "swap_max", "cpu_max", "cpu_weight", "pids_max")

#: The controller each limit needs.
_LIMIT_CONTROLLER = {
    "memory_max": "memory", "memory_high": "memory", "memory_low": "memory", "swap_max": "memory",
    "cpu_max": "cpu", "cpu_weight": "cpu", "pids_max": "pids",
}

#: Per limit: (v2 file, v1 file or None when v1 has no such knob). The v1 files are those Cgroup.apply_limits writes.
_LIMIT_FILES = {
    "memory_max": ("memory.max", "memory.limit_in_bytes"),
    "memory_high": ("memory.high", "memory.soft_limit_in_bytes"),
    "memory_low": ("memory.low", None),
    "swap_max": ("memory.swap.max", "memory.memsw.limit_in_bytes"),
    "cpu_max": ("cpu.max", "cpu.cfs_quota_us"),
    "cpu_weight": ("cpu.weight", "cpu.shares"),
    "pids_max": ("pids.max", "pids.max"),
}

Status = Literal["enforced", "approximated", "not enforced"]


@dataclass(frozen=True)
class LimitEnforcement:
    """Whether the kernel will enforce one limit for groups made below the tree root."""

    setting: str
    status: Status
    detail: str

    @property
    def enforced(self) -> bool:
        return self.status == "enforced"

    def describe(self) -> str:
        if self.status == "enforced":
            return f"{self.setting}: enforced ({self.detail})"
        if self.status == "approximated":
            return f"{self.setting}: approximated: {self.detail}"
        return f"{self.setting}: NOT enforced: {self.detail}"


@dataclass(frozen=True)
class TreeReport:
    """What groups made below ``root`` get on this host: where, which controllers, which limits hold.

    ``controllers`` maps each controller a group gets to how ("v1 hierarchy
    /sys/fs/cgroup/memory", "cgroup v2, delegated to <dir>"); ``missing``
    maps the ones it does not get to why.
    """

    root: str
    anchors: Mapping[str, str]
    controllers: Mapping[str, str]
    missing: Mapping[str, str]
    limits: tuple[LimitEnforcement, ...]

    def limit(self, setting: str) -> LimitEnforcement:
        return next(e for e in self.limits if e.setting == setting)

    def describe(self) -> str:
        lines = [f"groups of cgroup root {self.root!r} are made below:"]
        if not self.anchors:
            lines.append("  (nowhere: no usable cgroup hierarchy)")
        for where in dict.fromkeys(self.anchors.values()):
            keys = [k for k, d in self.anchors.items() if d == where]
            lines.append(f"  {where}    ({', '.join(_hier_name(k) for k in keys)})")
        lines.append("controllers the groups get:")
        for controller in sorted({*self.controllers, *self.missing}):
            if controller in self.controllers:
                lines.append(f"  {controller}: {self.controllers[controller]}")
            else:
                lines.append(f"  {controller}: NOT available: {self.missing[controller]}")
        lines.append("limits:")
        lines.extend(f"  {e.describe()}" for e in self.limits)
        return "\n".join(lines)


def tree_report(layout: Layout, root: str = "web-node") -> TreeReport:
    """What groups below ``root`` (relative to our own cgroup, or absolute) get on this host.

    The same precedence as ``Cgroup.apply_limits``: a v1 hierarchy for a
    controller wins; otherwise the cgroup v2 controller, if the cgroup the
    tree is made below may hand it out (its ``cgroup.controllers``: on a
    systemd host, what ``Delegate=`` gave the unit). Reads files only.
    """
    rel = "/".join(p for p in root.split("/") if p)
    anchors: dict[str, str] = {}
    for key in layout.hierarchies():
        if root.startswith("/"):
            anchor = layout.mount_of(key)
        else:
            anchor = layout.own_dir(key)
            # Seen from the node after it moved itself into <root>/supervisor.
            suffix = f"/{rel}/supervisor"
            if anchor is not None and key == UNIFIED and anchor.endswith(suffix):
                anchor = anchor[: -len(suffix)]
        if anchor is not None:
            anchors[key] = anchor
    v2_anchor = anchors.get(UNIFIED)
    v2_offered = parse_words(read_text(os.path.join(v2_anchor, "cgroup.controllers")) or "") if v2_anchor else frozenset()

    controllers: dict[str, str] = {}
    missing: dict[str, str] = {}
    for controller in ("memory", "cpu", "pids", "io"):
        v1_name = "blkio" if controller == "io" else controller
        if v1_name in layout.v1_mounts and v1_name in anchors:
            controllers[controller] = f"v1 hierarchy {layout.v1_mounts[v1_name]}"
        elif controller in v2_offered:
            controllers[controller] = f"cgroup v2, offered by {v2_anchor}/cgroup.controllers"
        else:
            missing[controller] = _why_missing(layout, controller, v2_anchor)

    limits = []
    for setting in LIMIT_SETTINGS:
        controller = _LIMIT_CONTROLLER[setting]
        if controller in missing:
            limits.append(LimitEnforcement(setting, "not enforced", f"{controller} controller {_short_why(layout)}"))
        elif controller in layout.v1_mounts and controller in anchors:
            limits.append(_v1_enforcement(setting, anchors[controller]))
        else:
            limits.append(LimitEnforcement(setting, "enforced", f"cgroup v2 {controller} controller: {_LIMIT_FILES[setting][0]}"))
    return TreeReport(root=root, anchors=anchors, controllers=controllers, missing=missing, limits=tuple(limits))


def _short_why(layout: Layout) -> str:
    if layout.kind == "none":
        return "unavailable: no cgroup filesystem"
    if layout.kind == "v2":
        return "not delegated"
    return "not mounted (no v1 hierarchy, not offered by cgroup v2)"


def _why_missing(layout: Layout, controller: str, v2_anchor: str | None) -> str:
    if layout.kind == "none":
        return "no cgroup filesystem"
    v1_name = "blkio" if controller == "io" else controller
    v2 = (f"{v2_anchor}/cgroup.controllers does not list it: the parent cgroup does not delegate it "
          f"(systemd: Delegate=yes on the unit)") if v2_anchor else "no cgroup2 tree"
    if layout.kind == "v2":
        return v2
    return f"no v1 hierarchy mounts {v1_name}, and {v2}"


def _v1_enforcement(setting: str, anchor: str) -> LimitEnforcement:
    v1_file = _LIMIT_FILES[setting][1]
    if setting == "memory_low":
        return LimitEnforcement(setting, "not enforced",
                                "cgroup v1 has no memory.low (the node refuses the setting on this host)")
    if setting == "memory_high":
        return LimitEnforcement(setting, "approximated",
                                "cgroup v1 has no memory.high; written as memory.soft_limit_in_bytes, which the "
                                "kernel reclaims towards only under host-wide memory pressure and never throttles")
    assert v1_file is not None
    controller = _LIMIT_CONTROLLER[setting]
    # Two v1 knobs depend on how the kernel was built or booted; both files are in every
    # cgroup of the hierarchy (the root one too) when the kernel has them.
    kernel_option = _V1_KERNEL_OPTION.get(setting)
    if kernel_option is not None and not os.path.exists(os.path.join(anchor, v1_file)):
        return LimitEnforcement(setting, "not enforced", f"no {v1_file} in {anchor}: {kernel_option}")
    return LimitEnforcement(setting, "enforced", f"v1 {controller} controller: {v1_file}")


_V1_KERNEL_OPTION = {
    "swap_max": "this kernel does not account swap in cgroup v1 (boot with swapaccount=1)",
    "cpu_max": "this kernel has no CFS bandwidth control (CONFIG_CFS_BANDWIDTH)",
}
