"""The errors of the cgroups package.

Every error names the cgroup file or directory it is about (``.path``) and
says what was wrong and what to do::

    Exception
     └── CgroupError                  .path: the file or directory concerned
          ├── CgroupPermissionError   no permission, read-only mount, no delegation
          ├── CgroupControllerMissing .controller, .setting: a limit or action whose
          │                           controller is not available to this cgroup
          └── CgroupBusyError         the kernel said EBUSY: a cgroup still holds
                                      processes, or the "no internal processes"
                                      rule of cgroup v2 forbids the change

Readers never raise for a missing file (they return ``None``); only actions
(create, write a limit, remove) raise these.
"""

from __future__ import annotations

import errno


class CgroupError(Exception):
    """Something about cgroups failed; ``path`` is the file or directory concerned."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class CgroupPermissionError(CgroupError):
    """We may not write there: not root, a read-only mount, or no delegated cgroup."""


class CgroupControllerMissing(CgroupError):
    """A setting needs a controller (``controller``) that this cgroup does not have.

    ``setting`` is the name of the :class:`~cgroups.Limits` field or action
    (``"memory_max_bytes"``, ``"freeze"``) that could not be applied.
    """

    def __init__(self, message: str, *, controller: str, setting: str, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.controller = controller
        self.setting = setting


class CgroupBusyError(CgroupError):
    """The kernel answered EBUSY, or processes are still where none may be.

    On cgroup v2 the usual cause is the "no internal processes" rule: a
    non-root cgroup that holds processes itself may not enable controllers
    for its children in ``cgroup.subtree_control``; its processes must first
    move into a leaf below it.
    """


PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def error_from_os(exc: OSError, *, action: str, path: str, fix: str = "") -> CgroupError:
    """Turn an ``OSError`` from a cgroup file into the matching :class:`CgroupError`.

    ``action`` says what we tried ("write 'max' to", "create"); ``fix`` is
    appended to the message when the cause is known to have one.
    """
    reason = exc.strerror or str(exc)
    message = f"cannot {action} {path}: {reason}"
    if fix:
        message = f"{message}; {fix}"
    if exc.errno in PERMISSION_ERRNOS:
        if not fix:
            message += (
                "; run as root, or give the node a delegated cgroup it may write "
                "(systemd: Delegate=yes; containers: a writable cgroup namespace)"
            )
        return CgroupPermissionError(message, path=path)
    if exc.errno == errno.EBUSY:
        return CgroupBusyError(message, path=path)
    return CgroupError(message, path=path)
