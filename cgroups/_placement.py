"""Starting a child inside its cgroup before it runs any code of its own.

Why not move the child after it started: memory is charged to the cgroup the
process was in when the page was first touched, and it stays charged there
after a move (cgroup-v2.rst, "Memory Ownership"). A Python child touches tens
of MiB importing its modules; moved afterwards, all of that would count
against the supervisor's cgroup, not the group's limit.

Why not ``preexec_fn``: it runs Python between fork and exec in a
multi-threaded parent (trio's thread pool spawns from a worker thread), where
any lock held by another thread at fork time can deadlock the child; and it
is the parent's interpreter, so its pages are the parent's anyway.

So the child execs a tiny shell first. The shell writes its own pid (``$$``)
to each ``cgroup.procs`` file, which moves it (the whole process) into the
group, then ``exec``\\ s the real program in place: same pid, already inside,
before a single page of the program is touched. Only the few pages of
``/bin/sh`` itself were charged outside.
"""

from __future__ import annotations

from collections.abc import Sequence

SHELL = "/bin/sh"

#: $0 of the shim, shown by ps and in the shell's own error messages.
SHIM_NAME = "cgroups-place"

#: Exit status when the move failed; the real program never started.
#: (125 is what env(1) and friends use for "the wrapper itself failed".)
PLACEMENT_FAILED = 125

# Arguments: procs files, then "--", then the real argv.
# A failed write prints the shell's own reason (e.g. "Permission denied")
# and then our line naming the file, and exits 125 without exec'ing.
SCRIPT = """\
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  if ! echo "$$" > "$1"; then
    echo "cgroups-place: could not move pid $$ into $1; the program was not started" >&2
    exit 125
  fi
  shift
done
if [ "$#" -lt 2 ]; then
  echo "cgroups-place: no program given after --" >&2
  exit 125
fi
shift
exec "$@"
"""


def placement_argv(procs_files: Sequence[str], argv: Sequence[str]) -> list[str]:
    """The argv that runs ``argv`` inside the cgroups owning ``procs_files``.

    ``["/bin/sh", "-c", SCRIPT, "cgroups-place", file1, ..., "--", *argv]``.
    """
    if not argv:
        raise ValueError("placement_argv needs the program to run (argv is empty)")
    for path in procs_files:
        if path == "--":
            raise ValueError("a cgroup.procs path cannot be '--'")
    return [SHELL, "-c", SCRIPT, SHIM_NAME, *procs_files, "--", *argv]
