"""``python -m cgroups``: print the detected cgroup layout, controllers and writability, and what
groups made below a tree root get: where, which controllers, and per limit whether the kernel
enforces it."""

from __future__ import annotations

import argparse
import sys

from ._detect import DEFAULT_SYS_ROOT, detect_layout, tree_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cgroups",
        description="Show the cgroup layout of this host (v2, hybrid, v1, none), its controllers, "
        "this process's cgroups and whether groups can be created here.",
    )
    parser.add_argument("--sys-root", default=DEFAULT_SYS_ROOT, help="where the cgroup filesystems are mounted")
    parser.add_argument("--proc-root", default="/proc", help="the proc filesystem to read mountinfo and cgroup from")
    parser.add_argument("--pid", default="self", help="whose cgroups to show (default: this process)")
    parser.add_argument("--root", default="web-node",
                        help="the tree root groups are made below: relative to the own cgroup, or absolute "
                        "(default web-node, as web-node's [node] cgroup_root)")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when cgroups are not writable")
    args = parser.parse_args(argv)
    layout = detect_layout(sys_root=args.sys_root, proc_root=args.proc_root, pid=args.pid)
    print(layout.describe())
    print()
    print(tree_report(layout, args.root).describe())
    return 1 if args.check and not layout.writable else 0


if __name__ == "__main__":
    sys.exit(main())
