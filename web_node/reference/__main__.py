"""``python -m web_node.reference [--check] [--out DIR]``: write docs/, or check that it matches the code."""

from __future__ import annotations

import argparse
import os
import sys

from web_node.reference import REGENERATE, generate, stale, write

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m web_node.reference", description=__doc__)
    parser.add_argument("--out", default=DEFAULT_OUT, help="the docs directory (default: docs/ of this checkout)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when the directory is out of date")
    args = parser.parse_args(argv)
    files = generate()
    if args.check:
        differ = stale(args.out, files)
        for name in differ:
            print(f"{os.path.join(args.out, name)} does not match the code; run `{REGENERATE}`", file=sys.stderr)
        return 1 if differ else 0
    changed = write(args.out, files)
    print(f"{args.out}: {len(files)} files, {len(changed)} changed" + (f" ({', '.join(changed)})" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
