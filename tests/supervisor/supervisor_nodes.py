"""Helpers of the supervisor tests (conftest.py and the test modules import
them): real nodes (``python -m web_node ...``) on free ports, with a tmp
data_dir and a cgroup root of their own, read through the control socket and
the kernel's own files (through the ``cgroups`` library, so that the same test
runs on a v2, hybrid or v1 host).

Two ways to get a node, both always stopped (and their cgroup root removed)
even when a test fails:

- ``module_node(...)``: a context manager for module-scoped fixtures, so that
  tests that do not conflict share one node (startup costs seconds);
- the ``new_node`` fixture: one node per test, built on the shared
  ``start_node`` / ``cgroup_root`` / ``data_dir`` fixtures of tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node_helpers import TIME_SCALE, NodeProcess, cgroup_dirs_left, free_port, group_cgroup, remove_cgroup_root, unique_cgroup_root

REPO_ROOT = Path(__file__).resolve().parents[2]
# tests/cgroups would otherwise shadow the real ``cgroups`` package (a namespace
# package found first on sys.path); the node code imports it.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

HTTP_MEMBERS = ("api", "ui", "gateway")
BACKEND = ("scheduler", "build-tracker", "gc", "syslog-drainer")
GRACE_S = 3.0


# ---------------------------------------------------------------- config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _table(name: str, values: Mapping[str, Any]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())


def node_toml(*, data_dir: Path, cgroup_root: str, ports: Mapping[str, int],
              members: Mapping[str, Mapping[str, Any]] | None = None,
              groups: Mapping[str, Mapping[str, Any]] | None = None,
              grace: str = f"{GRACE_S:g}s") -> str:
    """A whole config file: our data_dir and cgroup root, free ports, no metrics page."""
    node = {"data_dir": str(data_dir), "cgroup_root": cgroup_root, "metrics_listen": "", "shutdown_grace": grace}
    sections = [_table("node", node)]
    tables: dict[str, dict[str, Any]] = {name: dict(values) for name, values in (members or {}).items()}
    for name, port in ports.items():
        tables.setdefault(name, {}).setdefault("listen", f"127.0.0.1:{port}")
    sections += [_table(f"members.{name}", values) for name, values in tables.items()]
    sections += [_table(f"groups.{name}", values) for name, values in (groups or {}).items()]
    return "\n".join(sections)


def disabled(*names: str) -> dict[str, dict[str, Any]]:
    return {name: {"enabled": False} for name in names}


# ---------------------------------------------------------------- kernel


__all__ = ["cgroup_dirs_left", "group_cgroup"]  # re-exported for the test modules


def group_exists(root: str, group: str) -> bool:
    """Whether the group's cgroup directory exists (in any hierarchy)."""
    return group_cgroup(root, group).exists()


def cgroup_procs(root: str, group: str) -> list[int]:
    """The processes in the group's cgroup (every hierarchy), [] when it does not exist."""
    return sorted(group_cgroup(root, group).pids())


def memory_limit(root: str, group: str) -> int | None:
    """The kernel's memory limit of the group (v2 memory.max, v1 memory.limit_in_bytes); None when unlimited."""
    return group_cgroup(root, group).memory_limit_bytes()


def oom_kills(root: str, group: str) -> int | None:
    """The kernel's OOM kill count of the group (v2 memory.events, v1 memory.oom_control)."""
    return group_cgroup(root, group).oom_kill_count()


def placed_in_group(pid: int, root: str, group: str) -> dict[str, tuple[str, str]]:
    """Where ``pid`` is against where the group's cgroup is, for each hierarchy where they differ:
    {hierarchy: (the process's cgroup, the group's directory)}; {} when it is in the group everywhere."""
    from cgroups._detect import parse_proc_cgroup

    where = parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    wrong = {}
    for key, directory in group_cgroup(root, group).paths().items():
        inside = where.get(key)
        if inside is None or not inside.endswith(f"/{group}") or not directory.endswith(inside):
            wrong[key] = (str(inside), directory)
    return wrong


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped by whoever adopted it) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


# ---------------------------------------------------------------- the node


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``web-node ARGS`` as an operator would type it."""
    return subprocess.run([sys.executable, "-m", "web_node", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@dataclass
class Node:
    """A running ``web-node`` and what a test needs to look at it."""

    proc: Any  # NodeProcess
    config_path: Path
    data_dir: Path
    cgroup_root: str
    ports: dict[str, int]

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def log(self) -> str:
        return str(self.proc.log())

    def url(self, member: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[member]}{path}"

    def write_config(self, text: str) -> None:
        # Written to a new file and renamed: the node never reads half a file.
        tmp = self.config_path.with_suffix(".new")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    def status(self) -> dict[str, Any]:
        from web_node.supervisor import request_status

        return request_status(str(self.data_dir / "node.sock"))

    def groups(self) -> dict[str, dict[str, Any]]:
        return {g["name"]: g for g in self.status()["groups"]}

    def _groups_or_none(self) -> dict[str, dict[str, Any]] | None:
        from web_node.errors import WebNodeError

        if self.proc.proc.poll() is not None:
            raise AssertionError(f"web-node exited with {self.proc.proc.returncode}:\n{self.log()}")
        try:
            return self.groups()
        except (WebNodeError, OSError, ValueError):
            return None  # not listening yet

    def wait_groups(self, check: Callable[[dict[str, dict[str, Any]]], bool], what: str,
                    timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        timeout *= TIME_SCALE
        deadline = time.monotonic() + timeout
        last: dict[str, dict[str, Any]] | None = None
        while time.monotonic() < deadline:
            last = self._groups_or_none()
            if last is not None and check(last):
                return last
            time.sleep(0.05)
        raise AssertionError(f"{what}: not within {timeout} s; last status {last}\n--- node log ---\n{self.log()}")

    def wait_up(self, names: list[str] | None = None, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        def all_up(groups: dict[str, dict[str, Any]]) -> bool:
            wanted = names if names is not None else list(groups)
            return bool(wanted) and all(n in groups and groups[n]["state"] == "up" and groups[n]["pid"] for n in wanted)

        return self.wait_groups(all_up, f"groups {names or 'all'} up", timeout)

    def wait_state(self, name: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
        groups = self.wait_groups(lambda g: name in g and g[name]["state"] == state, f"group {name} {state}", timeout)
        return groups[name]

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 30.0) -> dict[str, Any]:
        groups = self.wait_groups(
            lambda g: name in g and g[name]["state"] == "up" and g[name]["pid"] not in (None, old_pid),
            f"group {name} up again with a pid other than {old_pid}", timeout)
        return groups[name]

    def pids(self) -> dict[str, int]:
        return {name: g["pid"] for name, g in self.groups().items() if g["pid"]}

    def reload(self, text: str, timeout: float = 30.0) -> str:
        """Rewrite the config, SIGHUP, wait until the node says the reload was done or refused; the new log lines."""
        marks = ("reload done", "reload refused")
        before = self.log()
        count = sum(before.count(m) for m in marks)
        self.write_config(text)
        os.kill(self.pid, signal.SIGHUP)
        wait_until(lambda: sum(self.log().count(m) for m in marks) > count, timeout * TIME_SCALE,
                   "the node to finish a reload")
        return self.log()[len(before):]


def new_ports() -> dict[str, int]:
    return {m: free_port() for m in HTTP_MEMBERS}


def start(workdir: Path, command: str, *, data_dir: Path, cgroup_root: str, ports: dict[str, int],
          launch: Callable[[list[str]], Any], **config: Any) -> Node:
    cfg = workdir / f"node-{len(list(workdir.glob('node-*.toml')))}.toml"
    cfg.write_text(node_toml(data_dir=data_dir, cgroup_root=cgroup_root, ports=ports, **config))
    return Node(launch([command, "--config", str(cfg)]), cfg, data_dir, cgroup_root, ports)


@contextlib.contextmanager
def module_node(workdir: Path, command: str = "web", **config: Any) -> Iterator[Node]:
    """A node for a whole test module; stopped, and its cgroup root removed, whatever happens."""
    root = unique_cgroup_root()
    data_dir = workdir / "data"
    data_dir.mkdir()
    started: list[Any] = []

    def launch(args: list[str]) -> Any:
        started.append(NodeProcess(args, cwd=workdir))
        return started[-1]

    try:
        yield start(workdir, command, data_dir=data_dir, cgroup_root=root, ports=new_ports(), launch=launch, **config)
    finally:
        for proc in started:
            proc.stop()
        remove_cgroup_root(root)
