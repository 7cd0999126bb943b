"""Supervisor benchmark: start-to-ready, restart-to-ready, node idle CPU,
against supervisord and circus running the same four members in the same run.

Each supervisor runs api, ui, gateway and the backend members (each member
group one process importing the web stack and serving HTTP or running its
periodic work). "Ready" means every HTTP member answers; a restart is timed
from ``kill -9`` of the api process to the first answer from its successor.

Between kills each supervisor is left alone for longer than web-node's
"stable again" time, so every kill is the death of a healthy group; a kill
loop would measure web-node's crash-loop backoff instead.

Targets on this machine: restart-to-ready p50 under 1 s with plain exec,
node idle CPU under 0.5 % of one core.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from web_node.supervisor._restart_policy import STABLE_AFTER_S

RESTARTS = int(os.environ.get("BENCH_RESTARTS", "8"))
STARTS = int(os.environ.get("BENCH_STARTS", "3"))
IDLE_S = float(os.environ.get("BENCH_IDLE_S", "10"))
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answering_pid(url: str) -> int | None:
    try:
        r = httpx.get(url, timeout=1.0)
        return int(r.json()["pid"]) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, step: float = 0.005) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if predicate():
            return time.monotonic() - began
        time.sleep(step)
    raise TimeoutError("not ready in time")


def all_up(urls: list[str]) -> bool:
    return all(answering_pid(u) is not None for u in urls)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ports = {"api": free_port(), "ui": free_port(), "gateway": free_port()}
        self.urls = {
            "api": f"http://127.0.0.1:{self.ports['api']}/api/v1/info",
            "ui": f"http://127.0.0.1:{self.ports['ui']}/healthz",
            "gateway": f"http://127.0.0.1:{self.ports['gateway']}/healthz",
        }
        self.config = tmp / "web-node.toml"
        self.config.write_text(textwrap.dedent(f"""
            [node]
            data_dir = "{tmp / 'data'}"
            metrics_listen = ""
            cgroup_root = "/web-node-bench-{os.getpid()}"
            shutdown_grace = "5s"
            [members.api]
            listen = "127.0.0.1:{self.ports['api']}"
            [members.ui]
            listen = "127.0.0.1:{self.ports['ui']}"
            [members.gateway]
            listen = "127.0.0.1:{self.ports['gateway']}"
            [groups.backend]
            members = ["scheduler", "build-tracker", "gc", "syslog-drainer"]
            [groups.api]
            restart_limit = 1000
        """))

    def member_argv(self, what: str) -> list[str]:
        return [PY, "-m", "web_node", what, "--in-process", "--config", str(self.config)]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the supervisor we started, then its whole session if it does not stop."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def web_node(setup: Setup) -> Iterator[subprocess.Popen[bytes]]:
    log = open(setup.tmp / "node.log", "ab")
    proc = subprocess.Popen([PY, "-m", "web_node", "web", "--config", str(setup.config)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)
        log.close()


@contextlib.contextmanager
def supervisord(setup: Setup) -> Iterator[subprocess.Popen[bytes]]:
    conf = setup.tmp / "supervisord.conf"
    programs = ""
    for name in ("api", "ui", "gateway", "backend"):
        cmd = " ".join(setup.member_argv(name))
        programs += textwrap.dedent(f"""
            [program:{name}]
            command={cmd}
            autorestart=true
            startsecs=0
            startretries=1000
            stopsignal=TERM
            redirect_stderr=true
            stdout_logfile={setup.tmp / (name + '.sv.log')}
        """)
    conf.write_text(textwrap.dedent(f"""
        [supervisord]
        nodaemon=true
        logfile={setup.tmp / 'supervisord.log'}
        pidfile={setup.tmp / 'supervisord.pid'}
        [unix_http_server]
        file={setup.tmp / 'supervisor.sock'}
        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
    """) + programs)
    proc = subprocess.Popen([PY, "-m", "supervisor.supervisord", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def circus(setup: Setup) -> Iterator[subprocess.Popen[bytes]]:
    conf = setup.tmp / "circus.ini"
    watchers = ""
    for name in ("api", "ui", "gateway", "backend"):
        argv = setup.member_argv(name)
        watchers += textwrap.dedent(f"""
            [watcher:{name}]
            cmd = {argv[0]}
            args = {' '.join(argv[1:])}
            numprocesses = 1
            copy_env = true
            stop_signal = TERM
            max_retry = -1
        """)
    base = free_port()
    conf.write_text(textwrap.dedent(f"""
        [circus]
        endpoint = tcp://127.0.0.1:{base}
        pubsub_endpoint = tcp://127.0.0.1:{free_port()}
        statsd = false
        check_delay = 1
    """) + watchers)
    proc = subprocess.Popen([PY, "-m", "circus.circusd", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)
        subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)


def measure(name: str, runner: Callable[[Setup], contextlib.AbstractContextManager[subprocess.Popen[bytes]]],
            setup: Setup) -> dict[str, object]:
    urls = list(setup.urls.values())
    starts: list[float] = []
    for _ in range(STARTS):
        with runner(setup):
            starts.append(wait_until(lambda: all_up(urls)))
        # Let ports and cgroups settle between runs.
        wait_until(lambda: not any(answering_pid(u) for u in urls), timeout=30)
    restarts: list[float] = []
    idle_pct: float | None = None
    with runner(setup) as proc:
        wait_until(lambda: all_up(urls))
        api = setup.urls["api"]
        time.sleep(2.0)  # past start-up; the first restart should not be a crash-loop backoff
        for _ in range(RESTARTS):
            pid = answering_pid(api)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            began = time.monotonic()
            wait_until(lambda old=pid: (answering_pid(api) or old) != old, timeout=60)
            restarts.append(time.monotonic() - began)
            # Let the group count as healthy again before the next kill (for every supervisor alike):
            # this measures the restart of a group that died once, not the backoff of a crash loop.
            time.sleep(STABLE_AFTER_S + 1.0)
        if name == "web-node":
            time.sleep(2.0)
            before = cpu_seconds(proc.pid)
            time.sleep(IDLE_S)
            idle_pct = 100 * (cpu_seconds(proc.pid) - before) / IDLE_S
    return {
        "name": name,
        "start_p50": statistics.median(starts),
        "restart_p50": percentile(restarts, 50),
        "restart_p95": percentile(restarts, 95),
        "idle_pct": idle_pct,
    }


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-supervisor-"))
    try:
        setup = Setup(tmp)
        rows = [measure("web-node", web_node, setup)]
        for peer, runner in (("supervisord 4.3", supervisord), ("circus 0.19", circus)):
            module = "supervisor" if peer.startswith("supervisord") else "circus"
            try:
                __import__(module)
            except ImportError:
                print(f"({peer} not installed: pip install -e '.[bench]')")
                continue
            rows.append(measure(peer, runner, setup))
        print(f"{STARTS} starts, {RESTARTS} kill -9 restarts of the api process each; 4 processes (api, ui, gateway, backend)\n")
        print("| supervisor | start to all ready (p50) | restart to ready p50 | restart to ready p95 | supervisor idle CPU |")
        print("|---|---|---|---|---|")
        for r in rows:
            idle = "-"
            if r["idle_pct"] is not None:
                # /proc/PID/stat counts clock ticks: the resolution is one tick over IDLE_S.
                resolution = 100 / (os.sysconf("SC_CLK_TCK") * IDLE_S)
                idle = f"{r['idle_pct']:.2f} % of a core (resolution {resolution:.2f} %)"
            print(f"| {r['name']} | {r['start_p50']:.2f} s | {r['restart_p50']:.2f} s | {r['restart_p95']:.2f} s | {idle} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
