"""One group's cgroup: the same name in every hierarchy the host has."""

from __future__ import annotations

import errno
import os
import select
import signal
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence

from . import _placement, _v1, _v2
from ._detect import UNIFIED
from ._errors import CgroupBusyError, CgroupControllerMissing, CgroupError, error_from_os
from ._files import OpenFiles, parse_flat_keyed, parse_pids, parse_words, read_text, write_text
from ._limits import Limits
from ._stats import SECTIONS, Sources, Stats, read_stats

#: How long kill() keeps re-reading cgroup.procs and signalling when there
#: is no cgroup.kill: forks racing with the reads are caught by later rounds.
KILL_LOOP_S = 2.0

#: Longest single sleep in poll(2) on cgroup.events before re-reading it anyway.
EVENTS_POLL_CAP_S = 0.5

_MEMORY_SETTINGS = ("memory_max_bytes", "memory_high_bytes", "memory_low_bytes", "swap_max_bytes")
_CPU_SETTINGS = ("cpu_max_cores", "cpu_weight")


class Cgroup:
    """The cgroup of one group, present in each hierarchy of ``paths``.

    ``paths`` maps hierarchy keys (``"unified"`` for cgroup v2, or a v1
    controller name such as ``"memory"``) to the group's directory there.
    On a hybrid host the v1 memory/cpu/pids directories hold the limits and
    the cgroup2 directory gives cpu.stat, pressure, kill, freeze and events.

    Blocking calls (``wait_empty``, ``remove``, ``kill``) are for a worker
    thread when the caller is async. Keep one object per group: it keeps the
    files :meth:`stats` reads open between snapshots (:meth:`close` releases
    them).
    """

    def __init__(self, name: str, paths: Mapping[str, str]) -> None:
        self.name = name
        self._paths = dict(paths)
        self._dirs = _unique(self._paths.values())
        self._unified = self._paths.get(UNIFIED)
        self._v1_dirs = _unique(d for k, d in self._paths.items() if k != UNIFIED)
        self._sources = Sources(
            unified=self._unified,
            memory=self._paths.get("memory"),
            cpu=self._paths.get("cpu"),
            cpuacct=self._paths.get("cpuacct"),
            pids=self._paths.get("pids"),
            blkio=self._paths.get("blkio"),
            freezer=self._paths.get("freezer"),
            procs_dirs=tuple(self._dirs),
        )
        # Descriptors kept open for stats(); closed by close(), remove(), or
        # when this object is garbage collected.
        self._files = OpenFiles()
        weakref.finalize(self, self._files.close)

    def __repr__(self) -> str:
        return f"Cgroup({self.name!r}, {self._paths!r})"

    # -- where ---------------------------------------------------------------

    def paths(self) -> dict[str, str]:
        """Hierarchy key -> absolute directory of this group."""
        return dict(self._paths)

    def path(self) -> str:
        """The one path to show humans: the cgroup2 directory, else the v1 memory one."""
        for key in (UNIFIED, "memory"):
            if key in self._paths:
                return self._paths[key]
        if self._dirs:
            return self._dirs[0]
        raise CgroupError(f"group {self.name} has no cgroup directory: this host has no cgroup filesystem")

    def procs_files(self) -> list[str]:
        """The cgroup.procs file of each distinct directory (co-mounted v1 hierarchies share one)."""
        return [os.path.join(d, "cgroup.procs") for d in self._dirs]

    # -- life ----------------------------------------------------------------

    def exists(self) -> bool:
        """True when the group's directory exists in any hierarchy."""
        return any(os.path.isdir(d) for d in self._dirs)

    def create(self) -> None:
        """Make the group's directory in every hierarchy; idempotent."""
        for d in self._dirs:
            try:
                os.mkdir(d)
            except FileExistsError:
                if not os.path.isdir(d):
                    raise CgroupError(
                        f"cannot create group {self.name}: {d} exists and is not a cgroup directory "
                        f"(a group name must not collide with an interface file name)",
                        path=d,
                    ) from None
            except FileNotFoundError:
                raise CgroupError(
                    f"cannot create group {self.name}: the parent of {d} does not exist; "
                    f"create the tree first (CgroupTree.create())",
                    path=d,
                ) from None
            except OSError as exc:
                raise error_from_os(exc, action="create", path=d) from None

    def remove(self, timeout_s: float = 5.0) -> None:
        """Kill what is inside, wait until empty, and remove the directories; idempotent.

        Cgroups a process made below its group are removed first (deepest
        first). Raises :class:`CgroupBusyError` when processes are still
        inside after ``timeout_s``.
        """
        if not self.exists():
            return
        if self.populated():
            self.kill()
            if not self.wait_empty(timeout_s):
                raise CgroupBusyError(
                    f"group {self.name} still holds processes {self.pids()[:10]} {timeout_s:.1f}s after "
                    f"SIGKILL (uninterruptible sleep?); not removing {self.path()}",
                    path=self.path(),
                )
        self._files.close()
        for d in self._dirs:
            _remove_cgroup_dir(d, deadline=time.monotonic() + timeout_s)

    # -- placement -------------------------------------------------------------

    def placement_argv(self, argv: Sequence[str]) -> list[str]:
        """An argv that starts ``argv`` already inside this group.

        ``["/bin/sh", "-c", SCRIPT, "cgroups-place", procs1, ..., "--", *argv]``:
        the shell writes its own pid to each cgroup.procs file, then execs
        ``argv`` (same pid). If a write fails it prints the file on stderr and
        exits 125 without running ``argv``. See :mod:`cgroups._placement` for
        why this beats moving the child later or a ``preexec_fn``.
        """
        return _placement.placement_argv(self.procs_files(), argv)

    # -- limits ----------------------------------------------------------------

    def apply_limits(self, limits: Limits) -> None:
        """Write the limits that are not None, also while the group runs.

        v2 files on cgroup v2; on v1 memory.limit_in_bytes,
        memory.soft_limit_in_bytes (for high), memory.memsw.limit_in_bytes
        (memory + swap), cpu.cfs_quota_us/cfs_period_us, cpu.shares and
        pids.max. Raises :class:`CgroupControllerMissing` naming the
        controller and setting when the group has no such controller.
        """
        v2_controllers = self._v2_controllers()
        src = self._sources
        memory_settings = [s for s in _MEMORY_SETTINGS if getattr(limits, s) is not None]
        if memory_settings:
            if src.memory is not None:
                _v1.write_memory_limits(src.memory, limits)
            elif self._unified is not None and "memory" in v2_controllers:
                _v2.write_memory_limits(self._unified, limits)
            else:
                raise self._missing("memory", memory_settings[0], v2_controllers)
        cpu_settings = [s for s in _CPU_SETTINGS if getattr(limits, s) is not None]
        if cpu_settings:
            if src.cpu is not None:
                _v1.write_cpu_limits(src.cpu, limits)
            elif self._unified is not None and "cpu" in v2_controllers:
                _v2.write_cpu_limits(self._unified, limits)
            else:
                raise self._missing("cpu", cpu_settings[0], v2_controllers)
        if limits.pids_max is not None:
            if src.pids is not None:
                _v1.write_pids_limit(src.pids, limits)
            elif self._unified is not None and "pids" in v2_controllers:
                _v2.write_pids_limit(self._unified, limits)
            else:
                raise self._missing("pids", "pids_max", v2_controllers)

    def _v2_controllers(self) -> frozenset[str]:
        if self._unified is None:
            return frozenset()
        return parse_words(read_text(os.path.join(self._unified, "cgroup.controllers")) or "")

    def _missing(self, controller: str, setting: str, v2_controllers: frozenset[str]) -> CgroupControllerMissing:
        if self._unified is not None:
            parent = os.path.dirname(self._unified)
            where = (
                f"it is neither a mounted v1 hierarchy nor enabled for this cgroup v2 group "
                f"(not in {parent}/cgroup.subtree_control; the group has: {' '.join(sorted(v2_controllers)) or 'none'})"
            )
        else:
            where = f"no v1 hierarchy mounts the {controller} controller"
        return CgroupControllerMissing(
            f"cannot set {setting} for group {self.name}: no {controller} controller here; {where}",
            controller=controller,
            setting=setting,
            path=self.path() if self._dirs else None,
        )

    def memory_limit_bytes(self) -> int | None:
        """The memory limit in force (page-rounded by the kernel), None when unlimited or unknown."""
        if self._sources.memory is not None:
            return _v1.memory_limit_bytes(self._sources.memory)
        if self._unified is not None:
            return _v2.memory_limit_bytes(self._unified)
        return None

    # -- reading -----------------------------------------------------------------

    def stats(self, sections: frozenset[str] = SECTIONS) -> Stats:
        """One snapshot of usage, limits, events, CPU, pressure, pids and I/O.

        ``sections`` (a subset of ``cgroups.STATS_SECTIONS``) reads only
        those parts; the others are None. Never raises for a missing file or
        group: those fields are None.
        """
        with self._files.held():
            return read_stats(self._sources, self._files.read_held, sections)

    def close(self) -> None:
        """Close the file descriptors kept for :meth:`stats` (reopened when needed)."""
        self._files.close()

    def oom_kill_count(self) -> int | None:
        """How many processes of this group the kernel's OOM killer killed so far.

        v2 memory.events ``oom_kill``; v1 memory.oom_control ``oom_kill``
        (kernel 4.13+). Compare the count before and after a child died to
        tell an OOM kill from any other SIGKILL; :meth:`memory_limit_bytes`
        then says at which limit.
        """
        if self._sources.memory is not None:
            return _v1.oom_kill_count(self._sources.memory)
        if self._unified is not None:
            return _v2.oom_kill_count(self._unified)
        return None

    def pids(self) -> list[int]:
        """The processes in this group (all hierarchies, each pid once)."""
        seen: dict[int, None] = {}
        for d in self._dirs:
            text = read_text(os.path.join(d, "cgroup.procs"))
            if text is not None:
                seen.update(dict.fromkeys(parse_pids(text)))
        return list(seen)

    def populated(self) -> bool:
        """True while any live process is in the group (or in cgroups below it)."""
        if self._unified is not None:
            events = read_text(os.path.join(self._unified, "cgroup.events"))
            if events is not None and parse_flat_keyed(events).get("populated"):
                return True
        # v1 (and stragglers that left the cgroup2 leaf in hybrid mode): zombies
        # are not listed in cgroup.procs, so an empty list means no live process.
        dirs = self._v1_dirs if self._unified is not None else self._dirs
        return any(_has_procs_below(d) for d in dirs)

    # -- emptying ------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL every process in the group; only ever processes inside it.

        With cgroup.kill (cgroup v2, kernel 5.14+) the kernel does it, forks
        included, and this returns at once. Otherwise: freeze if a freezer is
        there (so nothing forks), SIGKILL each pid listed in cgroup.procs
        through a pidfd, thaw, and repeat until no pid is listed (at most
        ``KILL_LOOP_S``). Either way :meth:`wait_empty` says when all are gone.
        Refuses (:class:`CgroupBusyError`) a group that holds the caller.
        """
        if not self.exists():
            return
        if os.getpid() in self.pids():
            raise CgroupBusyError(
                f"refusing to kill group {self.name}: this very process (pid {os.getpid()}) is inside "
                f"{self.path()}",
                path=self.path(),
            )
        unified = self._unified
        if unified is not None and os.path.exists(os.path.join(unified, "cgroup.kill")):
            try:
                write_text(os.path.join(unified, "cgroup.kill"), "1", controller="cgroup", setting="kill")
            except CgroupError:
                if os.path.isdir(unified):
                    raise
                # Removed meanwhile: nothing left to kill there.
            # Processes that are in our v1 directories but not in the cgroup2
            # leaf (moved by someone) are not reached by cgroup.kill.
            if self._v1_dirs:
                self._signal_listed(self._v1_dirs)
            return
        self._kill_loop()

    def _kill_loop(self) -> None:
        deadline = time.monotonic() + KILL_LOOP_S
        frozen = self._try_freeze()
        try:
            delay = 0.001
            while True:
                if not self._signal_listed(self._dirs):
                    return
                if frozen:
                    # Frozen tasks die only once thawed; with the SIGKILL
                    # pending they cannot fork any more, so thaw now.
                    self.thaw()
                    frozen = False
                if time.monotonic() >= deadline:
                    return
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        finally:
            if frozen:
                self.thaw()

    def _signal_listed(self, dirs: Sequence[str]) -> bool:
        """SIGKILL the processes listed in ``dirs``; False when none was listed."""
        pids = _read_pids(dirs)
        if not pids:
            return False
        # Open a pidfd first, then check the pid is still listed, then signal
        # through the pidfd: if the process died and its pid was reused by an
        # unrelated process, the pidfd refers to the dead one and the signal
        # goes nowhere (ESRCH) instead of hitting a stranger.
        handles: dict[int, int | None] = {}
        for pid in pids:
            try:
                handles[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except OSError as exc:
                if exc.errno != errno.ENOSYS:  # kernel < 5.3: no pidfd
                    continue
                handles[pid] = None
        try:
            still = set(_read_pids(dirs))
            for pid, fd in handles.items():
                if pid not in still:
                    continue
                try:
                    if fd is not None:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            for fd in handles.values():
                if fd is not None:
                    os.close(fd)
        return True

    def _try_freeze(self) -> bool:
        try:
            self.freeze(wait_s=0.2)
        except CgroupError:
            return False
        return True

    def freeze(self, wait_s: float = 1.0) -> None:
        """Stop every process in the group (v2 cgroup.freeze, v1 freezer.state).

        Waits up to ``wait_s`` for the kernel to report the group frozen.
        Raises :class:`CgroupControllerMissing` when there is no freezer.
        """
        if self._unified is not None and os.path.exists(os.path.join(self._unified, "cgroup.freeze")):
            write_text(os.path.join(self._unified, "cgroup.freeze"), "1", controller="cgroup", setting="freeze")
            self._wait_events(lambda ev: ev.get("frozen") == 1, time.monotonic() + wait_s)
            return
        freezer = self._sources.freezer
        if freezer is not None and os.path.exists(os.path.join(freezer, "freezer.state")):
            _v1.freeze(freezer)
            _poll_until(lambda: (read_text(os.path.join(freezer, "freezer.state")) or "").strip() != "FREEZING",
                        time.monotonic() + wait_s)
            return
        raise CgroupControllerMissing(
            f"cannot freeze group {self.name}: no cgroup.freeze (cgroup v2, kernel 5.2+) and no v1 freezer hierarchy",
            controller="freezer",
            setting="freeze",
            path=self.path() if self._dirs else None,
        )

    def thaw(self) -> None:
        """Let a frozen group run again."""
        if self._unified is not None and os.path.exists(os.path.join(self._unified, "cgroup.freeze")):
            write_text(os.path.join(self._unified, "cgroup.freeze"), "0", controller="cgroup", setting="thaw")
            return
        freezer = self._sources.freezer
        if freezer is not None and os.path.exists(os.path.join(freezer, "freezer.state")):
            _v1.thaw(freezer)
            return
        raise CgroupControllerMissing(
            f"cannot thaw group {self.name}: no cgroup.freeze and no v1 freezer hierarchy",
            controller="freezer",
            setting="thaw",
            path=self.path() if self._dirs else None,
        )

    def wait_empty(self, timeout_s: float) -> bool:
        """Block until no process is left in the group; False after ``timeout_s``.

        cgroup v2: sleeps in poll(2) on cgroup.events, which the kernel
        notifies when "populated" changes, and re-reads it after each wake.
        v1 only: re-reads cgroup.procs with short, growing waits.
        """
        deadline = time.monotonic() + timeout_s
        if self._unified is not None and not self._wait_events(lambda ev: ev.get("populated", 0) == 0, deadline):
            return False
        dirs = self._v1_dirs if self._unified is not None else self._dirs
        return _poll_until(lambda: not any(_has_procs_below(d) for d in dirs), deadline)

    def _wait_events(self, done: Callable[[dict[str, int]], bool], deadline: float) -> bool:
        """Wait until ``done(cgroup.events)``; True at once when the file is gone."""
        assert self._unified is not None
        path = os.path.join(self._unified, "cgroup.events")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            poller = select.poll()
            # kernfs signals a change of a notifying file as POLLPRI|POLLERR;
            # the file must be re-read (from offset 0) to re-arm it.
            poller.register(fd, select.POLLPRI | select.POLLERR)
            while True:
                os.lseek(fd, 0, os.SEEK_SET)
                try:
                    data = os.read(fd, 4096)
                except OSError as exc:
                    if exc.errno == errno.ENODEV:  # cgroup removed under us
                        return True
                    raise
                if done(parse_flat_keyed(data.decode("ascii", "replace"))):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # Cap each sleep so a missed notification costs little.
                poller.poll(max(1, int(min(remaining, EVENTS_POLL_CAP_S) * 1000)))
        finally:
            os.close(fd)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _read_pids(dirs: Sequence[str]) -> list[int]:
    seen: dict[int, None] = {}
    for d in dirs:
        for root, _subdirs, _files in _walk_cgroups(d):
            text = read_text(os.path.join(root, "cgroup.procs"))
            if text is not None:
                seen.update(dict.fromkeys(parse_pids(text)))
    return list(seen)


def _has_procs_below(d: str) -> bool:
    for root, _subdirs, _files in _walk_cgroups(d):
        text = read_text(os.path.join(root, "cgroup.procs"))
        if text and text.strip():
            return True
    return False


def _walk_cgroups(d: str) -> list[tuple[str, list[str], list[str]]]:
    # A group's own processes may have made cgroups below it; walk them too.
    return list(os.walk(d)) if os.path.isdir(d) else []


def _poll_until(done: Callable[[], bool], deadline: float) -> bool:
    delay = 0.001
    while True:
        if done():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def _remove_cgroup_dir(d: str, *, deadline: float) -> None:
    """rmdir a cgroup and the cgroups below it, deepest first."""
    if not os.path.isdir(d):
        return
    for root, _subdirs, _files in os.walk(d, topdown=False):
        while True:
            try:
                os.rmdir(root)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                # EBUSY right after the last process left: the kernel
                # finishes the exit asynchronously; retry briefly.
                if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                raise error_from_os(exc, action="remove", path=root) from None
