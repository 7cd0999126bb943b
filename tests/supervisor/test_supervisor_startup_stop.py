"""A stop while the node starts is as clean as a stop after it.

systemd sends SIGTERM whenever an operator stops or restarts a unit, also
while it is still activating. Each run here starts a real node (or an
``--in-process`` runner), sends SIGTERM at another point of its start-up
(before the imports are done, while the cgroup tree is made, while the group
children import, while members bind), and checks: exit status 0, no process
of it left, no cgroup left, no escalation to a kill.

Time 0 of a run is the moment the process has blocked the stop signals, read
from the kernel (``SigBlk`` in /proc/PID/status): its first statement. Before
that, Python itself is starting and no code of web-node has run, so a signal
there takes the default action (exit 143) with nothing made yet that could
be left behind.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from node_helpers import free_port
from supervisor_nodes import BACKEND, REPO_ROOT, Node, alive, cgroup_dirs_left, disabled

RUNS = 12
LAST_DELAY_S = 1.5
# Long enough that a child still importing under load reaches its loop: a stop must never need the kill.
GRACE = "30s"

TWO_GROUPS: dict[str, Any] = {
    "members": disabled("ui", "gateway"),
    "groups": {"backend": {"members": list(BACKEND)}},
    "grace": GRACE,
}


def _spread_delays(rng: random.Random) -> list[float]:
    """RUNS delays covering 0..LAST_DELAY_S evenly, each moved a little at random, in random order."""
    step = LAST_DELAY_S / (RUNS - 1)
    delays = [min(LAST_DELAY_S, max(0.0, i * step + rng.uniform(-step / 2, step / 2))) for i in range(RUNS)]
    rng.shuffle(delays)
    return delays


def wait_signals_blocked(pid: int, timeout: float = 30.0) -> None:
    """Until the process has run its first statement, ``block_signals()`` (SIGTERM in its SigBlk mask)."""
    bit = 1 << (signal.SIGTERM - 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        blocked = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
        if blocked & bit:
            return
        time.sleep(0.001)
    raise AssertionError(f"pid {pid} did not block SIGTERM within {timeout} s")


def _child_pids(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"group \S+ starting: pid (\d+)", log)]


def test_real_kernel_sigterm_at_random_points_of_start_up_exits_0_and_leaves_nothing(
        new_node: Callable[..., Node]) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    first: Node | None = None
    for run, delay in enumerate(_spread_delays(rng)):
        node = new_node("web", **TWO_GROUPS) if first is None else new_node("web", like=first)
        first = first or node
        wait_signals_blocked(node.pid)
        time.sleep(delay)
        sent = time.monotonic()
        node.proc.proc.send_signal(signal.SIGTERM)
        code = node.proc.proc.wait(90)
        took = time.monotonic() - sent
        log = node.log()
        what = f"run {run} (seed {seed}): SIGTERM {delay:.2f} s after start, exit {code} after {took:.1f} s"
        assert code == 0, f"{what}\n{log}"
        assert "Traceback" not in log, f"{what}\n{log}"
        assert "did not stop within" not in log, f"{what}: a group needed the kill\n{log}"
        assert [p for p in [node.pid, *_child_pids(log)] if alive(p)] == [], f"{what}: processes left\n{log}"
        assert cgroup_dirs_left(node.cgroup_root) == [], f"{what}: cgroups left\n{log}"
        assert not (node.data_dir / "node.sock").exists(), what


def test_in_process_sigterm_during_start_up_and_right_after_the_first_answer_exits_0(
        start_node: Any, data_dir: Path) -> None:
    """``--in-process``: members serve in the node's own process; a stop as soon as
    GetInfo answers, or at any point before, ends every member and exits 0."""
    rng = random.Random()
    delays: list[float | None] = [None, None, None, *(rng.uniform(0, LAST_DELAY_S) for _ in range(3))]
    for delay in delays:
        port = free_port()
        config = (f'[node]\ndata_dir = "{data_dir}"\nmetrics_listen = ""\nshutdown_grace = "{GRACE}"\n'
                  f'[members.api]\nlisten = "127.0.0.1:{port}"\n')
        node = start_node(["api", "--in-process"], config_text=config)
        wait_signals_blocked(node.pid)
        if delay is None:  # right after the first answer
            node.wait_http(f"http://127.0.0.1:{port}/api/v1/info", timeout=60)
        else:
            time.sleep(delay)
        node.proc.send_signal(signal.SIGTERM)
        code = node.proc.wait(60)
        log = node.log()
        when = "right after GetInfo answered" if delay is None else f"{delay:.2f} s after start"
        assert code == 0, f"SIGTERM {when}: exit {code}\n{log}"
        assert "Traceback" not in log, log
        if delay is None:
            assert "received SIGTERM: stopping every member" in log and "stopped: every member ended" in log, log
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/v1/info", timeout=2)
            except httpx.ConnectError:
                pass
            else:
                raise AssertionError(f"still answering after the stop:\n{log}")


def test_a_group_child_stopped_at_random_points_of_its_start_up_exits_0(tmp_path: Path) -> None:
    """``web-node group NAME``, the child the node execs for each group, as the node runs it
    (the raw config the node hands over), stopped while it imports, opens the store, starts
    its member, or serves: it reads the SIGTERM and exits 0 every time."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    raw = tmp_path / "config-1.json"
    raw.write_text(f'{{"node": {{"data_dir": "{data_dir}", "metrics_listen": "", "shutdown_grace": "{GRACE}"}}}}')
    rng = random.Random()
    for delay in sorted(rng.uniform(0, LAST_DELAY_S) for _ in range(6)):
        log_path = tmp_path / f"group-{uuid.uuid4().hex[:6]}.log"
        with open(log_path, "wb") as log:
            child = subprocess.Popen([sys.executable, "-m", "web_node", "group", "gc", "--raw-config", str(raw)],
                                     cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_signals_blocked(child.pid)
            time.sleep(delay)
            child.send_signal(signal.SIGTERM)
            code = child.wait(60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        text = log_path.read_text()
        assert code == 0, f"SIGTERM {delay:.2f} s after the child blocked it: exit {code}\n{text}"
        assert "received SIGTERM" in text and "Traceback" not in text, text
