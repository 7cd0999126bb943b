"""api benchmark: requests/s of GetJob and ListAllJobs, and the api group's memory during ListAllJobs.

    python bench/bench_api.py        # or: python -m bench api

1. Fills a SQLite store directly (``open_store``): pipelines of 100 jobs, 3
   builds per job (two finished, the latest pending), so ListAllJobs carries
   a latest build on every row.
2. Requests per second with 1,000 jobs: ``web-node api`` runs supervised (the
   api group in its own cgroup); a load client on loopback keeps N keep-alive
   connections busy for a fixed time. Debian's ``wrk`` is used when installed,
   else the trio client below (raw HTTP/1.1, cheaper than httpx, so the
   client is not the bottleneck of a 2-core machine).
3. Memory with 10,000 jobs, read from the api group's cgroup: idle usage,
   then the peak during a GetJob load, then the peak during ListAllJobs
   requests (3 one after another, then 8 over 4 connections). The same again
   on a node started with ``--disable-endpoint ListAllJobs``: the operator's
   switch, under which the heavy requests answer 404 and memory stays flat.

Every node is stopped, its cgroup root removed and the tmp dir deleted, also
when the run fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

import cgroups
from web_node.store import JobConfig, StepConfig, Store, open_store

PY = sys.executable
TOKEN = "bench-token-0123456789"
RPS_JOBS = int(os.environ.get("BENCH_RPS_JOBS", "1000"))
MEMORY_JOBS = int(os.environ.get("BENCH_MEMORY_JOBS", "10000"))
JOBS_PER_PIPELINE = 100
BUILDS_PER_JOB = 3
LOAD_S = float(os.environ.get("BENCH_LOAD_S", "5"))
WARMUP_S = 1.0
GETJOB_CONNECTIONS = 8
LISTALL_CONNECTIONS = 4
MEMORY_LOAD_S = 3.0
MIB = 1024 * 1024


# ---------------------------------------------------------------- the store


def pipeline_name(index: int) -> str:
    return f"p{index:03d}"


def job_name(index: int) -> str:
    return f"job-{index:03d}"


def fill(store: Store, first: int, count: int) -> None:
    """Pipelines ``first`` .. ``first + count - 1``, each JOBS_PER_PIPELINE jobs with BUILDS_PER_JOB builds."""
    jobs = [JobConfig(name=job_name(j), steps=(StepConfig(run=f"make test-{j}"),), timeout_s=600.0)
            for j in range(JOBS_PER_PIPELINE)]
    config = {"jobs": [{"name": j.name, "timeout": "10m", "steps": [{"run": s.run} for s in j.steps]} for j in jobs]}
    now = time.time()
    for p in range(first, first + count):
        name = pipeline_name(p)
        store.set_pipeline(name, config, jobs)
        for job in jobs:
            for b in range(BUILDS_PER_JOB):
                build = store.create_build(name, job.name, "scheduler", now)
                if b < BUILDS_PER_JOB - 1:  # the latest build stays pending
                    store.finish_build(build.id, "succeeded" if b % 2 == 0 else "failed", now)


# ---------------------------------------------------------------- the node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def remove_cgroup_root(root: str) -> None:
    """Last-resort cleanup if the node could not remove its own tree: the library
    empties every leaf (cgroup.kill or SIGKILL per pid) and removes deepest first."""
    with contextlib.suppress(cgroups.CgroupError):
        cgroups.CgroupTree(cgroups.detect_layout(), root).destroy()


@dataclass
class Node:
    """A running ``web-node api`` and the api group's cgroup."""

    proc: subprocess.Popen[bytes]
    port: int
    api_pid: int
    group: cgroups.Cgroup
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def api_node(tmp: Path, data_dir: Path, label: str, extra_args: list[str]) -> Iterator[Node]:
    """``python -m web_node api`` supervised, with its own cgroup root; always stopped and cleaned up."""
    port = free_port()
    root = f"/web-node-bench-api-{os.getpid()}-{label}"
    config = tmp / f"{label}.toml"
    config.write_text(textwrap.dedent(f"""
        [node]
        data_dir = "{data_dir}"
        database = "sqlite:///{data_dir / 'node.db'}"
        metrics_listen = ""
        cgroup_root = "{root}"
        shutdown_grace = "5s"
        [members.api]
        listen = "127.0.0.1:{port}"
        token = "{TOKEN}"
    """))
    log_path = tmp / f"{label}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([PY, "-m", "web_node", "api", "--config", str(config), *extra_args],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        info = wait_info(proc, f"http://127.0.0.1:{port}/api/v1/info", log_path)
        group = cgroups.CgroupTree(cgroups.detect_layout(), root).leaf("api")
        # The numbers below are only the api's if the api really lives in that cgroup.
        if int(info["pid"]) not in group.pids():
            raise RuntimeError(f"api pid {info['pid']} is not in {group.path()} ({group.pids()}); log: {log_path}")
        yield Node(proc, port, int(info["pid"]), group, log_path)
    finally:
        stop(proc)
        log.close()
        remove_cgroup_root(root)


def wait_info(proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"web-node api exited with {proc.returncode} before answering:\n{log_path.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return dict(r.json())
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{log_path.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the node (it stops its groups within shutdown_grace), then kill its session if it did not."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


# ---------------------------------------------------------------- memory


def reset_peak(group: cgroups.Cgroup) -> bool:
    """Start a new peak at the current usage; False where the kernel offers no reset.

    v1 (this hybrid host): writing 0 to memory.max_usage_in_bytes sets it to the
    current usage, so the next reading is the peak of what ran in between. v2
    memory.peak (kernel >= 6.12) resets only for the file descriptor that wrote
    it, which stats() does not use: there the peak is the one since the start.
    """
    memory = group.paths().get("memory")
    if memory is None:
        return False
    peak_file = Path(memory) / "memory.max_usage_in_bytes"
    if not peak_file.exists():
        return False
    peak_file.write_text("0")
    return True


def reset_hwm(pid: int) -> None:
    # "5" to clear_refs resets the process's VmHWM (peak RSS) to its current RSS.
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def proc_status_kib(pid: int, key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:.1f} MiB"


# ---------------------------------------------------------------- the load client


@dataclass
class Load:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    body_bytes: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    summary: tuple[float, float] | None = None  # (p50, p99) from wrk, which keeps the latencies to itself

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if self.summary is not None:
            return self.summary[0] if p <= 50 else self.summary[1]
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else 0.0


async def _one_connection(port: int, paths: list[str], start: int, stride: int, until: float, limit: int | None,
                          load: Load, expect: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        buf = bytearray()
        i = start
        done = 0
        while time.monotonic() < until and (limit is None or done < limit):
            path = paths[i % len(paths)]
            i += stride
            began = time.perf_counter()
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                  f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
            while (end := buf.find(b"\r\n\r\n")) < 0:
                chunk = await stream.receive_some(1 << 16)
                if not chunk:
                    raise ConnectionError(f"server closed the connection during {path}")
                buf += chunk
            head = bytes(buf[:end]).decode("latin-1")
            status = int(head.split(" ", 2)[1])
            match = re.search(r"^content-length:\s*(\d+)", head, re.I | re.M)
            if match is None:
                raise ValueError(f"{path}: no Content-Length in the response; this client reads only sized bodies")
            total = end + 4 + int(match.group(1))
            while len(buf) < total:
                chunk = await stream.receive_some(1 << 20)
                if not chunk:
                    raise ConnectionError(f"server closed the connection during the body of {path}")
                buf += chunk
            del buf[:total]
            load.latencies.append(time.perf_counter() - began)
            load.requests += 1
            load.body_bytes = int(match.group(1))
            load.statuses[status] = load.statuses.get(status, 0) + 1
            if status != expect:
                load.errors += 1
            done += 1


async def _run_load(port: int, paths: list[str], connections: int, duration_s: float | None,
                    per_connection: int | None, expect: int) -> Load:
    load = Load()
    until = time.monotonic() + (duration_s if duration_s is not None else 3600.0)
    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for c in range(connections):
            nursery.start_soon(_one_connection, port, paths, c, connections, until, per_connection, load, expect)
    load.seconds = time.perf_counter() - began
    return load


def run_load(port: int, paths: list[str], connections: int, *, duration_s: float | None = None,
             per_connection: int | None = None, expect: int = 200) -> Load:
    return trio.run(_run_load, port, paths, connections, duration_s, per_connection, expect)


def wrk_load(wrk: str, port: int, paths: list[str], connections: int, duration_s: float) -> Load:
    """Debian's wrk, when installed: the same paths in turn, requests/s and latency percentiles from its summary."""
    lua_paths = ", ".join(json.dumps(p) for p in paths)
    script = textwrap.dedent(f"""
        local paths = {{{lua_paths}}}
        local i = 0
        wrk.headers["Authorization"] = "Bearer {TOKEN}"
        request = function()
          i = i + 1
          return wrk.format("GET", paths[(i - 1) % #paths + 1])
        end
        done = function(summary, latency, requests)
          local e = summary.errors
          io.write(string.format("BENCH %d %f %d %f %f\\n", summary.requests, summary.duration / 1e6,
            e.status + e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1e6, latency:percentile(99) / 1e6))
        end
    """)
    fd, name = tempfile.mkstemp(suffix=".lua")
    os.close(fd)
    lua = Path(name)
    try:
        lua.write_text(script)
        out = subprocess.run([wrk, "-t", "2", "-c", str(connections), "-d", f"{duration_s:g}s", "-s", str(lua),
                              f"http://127.0.0.1:{port}"], check=True, capture_output=True, text=True).stdout
    finally:
        lua.unlink()
    requests, secs, errors, p50, p99 = out.split("BENCH ", 1)[1].split()[:5]
    return Load(requests=int(requests), errors=int(errors), seconds=float(secs), summary=(float(p50), float(p99)))


# ---------------------------------------------------------------- the phases


def job_paths(jobs: int) -> list[str]:
    """GetJob paths of every job, each once, in an order that hops between pipelines (37 is prime to 1,000
    and 10,000): the load touches every row rather than keeping a few hot."""
    order = [(k * 37) % jobs for k in range(jobs)] if jobs % 37 else list(range(jobs))
    return [f"/api/v1/pipelines/{pipeline_name(k // JOBS_PER_PIPELINE)}/jobs/{job_name(k % JOBS_PER_PIPELINE)}"
            for k in order]


@dataclass
class RpsRow:
    endpoint: str
    jobs: int
    connections: int
    load: Load
    client: str
    api_cpu_cores: float | None  # the api group's CPU time over the run's wall time, from its cgroup


def measure_rps(node: Node, jobs: int) -> list[RpsRow]:
    getjob_paths = job_paths(jobs)
    wrk = shutil.which("wrk")
    rows = []
    for endpoint, paths, connections in (("GetJob", getjob_paths, GETJOB_CONNECTIONS),
                                         ("ListAllJobs", ["/api/v1/jobs"], LISTALL_CONNECTIONS)):
        run_load(node.port, paths, connections, duration_s=WARMUP_S)
        cpu_before = node.group.stats().cpu_usage_seconds
        if wrk is not None:
            load, client = wrk_load(wrk, node.port, paths, connections, LOAD_S), "wrk"
        else:
            load, client = run_load(node.port, paths, connections, duration_s=LOAD_S), "in-script (trio, raw HTTP/1.1)"
        cpu_after = node.group.stats().cpu_usage_seconds
        cores = (cpu_after - cpu_before) / load.seconds if cpu_before is not None and cpu_after is not None else None
        rows.append(RpsRow(endpoint, jobs, connections, load, client, cores))
    return rows


@dataclass
class MemoryColumn:
    label: str
    idle_usage: int | None = None
    idle_rss_kib: int = 0
    getjob_peak: int | None = None
    getjob_rps: float = 0.0
    listall_peak: int | None = None
    listall_hwm_kib: int = 0
    after_usage: int | None = None
    listall_status: dict[int, int] = field(default_factory=dict)
    listall_bytes: int = 0
    listall_p50_s: float = 0.0
    listall_max_s: float = 0.0
    peak_reset: bool = False


def measure_memory(node: Node, label: str, jobs: int, listall_status: int) -> MemoryColumn:
    col = MemoryColumn(label)
    getjob_paths = job_paths(jobs)
    # A few requests so that idle means "has served", not "has never run a handler".
    run_load(node.port, getjob_paths, 1, per_connection=20)
    time.sleep(0.5)
    col.idle_usage = node.group.stats().memory_usage_bytes
    col.idle_rss_kib = proc_status_kib(node.api_pid, "VmRSS")

    col.peak_reset = reset_peak(node.group)
    getjob = run_load(node.port, getjob_paths, GETJOB_CONNECTIONS, duration_s=MEMORY_LOAD_S)
    col.getjob_peak = node.group.stats().memory_peak_bytes
    col.getjob_rps = getjob.rps

    reset_peak(node.group)
    reset_hwm(node.api_pid)
    sequential = run_load(node.port, ["/api/v1/jobs"], 1, per_connection=3, expect=listall_status)
    concurrent = run_load(node.port, ["/api/v1/jobs"], LISTALL_CONNECTIONS, per_connection=2, expect=listall_status)
    col.listall_peak = node.group.stats().memory_peak_bytes
    col.listall_hwm_kib = proc_status_kib(node.api_pid, "VmHWM")
    col.after_usage = node.group.stats().memory_usage_bytes
    for status, n in (*sequential.statuses.items(), *concurrent.statuses.items()):
        col.listall_status[status] = col.listall_status.get(status, 0) + n
    col.listall_bytes = sequential.body_bytes
    col.listall_p50_s = statistics.median(sequential.latencies)
    col.listall_max_s = max(sequential.latencies + concurrent.latencies)
    return col


# ---------------------------------------------------------------- the report


def seconds(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def size(n: int) -> str:
    return f"{n / MIB:.2f} MiB" if n >= MIB else f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def print_tables(rps: list[RpsRow], memory: list[MemoryColumn], db_bytes: int, layout: str) -> None:
    sys.stderr.flush()
    print(f"Host: {os.cpu_count()} cores, kernel {os.uname().release}, cgroups {layout}; SQLite store, "
          f"{JOBS_PER_PIPELINE} jobs per pipeline, {BUILDS_PER_JOB} builds per job; api supervised "
          f"(`web-node api`), load client on loopback in the same machine.\n")
    print(f"### Requests per second, {RPS_JOBS:,} jobs ({LOAD_S:g} s per endpoint after {WARMUP_S:g} s warm-up)\n")
    print("| endpoint | jobs | connections | requests | requests/s | p50 | p99 | response | errors | api CPU | client |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rps:
        body = size(r.load.body_bytes) if r.load.body_bytes else "-"
        cpu = f"{r.api_cpu_cores:.2f} cores" if r.api_cpu_cores is not None else "-"
        print(f"| {r.endpoint} | {r.jobs:,} | {r.connections} | {r.load.requests:,} | {r.load.rps:,.1f} "
              f"| {seconds(r.load.pct(50))} | {seconds(r.load.pct(99))} | {body} | {r.load.errors} | {cpu} | {r.client} |")

    on, off = memory
    source = "memory.max_usage_in_bytes (v1), reset before each phase" if on.peak_reset else "memory.peak, since start"
    print(f"\n### api group memory, {MEMORY_JOBS:,} jobs ({MEMORY_JOBS * BUILDS_PER_JOB:,} builds, "
          f"database {size(db_bytes)}), read from its cgroup\n")
    print(f"Peak: {source}. GetJob load: {GETJOB_CONNECTIONS} connections for {MEMORY_LOAD_S:g} s. "
          f"ListAllJobs: 3 requests one after another, then 2 each on {LISTALL_CONNECTIONS} connections. "
          "Process RSS is above the cgroup's usage because it counts shared-library pages that were first "
          "read (and so charged) elsewhere.\n")
    print(f"| api group | {on.label} | {off.label} |")
    print("|---|---|---|")
    rows = [
        ("cgroup usage, idle", mib(on.idle_usage), mib(off.idle_usage)),
        ("process RSS, idle", mib(on.idle_rss_kib * 1024), mib(off.idle_rss_kib * 1024)),
        ("cgroup peak during GetJob load", mib(on.getjob_peak), mib(off.getjob_peak)),
        ("GetJob requests/s meanwhile", f"{on.getjob_rps:,.0f}", f"{off.getjob_rps:,.0f}"),
        ("cgroup peak during ListAllJobs", mib(on.listall_peak), mib(off.listall_peak)),
        ("process peak RSS (VmHWM) during ListAllJobs", mib(on.listall_hwm_kib * 1024), mib(off.listall_hwm_kib * 1024)),
        ("cgroup usage after ListAllJobs", mib(on.after_usage), mib(off.after_usage)),
        ("ListAllJobs answers", statuses(on.listall_status), statuses(off.listall_status)),
        ("ListAllJobs response size", size(on.listall_bytes), size(off.listall_bytes)),
        ("ListAllJobs time, alone (p50)", seconds(on.listall_p50_s), seconds(off.listall_p50_s)),
        ("ListAllJobs time, slowest of all", seconds(on.listall_max_s), seconds(off.listall_max_s)),
    ]
    for name, a, b in rows:
        print(f"| {name} | {a} | {b} |")
    if on.idle_usage and on.listall_peak:
        print(f"\nListAllJobs over {MEMORY_JOBS:,} jobs raised the api group's memory by "
              f"{(on.listall_peak - on.idle_usage) / MIB:.0f} MiB over idle; with the endpoint disabled the rise was "
              f"{((off.listall_peak or 0) - (off.idle_usage or 0)) / MIB:.0f} MiB.", flush=True)


def statuses(counts: dict[int, int]) -> str:
    return ", ".join(f"{n} x {code}" for code, n in sorted(counts.items())) or "-"


# ---------------------------------------------------------------- main


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the nodes and remove their cgroups.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    try:
        data_dir = tmp / "data"
        data_dir.mkdir()
        database = f"sqlite:///{data_dir / 'node.db'}"
        rps_pipelines = max(1, RPS_JOBS // JOBS_PER_PIPELINE)
        memory_pipelines = max(rps_pipelines, MEMORY_JOBS // JOBS_PER_PIPELINE)

        began = time.monotonic()
        store = open_store(database, str(data_dir))
        try:
            fill(store, 0, rps_pipelines)
        finally:
            store.close()
        print(f"(filled {RPS_JOBS:,} jobs in {time.monotonic() - began:.1f} s)", file=sys.stderr)
        with api_node(tmp, data_dir, "rps", []) as node:
            rps = measure_rps(node, RPS_JOBS)

        began = time.monotonic()
        store = open_store(database, str(data_dir))
        try:
            fill(store, rps_pipelines, memory_pipelines - rps_pipelines)
        finally:
            store.close()
        print(f"(filled up to {MEMORY_JOBS:,} jobs in {time.monotonic() - began:.1f} s)", file=sys.stderr)
        db_bytes = sum(p.stat().st_size for p in data_dir.glob("node.db*"))

        memory = []
        for label, args, status in (
            ("ListAllJobs enabled", [], 200),
            ("ListAllJobs disabled (`--disable-endpoint ListAllJobs`)", ["--disable-endpoint", "ListAllJobs"], 404),
        ):
            with api_node(tmp, data_dir, "mem-off" if args else "mem-on", args) as node:
                memory.append(measure_memory(node, label, MEMORY_JOBS, status))
        print_tables(rps, memory, db_bytes, cgroups.detect_layout().kind)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
