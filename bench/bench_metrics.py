"""Metrics benchmark: the node's scrape time, and what per-task CPU accounting costs.

1. **Scrape**: one ``NodePage.render()`` (what GET /metrics does) for 7 and
   for 50 groups: each group a real child process with its own metrics page
   on a unix socket, placed in a real cgroup below a unique root (fixture
   cgroups when this machine's cannot be written). The 7 are the built-in
   members; the other 43 alternate small http and periodic members.
   Scrapes run back to back with idle children; a third row ("busy") has
   every child's state change between scrapes 50 ms apart.
   Target: p50 under 10 ms for 50 groups.
2. **Task accounting**: ``web-node api --in-process`` serving GetJob to a
   keep-alive load client on loopback, a fixed number of requests, with the
   instrument on and off (``WEB_NODE_TASK_ACCOUNTING=0``), rounds
   alternating. Target: under 5 % fewer requests per second.

    python bench/bench_metrics.py [--part all|scrape|accounting] [--scrapes N] [--requests N] [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import trio  # noqa: E402

import cgroups  # noqa: E402

SCRAPE_TARGET_MS = 10.0
#: A busy child's traffic: one request (or periodic run) this often; busy scrapes are this far apart.
BUSY_INTERVAL_S = 0.1
BUSY_SCRAPE_GAP_S = 0.05
ACCOUNTING_TARGET_PCT = 5.0
FIXTURES = REPO_ROOT / "tests" / "cgroups" / "fixtures"
TOKEN = "bench-token-0123456789"
PIPELINE = {"jobs": [{"name": "unit", "steps": [{"run": "true"}]}]}


# ---------------------------------------------------------------- children (one per group)


def child_main(sock_path: str, spec: str, busy: bool = False) -> None:
    """A group child: its members' metrics, with some traffic, served on ``sock_path`` until stdin closes.

    ``busy``: traffic goes on while it is scraped (a request or a periodic
    run every 100 ms), so its CPU counters and some of its lines change
    between scrapes."""
    from web_node.members import Endpoint, Member, default_registry
    from web_node.metrics import ProcessMetrics

    kind, name = spec.split(":", 1)
    metrics = ProcessMetrics()
    registry = default_registry()
    if name in registry:
        member = registry.get(name)
    elif kind == "http":
        async def no_app(ctx: object) -> object:
            raise AssertionError

        endpoints = tuple(Endpoint(f"Op{i}", "GET", f"/{name}/op{i}/<item>") for i in range(6))
        member = Member(name=name, role="api", kind="http", description="bench", listen="127.0.0.1:0",
                        endpoints=endpoints, make_app=no_app)
    else:
        member = Member(name=name, role="backend", kind="periodic", description="bench", interval_s=10,
                        tick=lambda ctx: trio.sleep(0))
    metrics.set_member_enabled(member.name)

    async def run() -> None:
        metrics.install_instrument()
        metrics.enter_member(member.name)
        if member.kind == "http":
            await _traffic(metrics, member)
        else:
            for i in range(20):
                metrics.record_run(member.name, "error" if i % 7 == 0 else "ok", time.time(), 0.01 * i)
        async with trio.open_nursery() as nursery:
            await nursery.start(metrics.serve_socket, sock_path)
            if busy:
                nursery.start_soon(_busy, metrics, member)
            await trio.lowlevel.wait_readable(sys.stdin.fileno())  # EOF: the benchmark is gone
            nursery.cancel_scope.cancel()

    trio.run(run)


async def _busy(metrics: object, member: object) -> None:
    from web_node.members import Member
    from web_node.metrics import ProcessMetrics

    assert isinstance(metrics, ProcessMetrics) and isinstance(member, Member)
    if member.kind != "http":
        while True:
            await trio.sleep(BUSY_INTERVAL_S)
            metrics.record_run(member.name, "ok", time.time(), 0.01)
    i = 0
    while True:
        await trio.sleep(BUSY_INTERVAL_S)
        await _traffic(metrics, member, only=i % len(member.endpoints), per_endpoint=1)
        i += 1


async def _traffic(metrics: object, member: object, only: int | None = None, per_endpoint: int = 6) -> None:
    """Requests through the real ASGI wrapper, a few per endpoint and status (or one endpoint's: ``only``)."""
    from web_node.members import Member
    from web_node.metrics import ProcessMetrics

    assert isinstance(metrics, ProcessMetrics) and isinstance(member, Member)

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        status = 404 if str(scope["path"]).endswith("/0") else 200
        await send({"type": "http.response.start", "status": status, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"{}"})  # type: ignore[operator]

    wrapped = metrics.wrap_app(app, member)  # a member wrapped again keeps its counters

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: object) -> None:
        await trio.lowlevel.checkpoint()

    for n, endpoint in enumerate(member.endpoints):
        if only is not None and n != only:
            continue
        path = endpoint.path.replace("<int:build_id>", "7")
        for i in range(per_endpoint):
            concrete = path
            while "<" in concrete:
                start = concrete.index("<")
                concrete = concrete[:start] + str(i) + concrete[concrete.index(">", start) + 1:]
            await wrapped({"type": "http", "method": endpoint.method, "path": concrete}, receive, send)


@dataclass
class Child:
    name: str
    members: tuple[str, ...]
    proc: subprocess.Popen[bytes]
    socket: str
    cgroup: cgroups.Cgroup


def group_specs(n: int) -> list[str]:
    from web_node.members import default_registry

    specs = [f"{m.kind}:{m.name}" for m in default_registry()]
    for i in range(n - len(specs)):
        specs.append(f"{'http' if i % 2 == 0 else 'periodic'}:m{i:02d}")
    return specs[:n]


@contextlib.contextmanager
def cgroup_leaves(n: int) -> Iterator[tuple[str, list[cgroups.Cgroup], bool]]:
    """n leaves: real ones below a unique root (removed afterwards), else fixture ones."""
    layout = cgroups.detect_layout()
    if os.geteuid() == 0 and layout.writable:
        tree = cgroups.CgroupTree(layout, f"web-node-bench-metrics-{os.getpid()}-{secrets.token_hex(4)}")
        tree.create()
        try:
            leaves = [tree.leaf(f"g{i:02d}") for i in range(n)]
            for leaf in leaves:
                leaf.create()
            yield f"real, {layout.kind}", leaves, True
        finally:
            with contextlib.suppress(cgroups.CgroupError):
                tree.destroy()
        return
    fixture = FIXTURES / "v2"
    flayout = cgroups.detect_layout(sys_root=str(fixture / "sys" / "fs" / "cgroup"), proc_root=str(fixture / "proc"))
    tree = cgroups.CgroupTree(flayout, "web-node")
    yield "fixture v2 (this machine's cgroups are not writable)", [tree.leaf("api" if i % 2 else "ui") for i in range(n)], False


@contextlib.contextmanager
def children(n: int, run_dir: Path, busy: bool = False) -> Iterator[tuple[str, list[Child]]]:
    with cgroup_leaves(n) as (where, leaves, real):
        started: list[Child] = []
        try:
            for spec, leaf in zip(group_specs(n), leaves, strict=True):
                name = spec.split(":", 1)[1]
                sock = str(run_dir / f"{name}.metrics.sock")
                argv = [sys.executable, os.path.abspath(__file__), "--child", sock, spec, *(["--busy"] if busy else [])]
                proc = subprocess.Popen(leaf.placement_argv(argv) if real else argv, stdin=subprocess.PIPE,
                                        cwd=REPO_ROOT)
                started.append(Child(name, (name,), proc, sock, leaf))
            deadline = time.monotonic() + 120
            for child in started:
                while not os.path.exists(child.socket):
                    if child.proc.poll() is not None:
                        raise RuntimeError(f"bench child {child.name} exited with {child.proc.returncode}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"bench child {child.name} did not serve its socket within 120 s")
                    time.sleep(0.05)
            yield where, started
        finally:
            for child in started:
                assert child.proc.stdin is not None
                with contextlib.suppress(OSError):
                    child.proc.stdin.close()
            for child in started:
                try:
                    child.proc.wait(5)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()


@dataclass
class ScrapeRow:
    groups: int
    busy: bool
    where: str
    scrapes: int
    p50_ms: float
    p95_ms: float
    node_cpu_ms: float
    cgroups_ms: float
    children_cpu_ms: float
    page_kib: float
    samples: int

    def markdown(self) -> str:
        verdict = ("yes" if self.p50_ms < SCRAPE_TARGET_MS else "**no**") if self.groups == 50 and not self.busy else "-"
        children = "-" if self.busy else f"{self.children_cpu_ms:.2f}"
        return (f"| {self.groups}{' (busy)' if self.busy else ''} | {self.where} | {self.scrapes} | {self.p50_ms:.2f} "
                f"| {self.p95_ms:.2f} | {self.node_cpu_ms:.2f} | {self.cgroups_ms:.2f} | {children} | {self.page_kib:.0f} "
                f"| {self.samples} | {verdict} |")


def process_cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), from /proc."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measure_scrape(n: int, scrapes: int, busy: bool = False) -> ScrapeRow:
    from web_node.metrics import NodePage
    from web_node.metrics._groups import read_stats
    from web_node.supervisor import GroupSnapshot

    with tempfile.TemporaryDirectory(prefix="web-node-bench-") as tmp, children(n, Path(tmp), busy) as (where, kids):
        snaps = [GroupSnapshot(name=c.name, members=c.members, state="up", pid=c.proc.pid, restarts=0, start_time=time.time(),
                               last_exit=None, cgroup=c.cgroup, metrics_socket=c.socket) for c in kids]
        page = NodePage(lambda: snaps)
        accept = "text/plain;version=0.0.4"

        async def run() -> tuple[list[float], bytes, float]:
            body = b""
            for _ in range(20):  # warm up: connections, caches, the interpreter
                body, _ = await page.render(accept)
            times = []
            cpu0 = process_cpu_seconds([c.proc.pid for c in kids])
            for _ in range(scrapes):
                if busy:
                    await trio.sleep(BUSY_SCRAPE_GAP_S)  # let the traffic change the children's state
                t0 = time.perf_counter()
                body, _ = await page.render(accept)
                times.append((time.perf_counter() - t0) * 1000)
            children_ms = (process_cpu_seconds([c.proc.pid for c in kids]) - cpu0) * 1000 / scrapes
            return times, body, children_ms

        times, body, children_ms = trio.run(run)
        # The node's own CPU per scrape: the worker thread's work (sockets, cgroup files, text), run here directly.
        cpu = []
        for _ in range(min(scrapes, 50)):
            t0 = time.thread_time()
            page._build(snaps, accept)
            cpu.append((time.thread_time() - t0) * 1000)
        t0 = time.perf_counter()
        for _ in range(20):
            read_stats(snaps)
        cgroups_ms = (time.perf_counter() - t0) * 1000 / 20
        errors = sum(page.errors.values())
        if errors:
            raise RuntimeError(f"{errors} child fetches failed during the benchmark: {page.errors}")
    times.sort()
    lines = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
    return ScrapeRow(n, busy, where, scrapes, times[len(times) // 2], times[int(len(times) * 0.95)], statistics.median(cpu),
                     cgroups_ms, children_ms, len(body) / 1024, len(lines))


# ---------------------------------------------------------------- task accounting on GetJob


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def api_server(data_dir: Path, accounting: bool) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    config = data_dir.parent / f"bench-{port}.toml"
    config.write_text(f'[node]\ndata_dir = "{data_dir}"\nmetrics_listen = ""\nshutdown_grace = "2s"\n'
                      f'[members.api]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n')
    env = {**os.environ, "WEB_NODE_TASK_ACCOUNTING": "1" if accounting else "0"}
    log = open(data_dir.parent / f"api-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "web_node", "api", "--in-process", "--config", str(config)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"api exited with {proc.returncode}: see {log.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/api/v1/info")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("api did not answer within 60 s")
            time.sleep(0.1)
        yield port, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> int:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status


def load(port: int, total: int, clients: int) -> float:
    """``total`` GetJob requests from ``clients`` keep-alive connections; requests per second."""
    path = "/api/v1/pipelines/bench/jobs/unit"
    failures: list[str] = []

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for _ in range(n):
                status = request(conn, "GET", path)
                if status != 200:
                    failures.append(str(status))
                    return
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(total // clients,)) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"GetJob answered {failures[0]} during the load")
    return (total // clients) * clients / elapsed


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class AccountingRow:
    accounting: bool
    rps: list[float]
    cpu_us: list[float]


def measure_accounting(total: int, rounds: int, clients: int) -> tuple[AccountingRow, AccountingRow]:
    on, off = AccountingRow(True, [], []), AccountingRow(False, [], [])
    with tempfile.TemporaryDirectory(prefix="web-node-bench-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        with api_server(data, True) as (port, _):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            status = request(conn, "PUT", "/api/v1/pipelines/bench", json.dumps(PIPELINE).encode())
            conn.close()
            if status not in (200, 201):
                raise RuntimeError(f"SetPipeline answered {status}")
        for _ in range(rounds):
            for row in (on, off):
                with api_server(data, row.accounting) as (port, proc):
                    load(port, min(500, total), clients)  # warm up
                    cpu0 = cpu_seconds(proc.pid)
                    row.rps.append(load(port, total, clients))
                    row.cpu_us.append((cpu_seconds(proc.pid) - cpu0) / total * 1e6)
    return on, off


def measure_step_cost(steps: int) -> tuple[float, float]:
    """CPU µs per trio task step (``await trio.sleep(0)``) without and with the instrument.

    Thread CPU time rather than wall time: other load on the machine preempts
    the loop, which inflates wall time but not the CPU the steps use."""
    from web_node.metrics import ProcessMetrics

    async def loop(accounting: bool) -> float:
        metrics = ProcessMetrics(task_accounting=accounting)
        metrics.install_instrument()
        metrics.enter_member("bench")
        t0 = time.thread_time()
        for _ in range(steps):
            await trio.sleep(0)
        elapsed = time.thread_time() - t0
        metrics.uninstall_instrument()
        return elapsed / steps * 1e6

    offs, ons = [], []
    for _ in range(5):  # alternating, best of each: this machine's other load only ever adds
        offs.append(trio.run(loop, False))
        ons.append(trio.run(loop, True))
    return min(offs), min(ons)


# ---------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--part", choices=("all", "scrape", "accounting"), default="all")
    parser.add_argument("--child", nargs=2, metavar=("SOCKET", "SPEC"), help=argparse.SUPPRESS)
    parser.add_argument("--busy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(*args.child, busy=args.busy)
        return 0

    print(f"python {sys.version.split()[0]}, kernel {os.uname().release}, {os.cpu_count()} CPUs\n")
    if args.part in ("all", "scrape"):
        print_scrape(args.scrapes)
    if args.part in ("all", "accounting"):
        print_accounting(args.requests, args.rounds, args.clients)
    return 0


def print_scrape(scrapes: int) -> None:
    rows = [measure_scrape(7, scrapes), measure_scrape(50, scrapes), measure_scrape(50, scrapes, busy=True)]
    print(f"### Scrape: one GET /metrics of the node (target: p50 < {SCRAPE_TARGET_MS:.0f} ms for 50 groups)\n")
    print("| groups | cgroups | scrapes | p50 ms | p95 ms | node CPU ms (p50) | of which cgroup reads ms "
          "| children's CPU ms per scrape | page KiB | samples | under target |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for scrape in rows:
        print(scrape.markdown())
    print(f"\nbusy: every child serves a request (http) or records a run (periodic) every {BUSY_INTERVAL_S * 1000:.0f} ms "
          f"while it is scraped, and scrapes are {BUSY_SCRAPE_GAP_S * 1000:.0f} ms apart, so that its CPU counters and some "
          f"of its lines change between scrapes; the children's CPU then includes that traffic, and is not shown.")


def print_accounting(requests: int, rounds: int, clients: int) -> None:

    step_off, step_on = measure_step_cost(200_000)
    on, off = measure_accounting(requests, rounds, clients)
    # Other load on this machine only ever lowers a round's throughput: the best round of each is the
    # least disturbed estimate; the medians are shown too.
    rps_on, rps_off = max(on.rps), max(off.rps)
    cpu_on, cpu_off = statistics.median(on.cpu_us), statistics.median(off.cpu_us)
    cost = (rps_off - rps_on) / rps_off * 100
    print(f"\n### Task accounting: GetJob on `web-node api --in-process`, {requests} requests x {rounds} rounds, "
          f"{clients} keep-alive clients (target: < {ACCOUNTING_TARGET_PCT:.0f} % fewer requests/s)\n")
    print("| task accounting | req/s (best round) | req/s (median) | req/s (each round) | server CPU µs per request (median) |")
    print("|---|---:|---:|---|---:|")
    for row, rps, cpu in ((off, rps_off, cpu_off), (on, rps_on, cpu_on)):
        each = ", ".join(f"{r:.0f}" for r in row.rps)
        name = "on" if row.accounting else "off (WEB_NODE_TASK_ACCOUNTING=0)"
        print(f"| {name} | {rps:.0f} | {statistics.median(row.rps):.0f} | {each} | {cpu:.0f} |")
    verdict = "yes" if cost < ACCOUNTING_TARGET_PCT else "**no**"
    print(f"\ncost: {cost:+.1f} % requests/s (best rounds), {(cpu_on - cpu_off) / cpu_off * 100:+.1f} % server CPU per request; "
          f"under target: {verdict}")
    print(f"\none task step (`await trio.sleep(0)`), thread CPU: {step_off:.2f} µs without the instrument, "
          f"{step_on:.2f} µs with it ({step_on - step_off:+.2f} µs a step; a GetJob request takes about 40 steps)")


if __name__ == "__main__":
    if shutil.which("true") is None:  # pragma: no cover - a sanity check for odd environments
        print("warning: no 'true' on PATH; pipelines' steps are not run by this benchmark anyway", file=sys.stderr)
    sys.exit(main())
