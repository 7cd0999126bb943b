"""What a build may see and touch: the user its steps run as, its directory, its environment.

Whoever may set a pipeline chooses the commands a build runs, so a build is
treated as hostile:

- **user**: steps run as an unprivileged account (``--user``; as root the
  default is ``web-node-build``), never as the worker's own root. The drop
  happens after the build's cgroup placement (:func:`web_node.privilege.drop_argv`
  is exec'd by the placement shim), so the build cannot move itself out.
- **directory**: ``WORK_DIR/build-N``, the build user's, mode 0700, emptied
  before the build and removed after it. ``WORK_DIR`` is the worker's own
  (never another user's), in a parent that no one else may write: 0711 when
  builds run as another user (they may enter their own build dir by its path,
  but list or write nothing else), 0700 otherwise.
- **environment**: an allow-list (PATH, HOME = the build dir, LANG, USER,
  LOGNAME and the build's own ``BUILD_*`` facts); nothing of the worker's
  environment reaches a step: no token, no database URL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Mapping

from web_node.errors import ConfigError
from web_node.privilege import BUILD_USER, RunAs, blocked_path, current_user, private_dir, resolve_user, user_exists

#: A step's PATH: the system's directories, not the worker's (which may hold a virtualenv).
BUILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The worker's variables a step may see, when set (the locale of its output).
PASSED_THROUGH = ("LANG",)


def build_user(requested: str | None) -> RunAs | None:
    """The account build steps run as; None: the worker's own (not root unless ``--user root`` says so).

    A worker running as root with no ``--user`` uses ``web-node-build`` when
    that account exists, and otherwise refuses to start: running strangers'
    commands as root must be a decision, not a default.
    """
    me = current_user()
    if requested is None:
        if me.uid != 0:
            return None
        if not user_exists(BUILD_USER):
            raise ConfigError(
                f"refusing to run build steps as root: whoever may set a pipeline would own this host. Create the "
                f"build user (useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {BUILD_USER}), "
                "or pass --user USER (an unprivileged account), or --user root to accept running builds as root",
                key="--user")
        requested = BUILD_USER
    user = resolve_user(requested, key="--user")
    if user.uid == me.uid:
        return None
    if me.uid != 0:
        raise ConfigError(f"--user {requested}: only root can run builds as another user, and this worker runs as "
                          f"{me.describe()}; start it as root or leave --user out", key="--user", value=requested)
    return user


def default_work_dir(name: str) -> str:
    """``/var/lib/web-node-worker/NAME`` as root, else under ``$XDG_STATE_HOME`` (never a guessable /tmp path)."""
    if os.geteuid() == 0:
        return os.path.join("/var/lib/web-node-worker", name)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "web-node-worker", name)


def prepare_work_dir(path: str, user: RunAs | None, *, keep_build_dirs: bool) -> str | None:
    """Make ``path`` the worker's own work dir; returns a warning for the log, or None.

    Refused (ConfigError): a work dir of another user, or one whose parent
    another user may write (they could swap the work dir for a link). Build
    dirs left by a worker that was killed are removed, unless kept on purpose.
    """
    me = current_user()
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o755, exist_ok=True)
    st = os.stat(parent)
    if st.st_uid not in (0, me.uid) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"--work-dir {path}: its parent {parent} may be written by others (mode {stat.S_IMODE(st.st_mode):04o}, "
            f"owner uid {st.st_uid}), who could swap the work dir for a link to anywhere; choose a work dir whose "
            f"parent only root or {me.name} may write, e.g. {default_work_dir('NAME')}", key="--work-dir", value=path)
    private_dir(path, me, what="--work-dir", key="--work-dir", mode=0o711 if user is not None else 0o700)
    if not keep_build_dirs:
        for entry in os.listdir(path):
            if entry.startswith("build-"):
                _remove(os.path.join(path, entry))
    if user is not None:
        problem = blocked_path(user, os.path.join(path, "build-0"))
        if problem:
            return (f"build steps (as {user.name}) can use their directory only by relative paths, since {problem}; "
                    f"tools that write to $HOME by its absolute path fail: choose a --work-dir such as "
                    f"{default_work_dir('NAME')}")
    return None


def make_build_dir(path: str, user: RunAs | None) -> None:
    """An empty 0700 directory of the build user at ``path`` (what was there is removed first)."""
    if os.path.lexists(path):
        _remove(path)
    os.mkdir(path, 0o700)
    if user is not None:
        os.chown(path, user.uid, user.gid)


def remove_build_dir(path: str) -> None:
    _remove(path)


def _remove(path: str) -> None:
    # rmtree never follows the links a build may have left (fd-based on Linux); root may delete what the build made.
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def build_env(home: str, user: RunAs | None, facts: Mapping[str, str],
              worker_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a build's steps (see the module docstring)."""
    source = os.environ if worker_env is None else worker_env
    me = user or current_user()
    env = {"PATH": BUILD_PATH, "HOME": home, "USER": me.name, "LOGNAME": me.name, "LANG": "C.UTF-8"}
    env.update({k: source[k] for k in PASSED_THROUGH if source.get(k)})
    env.update(facts)
    return env
