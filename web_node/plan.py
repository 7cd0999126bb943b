"""``web-node plan``: the effective layout an operator is about to run, and what the kernel
will make of it here: the cgroups layout, the node's own cgroup, the controllers its groups
get, and for every limit a group sets whether the kernel enforces it (``cgroups.tree_report``)."""

from __future__ import annotations

from typing import Any

import cgroups
from web_node.config import Config, GroupSettings
from web_node.members import Registry
from web_node.store import redact_database_url
from web_node.supervisor import detect_host_layout
from web_node.units import format_duration, format_size


def build_plan(config: Config, registry: Registry, selection: list[str]) -> dict[str, Any]:
    layout = detect_host_layout()
    tree = cgroups.CgroupTree(layout, config.node.cgroup_root)
    report = cgroups.tree_report(layout, config.node.cgroup_root)
    groups = []
    for g in config.layout(selection):
        leaf = tree.leaf(g.name)
        limits = _limit_values(g)
        groups.append({
            "name": g.name,
            "members": list(g.members),
            "limits": {
                "memory_max_bytes": g.memory_max_bytes, "memory_high_bytes": g.memory_high_bytes,
                "memory_low_bytes": g.memory_low_bytes, "swap_max_bytes": g.swap_max_bytes,
                "cpu_max_cores": g.cpu_max_cores, "cpu_weight": g.cpu_weight, "pids_max": g.pids_max,
            },
            "limits_text": g.limits_text(),
            # Only the limits this group sets: "memory_max: enforced (v1 memory controller: ...)".
            "enforcement": {s: report.limit(s).describe() for s, v in limits.items() if v is not None},
            "restart": {"policy": g.restart, "limit": g.restart_limit, "window_s": g.restart_window_s},
            "cgroup": leaf.path() if layout.kind != "none" else None,
            "cgroup_paths": leaf.paths() if layout.kind != "none" else {},
            "listen": {m: config.members[m].listen for m in g.members if registry.get(m).kind == "http"},
        })
    chosen = set(selection)
    return {
        "sources": list(config.sources),
        "node": {
            "data_dir": config.node.data_dir, "database": _redact(config.node.database),
            "cgroup_root": config.node.cgroup_root, "metrics_listen": config.node.metrics_listen,
            "shutdown_grace_s": config.node.shutdown_grace_s,
        },
        "cgroups": {
            "layout": layout.kind, "writable": layout.writable, "problems": list(layout.problems),
            "own_cgroup": dict(layout.own_paths), "tree_below": dict(report.anchors),
            "controllers": dict(report.controllers), "controllers_missing": dict(report.missing),
            "limits": {e.setting: {"status": e.status, "detail": e.detail} for e in report.limits},
        },
        "groups": groups,
        "disabled_members": [m for m, s in config.members.items() if not s.enabled and m in chosen],
        "disabled_endpoints": {m: eps for m, eps in config.disabled_endpoints().items() if m in chosen},
    }


def _limit_values(g: GroupSettings) -> dict[str, float | int | None]:
    """The group's limits by the names cgroups.tree_report uses."""
    return {
        "memory_max": g.memory_max_bytes, "memory_high": g.memory_high_bytes, "memory_low": g.memory_low_bytes,
        "swap_max": g.swap_max_bytes, "cpu_max": g.cpu_max_cores, "cpu_weight": g.cpu_weight, "pids_max": g.pids_max,
    }


def _redact(url: str) -> str:
    """Hide a password in a database URL."""
    return redact_database_url(url)


def format_plan(plan: dict[str, Any]) -> str:
    lines = []
    src = ", ".join(plan["sources"]) or "built-in defaults"
    lines.append(f"configuration: {src}")
    node = plan["node"]
    lines.append(f"data dir: {node['data_dir']}    database: {node['database']}")
    lines.append(f"metrics: {node['metrics_listen'] or 'off'}    shutdown grace: {format_duration(node['shutdown_grace_s'])}")
    cg = plan["cgroups"]
    lines.append(f"cgroups: {cg['layout']}, {'writable' if cg['writable'] else 'NOT writable'}")
    for problem in cg["problems"]:
        lines.append(f"  ! {problem}")
    own_paths: dict[str, str] = cg["own_cgroup"]
    if own_paths:
        distinct = list(dict.fromkeys(own_paths.values()))
        by_path = [f"{p} ({', '.join(k for k, q in own_paths.items() if q == p)})" for p in distinct]
        lines.append("  own cgroup: " + ("; ".join(by_path) if len(distinct) > 1 else distinct[0]))
    for controller in sorted({*cg["controllers"], *cg["controllers_missing"]}):
        how = cg["controllers"].get(controller)
        lines.append(f"  {controller}: {how}" if how else f"  {controller}: NOT available: {cg['controllers_missing'][controller]}")
    lines.append("")
    lines.append(f"{len(plan['groups'])} group(s), each one process in its own cgroup:")
    for g in plan["groups"]:
        r = g["restart"]
        lines.append(f"  group {g['name']}: {', '.join(g['members'])}")
        lines.append(f"    limits: {g['limits_text']}")
        for text in g["enforcement"].values():
            lines.append(f"      {text}")
        lines.append(f"    restart: {r['policy']}, at most {r['limit']} restarts in {format_duration(r['window_s'])}")
        if g["listen"]:
            lines.append("    listen: " + ", ".join(f"{m} {a}" for m, a in g["listen"].items()))
        lines.append(f"    cgroup: {g['cgroup'] or '(none: cgroups unavailable)'}")
        # v1 hierarchies mostly share one shape (/sys/fs/cgroup/<controller>/<root>/<group>): show it once.
        shapes: dict[str, list[str]] = {}
        for key, path in g["cgroup_paths"].items():
            if path != g["cgroup"]:
                shapes.setdefault(path.replace(f"/{key}/", "/<controller>/", 1), []).append(key)
        for shape, keys in shapes.items():
            shown = shape.replace("<controller>", keys[0]) if len(keys) == 1 else shape
            lines.append(f"            + v1 {', '.join(keys)}: {shown}")
    lines.append("")
    dm = plan["disabled_members"]
    lines.append(f"disabled members: {', '.join(dm) if dm else 'none'}")
    de = plan["disabled_endpoints"]
    lines.append("disabled endpoints: " + ("; ".join(f"{m}: {', '.join(e)}" for m, e in de.items()) if de else "none"))
    return "\n".join(lines)


__all__ = ["build_plan", "format_plan", "format_size"]
