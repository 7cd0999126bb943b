"""Who runs as which user, and who may touch which file.

The node keeps root only for what needs it: writing cgroups and binding
ports below 1024. Group children drop to ``[node] user`` and build steps to
the worker's ``--user`` right after the placement shim has written their pid
into ``cgroup.procs`` (placement needs root; nothing after it does). The drop
is ``setpriv`` from util-linux, exec'd by the shim: real, effective and saved
ids all change, supplementary groups are the user's own, capabilities go with
the uid, and ``no_new_privs`` keeps setuid programs (sudo, su) from giving
root back.

Files: the data dir is 0700 and owned by the user that runs the groups (its
database and token files are that user's, 0600). A directory owned by some
other user is refused, never taken over: whoever owns it could swap its files
under us.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from web_node.errors import ConfigError

#: The account ``quickstart`` creates for the node's group children.
NODE_USER = "web-node"
#: The account build steps run as by default (``quickstart`` creates it).
BUILD_USER = "web-node-build"

SETPRIV_HELP = "setpriv (util-linux; apt-get install util-linux)"


@dataclass(frozen=True)
class RunAs:
    """A resolved account: who a child process becomes after placement."""

    name: str
    uid: int
    gid: int
    home: str

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(os.getgrouplist(self.name, self.gid))

    def describe(self) -> str:
        return f"{self.name} (uid {self.uid})"


def current_user() -> RunAs:
    uid = os.geteuid()
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return RunAs(str(uid), uid, os.getegid(), "/")
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def resolve_user(name: str, *, key: str) -> RunAs:
    """The account called ``name``; ConfigError naming ``key`` when there is none."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"{key} = {name!r}: no such user on this host; create it (useradd --system "
                          f"--no-create-home --shell /usr/sbin/nologin {name}) or name another", key=key,
                          value=name) from None
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def ensure_system_user(name: str) -> RunAs:
    """The system account ``name``, created (``useradd --system``, no home, no login shell) when missing.

    Only root can create it; the account gets a group of its own and no password.
    """
    if not user_exists(name):
        nologin = shutil.which("nologin") or "/usr/sbin/nologin"
        try:
            subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                            "--shell", nologin, "--comment", "web-node (unprivileged)", name],
                           check=True, capture_output=True, text=True)
        except FileNotFoundError:
            raise ConfigError(f"cannot create the system user {name}: useradd is not installed (package passwd)",
                              key="user", value=name) from None
        except subprocess.CalledProcessError as e:
            if not user_exists(name):  # another process may have created it at the same moment
                raise ConfigError(f"cannot create the system user {name}: useradd said {e.stderr.strip()!r}",
                                  key="user", value=name) from None
    return resolve_user(name, key="user")


def drop_argv(user: RunAs, argv: Sequence[str]) -> list[str]:
    """``argv`` run as ``user``: ``setpriv`` changes every id, then execs ``argv`` (same pid)."""
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    if not os.access(setpriv, os.X_OK):
        raise ConfigError(f"cannot run children as {user.name}: {SETPRIV_HELP} is not installed", key="user",
                          value=user.name)
    return [setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--no-new-privs", "--", *argv]


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def _may(user: RunAs, st: os.stat_result, owner_bit: int, group_bit: int, other_bit: int) -> bool:
    if user.uid == 0:
        return True
    if st.st_uid == user.uid:
        return bool(st.st_mode & owner_bit)
    if st.st_gid in user.groups:
        return bool(st.st_mode & group_bit)
    return bool(st.st_mode & other_bit)


def blocked_path(user: RunAs, path: str, *, read: bool = False) -> str | None:
    """Why ``user`` cannot reach ``path`` (None: it can): the first directory it may not search.

    Both the path as written and where its symbolic links lead are walked.
    With ``read``, the file itself must also be readable.
    """
    for candidate in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
        parts = candidate.split("/")[1:]
        current = "/"
        for part in parts[:-1] if parts else []:
            try:
                st = os.stat(current)
            except FileNotFoundError:
                break  # made later by makedirs, searchable by all (0755 under the usual umask)
            except OSError as e:
                return f"{current}: {e.strerror}"
            if not _may(user, st, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
                return (f"{current} is mode {stat.S_IMODE(st.st_mode):04o}, owned by {_owner_name(st.st_uid)}:"
                        f"{_group_name(st.st_gid)}: {user.name} may not enter it")
            current = os.path.join(current, part)
    if read:
        try:
            st = os.stat(path)
        except OSError as e:
            return f"{path}: {e.strerror}"
        if not _may(user, st, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH):
            return f"{path} is mode {stat.S_IMODE(st.st_mode):04o}, owned by {_owner_name(st.st_uid)}: {user.name} may not read it"
    return None


def private_dir(path: str, owner: RunAs, *, what: str, key: str, mode: int = 0o700) -> None:
    """Make ``path`` a directory of ``owner`` with ``mode``, or refuse one that belongs to someone else.

    Created when missing (parents as by ``makedirs``); an existing directory of
    ``owner`` is narrowed to ``mode``. Owned by anyone else: ConfigError that
    says why and what to do. Never changes the owner of an existing directory
    (a mistyped path such as ``/etc`` must not be handed to another user).
    """
    try:
        os.makedirs(path, mode=mode, exist_ok=False)
        created = True
    except FileExistsError:
        created = False
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be created: {e.strerror}; choose a directory this user may write",
                          key=key, value=path) from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {path} exists and is not a directory", key=key, value=path)
    if created:
        if os.geteuid() == 0 and owner.uid != 0:
            os.chown(path, owner.uid, owner.gid)
    elif st.st_uid != owner.uid:
        raise ConfigError(
            f"{what} {path} belongs to {_owner_name(st.st_uid)}, but {owner.describe()} must own it: another "
            f"user's directory could have its files swapped or read under us. If it is yours, hand it over with "
            f"'chown -R {owner.name}: {path}'; otherwise choose another directory", key=key, value=path)
    os.chmod(path, mode)


def own_file(path: str, owner: RunAs, *, mode: int = 0o600) -> None:
    """Give a file this process made to ``owner`` (root only), with ``mode``."""
    if os.geteuid() == 0 and owner.uid != 0:
        os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
    os.chmod(path, mode)


def foreign_files(directory: str, names: Sequence[str], owner: RunAs) -> list[str]:
    """Those of ``names`` in ``directory`` that exist and are not ``owner``'s, as 'path (owner)'."""
    found = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if st.st_uid != owner.uid:
            found.append(f"{path} ({_owner_name(st.st_uid)})")
    return found


# ---------------------------------------------------------------- the node's groups

#: What group children open in the data dir, so must be the group user's.
CHILD_FILES = ("node.db", "node.db-wal", "node.db-shm", "api-token", "worker-token", "run")


def unreachable_program(user: RunAs) -> str | None:
    """Why ``user`` could not start ``python -m web_node`` from this installation (None: it could)."""
    import sys

    import trio

    import web_node

    for path in (sys.executable, web_node.__file__ or "", trio.__file__ or ""):
        problem = blocked_path(user, path, read=True)
        if problem:
            return problem
    return None


def node_user(name: str | None) -> RunAs | None:
    """The account group children drop to for ``[node] user = name``; None when no drop is needed.

    Refused (ConfigError): an unknown user; a node that is not root and is
    not that user already; an installation the user could not run.
    """
    if not name:
        return None
    user = resolve_user(name, key="node.user")
    me = current_user()
    if user.uid == me.uid:
        return None
    if me.uid != 0:
        raise ConfigError(f"node.user = {name!r}: only root can start the groups as another user, and this node runs "
                          f"as {me.describe()}; start it as root or remove node.user", key="node.user", value=name)
    if user.uid == 0:
        return None
    problem = unreachable_program(user)
    if problem:
        raise ConfigError(f"node.user = {name!r}: the groups could not start as {name}: {problem}. Install web-node "
                          f"where {name} may read it (e.g. a virtualenv under /opt made with /usr/bin/python3) or "
                          "remove node.user", key="node.user", value=name)
    return user


def prepare_data_dir(data_dir: str, user: RunAs | None) -> None:
    """``data_dir`` as a 0700 directory of whoever runs the groups (``user``, else this process's user).

    Refused with the fix in the message: a data dir of another user, one the
    group user cannot reach, or files in it the group user could not open.
    """
    owner = user or current_user()
    if user is not None:
        problem = blocked_path(user, data_dir)
        if problem:
            raise ConfigError(f"node.data_dir {data_dir}: the groups run as {user.name}, who cannot reach it: "
                              f"{problem}. Choose a data dir such as /var/lib/web-node", key="node.data_dir",
                              value=data_dir)
    private_dir(data_dir, owner, what="node.data_dir", key="node.data_dir")
    if user is not None:
        foreign = foreign_files(data_dir, CHILD_FILES, user)
        if foreign:
            raise ConfigError(f"node.data_dir {data_dir}: the groups run as {user.name} but cannot open "
                              f"{', '.join(foreign)}; hand them over with 'chown -R {user.name}: {data_dir}'",
                              key="node.data_dir", value=data_dir)
