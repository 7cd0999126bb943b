"""``web-node status`` and ``web-node top``: the running node, read over its control socket."""

from __future__ import annotations

import sys
import time
from typing import Any

from web_node.units import format_duration, format_size


def format_table(rows: list[list[str]]) -> str:
    """Left-aligned columns, two spaces apart, for terminals and copy-paste."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _size(n: Any) -> str:
    return format_size(n) if isinstance(n, int) else "-"


def format_status(status: dict[str, Any]) -> str:
    node = status["node"]
    now = node.get("time", time.time())
    lines = [f"node pid {node['pid']}, up {format_duration(now - node['started_at'])}, cgroups: {node['cgroups']}"
             + (f" at {node['cgroup_root']}" if node.get("cgroup_root") else "")]
    for problem in node.get("degraded") or []:
        lines.append(f"  ! DEGRADED: {problem}")
    rows = [["GROUP", "STATE", "PID", "RESTARTS", "MEMORY", "PEAK", "LIMIT", "CPU", "MEMBERS", "LAST EXIT"]]
    for g in status["groups"]:
        cpu = g.get("cpu_seconds")
        rows.append([
            g["name"], g["state"], str(g["pid"] or "-"), str(g["restarts"]),
            _size(g.get("memory_bytes")), _size(g.get("memory_peak_bytes")),
            format_size(g.get("memory_limit_bytes")) if "memory_limit_bytes" in g else "-",
            f"{cpu:.2f}s" if isinstance(cpu, float) else "-",
            ",".join(g["members"]) or "(helper process)", g.get("last_exit") or "",
        ])
    lines.append(format_table(rows))
    return "\n".join(lines)


def format_top(status: dict[str, Any], previous: dict[str, Any] | None) -> str:
    prev = {g["name"]: g for g in (previous or {}).get("groups", [])}
    elapsed = status["node"]["time"] - (previous or {}).get("node", {}).get("time", 0) if previous else 0
    rows = [["GROUP", "STATE", "PID", "CPU%", "MEMORY", "PEAK", "LIMIT", "MEM PSI", "CPU PSI", "RESTARTS"]]
    for g in status["groups"]:
        p = prev.get(g["name"], {})

        def rate(key: str, g: dict[str, Any] = g, p: dict[str, Any] = p) -> str:
            a, b = g.get(key), p.get(key)
            if elapsed <= 0 or not isinstance(a, float) or not isinstance(b, float):
                return "-"
            return f"{100 * (a - b) / elapsed:.1f}"

        rows.append([
            g["name"], g["state"], str(g["pid"] or "-"), rate("cpu_seconds"),
            _size(g.get("memory_bytes")), _size(g.get("memory_peak_bytes")),
            format_size(g.get("memory_limit_bytes")) if "memory_limit_bytes" in g else "-",
            rate("pressure_memory_some_seconds"), rate("pressure_cpu_some_seconds"), str(g["restarts"]),
        ])
    header = f"web-node top  pid {status['node']['pid']}  {time.strftime('%H:%M:%S')}  (PSI: % of time some task waited)"
    return header + "\n" + format_table(rows)


def run_top(socket_path: str, interval: float, iterations: int) -> int:
    from web_node.supervisor import request_status

    previous = None
    count = 0
    try:
        while True:
            status = request_status(socket_path)
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            print(format_top(status, previous), flush=True)
            previous = status
            count += 1
            if iterations and count >= iterations:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
