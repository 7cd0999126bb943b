"""Bounded inputs benchmark: what unauthenticated clients, a loud build and stalled readers cost each group.

    python bench/bench_bounded_inputs.py        # or: python -m bench bounded

Runs the same two attacks on ``web-node web`` (every member its own group and
cgroup) for this checkout and for the base commit (``BENCH_BASE_COMMIT``,
checked out with ``git worktree add`` into ``BENCH_BASE_DIR``), one after the
other, and prints every group's memory read from its cgroup (``BENCH_SKIP_BASE=1``:
this checkout only):

1. Against the gateway: 20 unauthenticated POSTs each announcing and sending
   15 MiB, and 200 connections that send nothing, at once. Target: the
   gateway group's memory rises by less than 5 MiB.
2. A build whose step runs ``yes`` for 10 s (a real ``web-node worker``
   sends its output), watched by 20 BuildEvents clients that never read.
   Target: every group's memory flat. The rows show each group before the
   build, its peak during, and after the build ended (the 20 clients still
   connected, still not reading).

``peak`` is the cgroup's high-water mark since it was reset just before the
attack (v1 memory.max_usage_in_bytes; on v2 the peak since the group started).
Every node and worker is stopped, its cgroup root removed and the tmp dir
deleted, also when the run fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

import cgroups

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent
BASE_COMMIT = os.environ.get("BENCH_BASE_COMMIT", "41baa0b")
BASE_DIR = Path(os.environ.get("BENCH_BASE_DIR", "/tmp/wn-base"))
API_TOKEN = "bench-api-token-0123456789"
WORKER_TOKEN = "bench-worker-token-0123456789"
GROUPS = ("api", "ui", "scheduler", "build-tracker", "gc", "syslog-drainer", "gateway")
POSTS = 20
POST_BYTES = 15 * 1024 * 1024
IDLE_CONNECTIONS = 200
STREAMS = 20
YES_S = 10
MEMORY_MAX = "2G"  # per group: today's code must not take the machine down with it
MIB = 1024 * 1024
#: The gateway's SendBuildEvents body limit in this checkout's runs. Today's worker sends whatever it has
#: buffered (up to 16 MiB of output, JSON-escaped) in one batch, more than the 8 MiB default takes.
EVENTS_LIMIT = os.environ.get("BENCH_EVENTS_LIMIT", "8M")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- the two checkouts


def base_checkout() -> Path:
    """The base commit's tree, made once with ``git worktree add`` (the repository's index is untouched)."""
    if not (BASE_DIR / "web_node").is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(BASE_DIR), BASE_COMMIT],
                       check=True, capture_output=True)
    return BASE_DIR


def code_env(code: Path) -> dict[str, str]:
    # PYTHONPATH first: the venv's editable install of this checkout comes after it on sys.path.
    return {**os.environ, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}


def check_imports_from(code: Path) -> None:
    found = subprocess.run([PY, "-c", "import web_node; print(web_node.__file__)"], env=code_env(code), cwd="/",
                           check=True, capture_output=True, text=True).stdout.strip()
    if not found.startswith(str(code)):
        raise RuntimeError(f"PYTHONPATH={code} imports web_node from {found}")


# ---------------------------------------------------------------- the node


@dataclass
class Node:
    proc: subprocess.Popen[bytes]
    code: Path
    tmp: Path
    root: str
    api: int
    gateway: int
    data_dir: Path
    log_path: Path

    def group(self, name: str) -> cgroups.Cgroup:
        return cgroups.CgroupTree(cgroups.detect_layout(), self.root).leaf(name)


@contextlib.contextmanager
def web_node(code: Path, tmp: Path, label: str) -> Iterator[Node]:
    api, gateway, ui = free_port(), free_port(), free_port()
    root = f"/web-node-bench-bounded-{os.getpid()}-{label}"
    data_dir = tmp / f"data-{label}"
    limits = "".join(f'[groups.{g}]\nmemory_max = "{MEMORY_MAX}"\n' for g in GROUPS)
    # The listener keys do not exist in the base commit's config.
    gateway_keys = f'body_limits = {{ SendBuildEvents = "{EVENTS_LIMIT}" }}' if code == REPO else ""
    config = tmp / f"{label}.toml"
    config.write_text(textwrap.dedent(f"""
        [node]
        data_dir = "{data_dir}"
        metrics_listen = ""
        cgroup_root = "{root}"
        shutdown_grace = "3s"
        [members.api]
        listen = "127.0.0.1:{api}"
        token = "{API_TOKEN}"
        [members.gateway]
        listen = "127.0.0.1:{gateway}"
        worker_token = "{WORKER_TOKEN}"
        {gateway_keys}
        [members.ui]
        listen = "127.0.0.1:{ui}"
        [members.scheduler]
        interval = "1h"
    """) + limits)
    log_path = tmp / f"{label}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([PY, "-m", "web_node", "web", "--config", str(config)], cwd=tmp, env=code_env(code),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    node = Node(proc, code, tmp, root, api, gateway, data_dir, log_path)
    try:
        wait_ok(node, f"http://127.0.0.1:{api}/api/v1/info")
        wait_ok(node, f"http://127.0.0.1:{gateway}/gateway/v1/info")
        time.sleep(2.0)  # the groups settle after their start
        yield node
    finally:
        stop_session(proc, 20)
        with contextlib.suppress(cgroups.CgroupError):
            cgroups.CgroupTree(cgroups.detect_layout(), root).destroy()


def wait_ok(node: Node, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise RuntimeError(f"web-node exited with {node.proc.returncode}:\n{node.log_path.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{node.log_path.read_text()}")


def stop_session(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


# ---------------------------------------------------------------- memory


@dataclass
class Reading:
    before: int
    peak: int
    after: int
    oom_kills: int
    left: int = 0  # usage once the clients have gone (attack 2)

    @property
    def rise(self) -> int:
        return self.after - self.before


def usage(group: cgroups.Cgroup) -> int:
    return group.stats().memory_usage_bytes or 0


def reset_peak(group: cgroups.Cgroup) -> None:
    """v1: writing 0 to memory.max_usage_in_bytes restarts the peak at the current usage (v2 has no reset)."""
    memory = group.paths().get("memory")
    if memory and os.path.exists(os.path.join(memory, "memory.max_usage_in_bytes")):
        Path(memory, "memory.max_usage_in_bytes").write_text("0")


@contextlib.contextmanager
def measured(node: Node, names: tuple[str, ...], out: dict[str, Reading], settle_s: float = 3.0) -> Iterator[None]:
    """Every group's usage before, its peak during the block, its usage ``settle_s`` after."""
    groups = {n: node.group(n) for n in names}
    before = {n: usage(g) for n, g in groups.items()}
    kills = {n: groups[n].stats().memory_events_oom_kill or 0 for n in names}
    for g in groups.values():
        reset_peak(g)
    yield
    time.sleep(settle_s)
    for n, g in groups.items():
        stats = g.stats()
        out[n] = Reading(before[n], max(stats.memory_peak_bytes or 0, before[n]), stats.memory_usage_bytes or 0,
                         (stats.memory_events_oom_kill or 0) - kills[n])


# ---------------------------------------------------------------- attack 1: big posts, idle connections


def big_post(port: int) -> str:
    """An unauthenticated RegisterWorker announcing and sending 15 MiB; what came back."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(f"POST /gateway/v1/workers HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {POST_BYTES}\r\n\r\n".encode())
            chunk = b" " * 65536
            with contextlib.suppress(OSError):
                for _ in range(POST_BYTES // len(chunk)):
                    s.sendall(chunk)
            answer = s.recv(64)
            return answer.split(b"\r\n", 1)[0].decode(errors="replace")[9:12] or "closed"
    except OSError as e:
        return type(e).__name__


def idle_connections(port: int, count: int) -> list[socket.socket]:
    opened = []
    for _ in range(count):
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        opened.append(s)
    return opened


def attack_gateway(node: Node) -> tuple[Reading, dict[str, int], int]:
    out: dict[str, Reading] = {}
    answers: dict[str, int] = {}
    with measured(node, ("gateway",), out):
        with ThreadPoolExecutor(POSTS) as pool:
            futures = [pool.submit(big_post, node.gateway) for _ in range(POSTS)]
            idle = idle_connections(node.gateway, IDLE_CONNECTIONS)
            for f in futures:
                answers[f.result()] = answers.get(f.result(), 0) + 1
        time.sleep(1.0)
        for s in idle:
            s.close()
    return out["gateway"], answers, len(idle)


# ---------------------------------------------------------------- attack 2: yes, and readers that never read


def stalled_stream(port: int, build_id: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that takes nothing: small window
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /api/v1/builds/{build_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              f"Authorization: Bearer {API_TOKEN}\r\nAccept: text/event-stream\r\n\r\n".encode())
    return s


def attack_with_yes(node: Node) -> tuple[dict[str, Reading], str, int]:
    api = httpx.Client(base_url=f"http://127.0.0.1:{node.api}", headers={"Authorization": f"Bearer {API_TOKEN}"},
                       timeout=30)
    pipeline = {"jobs": [{"name": "yes", "timeout": "10m", "steps": [{"run": f"timeout {YES_S} yes; true"}]}]}
    api.put("/api/v1/pipelines/loud", json=pipeline).raise_for_status()
    name = f"bench-{os.getpid()}-{node.code.name}"
    worker_log = open(node.tmp / f"worker-{node.code.name}.log", "wb")
    worker = subprocess.Popen([PY, "-m", "web_node", "worker", "--gateway", f"http://127.0.0.1:{node.gateway}",
                               "--token", WORKER_TOKEN, "--name", name, "--no-cgroups"],
                              cwd=node.tmp, env=code_env(node.code), stdout=worker_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    out: dict[str, Reading] = {}
    streams: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        while not any(w["name"] == name for w in api.get("/api/v1/workers").json()["workers"]):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"the worker did not register:\n{(node.tmp / f'worker-{node.code.name}.log').read_text()}")
            time.sleep(0.2)
        with measured(node, GROUPS, out):
            build = api.post("/api/v1/pipelines/loud/jobs/yes/builds").json()
            streams = [stalled_stream(node.api, build["id"]) for _ in range(STREAMS)]
            deadline = time.monotonic() + float(os.environ.get("BENCH_BUILD_WAIT_S", "180"))
            status = "pending"
            while status not in ("succeeded", "failed", "errored", "aborted"):
                if time.monotonic() > deadline:
                    status = f"still {status} after the wait"
                    break
                time.sleep(0.5)
                with contextlib.suppress(httpx.HTTPError):
                    status = api.get(f"/api/v1/builds/{build['id']}").json()["status"]
        db_bytes = sum(p.stat().st_size for p in node.data_dir.glob("node.db*"))
        for s in streams:
            s.close()
        time.sleep(3.0)
        for name, reading in out.items():
            reading.left = usage(node.group(name))
        return out, status, db_bytes
    finally:
        for s in streams:
            s.close()
        stop_session(worker, 20)
        worker_log.close()
        api.close()


# ---------------------------------------------------------------- the tables


def mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def signed(n: int) -> str:
    return f"{'+' if n >= 0 else '-'}{abs(n) / MIB:.1f} MiB"


@dataclass
class Run:
    label: str
    gateway: Reading
    answers: dict[str, int]
    idle: int
    yes: dict[str, Reading]
    yes_status: str
    db_bytes: int


def print_tables(runs: list[Run]) -> None:
    print(f"Attack 1: {POSTS} unauthenticated {POST_BYTES // MIB} MiB POSTs and {IDLE_CONNECTIONS} idle connections "
          "against the gateway (target: gateway group rises < 5 MiB)\n")
    print("| code | gateway before | peak during | after | after - before | POST answers | idle connections opened |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        answers = ", ".join(f"{k} x{v}" for k, v in sorted(r.answers.items()))
        print(f"| {r.label} | {mib(r.gateway.before)} | {mib(r.gateway.peak)} | {mib(r.gateway.after)} | "
              f"{signed(r.gateway.rise)} | {answers} | {r.idle} |")
    print(f"\nAttack 2: a build running `yes` for {YES_S} s, {STREAMS} BuildEvents clients that never read "
          "(target: every group flat)\n")
    print("| code | group | before | peak during | after (clients still connected) | after - before | "
          "once the clients left | OOM kills |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        for name in GROUPS:
            g = r.yes[name]
            print(f"| {r.label} | {name} | {mib(g.before)} | {mib(g.peak)} | {mib(g.after)} | {signed(g.rise)} | "
                  f"{mib(g.left)} | {g.oom_kills} |")
    print()
    for r in runs:
        print(f"- {r.label}: build {r.yes_status}; database after the build {mib(r.db_bytes)}")
    print(f"- this code ran with [members.gateway] body_limits = {{ SendBuildEvents = \"{EVENTS_LIMIT}\" }} "
          "(BENCH_EVENTS_LIMIT; the default is 8M)")


def main() -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    tmp = Path(tempfile.mkdtemp(prefix="bench-bounded-"))
    runs = []
    try:
        codes = [("this code", REPO)]
        if os.environ.get("BENCH_SKIP_BASE") != "1":
            codes.append((f"base {BASE_COMMIT} (today)", base_checkout()))
        for label, code in codes:
            check_imports_from(code)
            print(f"({label}: {code})", file=sys.stderr, flush=True)
            with web_node(code, tmp, "base" if code != REPO else "this") as node:
                gateway, answers, idle = attack_gateway(node)
            with web_node(code, tmp, ("base" if code != REPO else "this") + "-yes") as node:
                yes, status, db_bytes = attack_with_yes(node)
            runs.append(Run(label, gateway, answers, idle, yes, status, db_bytes))
        print_tables(runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
