"""Run every benchmark in this folder; each prints its own markdown table.

    python -m bench              # all
    python -m bench supervisor   # those whose file name contains "supervisor"
"""

from __future__ import annotations

import pathlib
import runpy
import sys


def main() -> int:
    here = pathlib.Path(__file__).parent
    wanted = sys.argv[1:]
    for path in sorted(here.glob("bench_*.py")):
        if wanted and not any(w in path.stem for w in wanted):
            continue
        print(f"\n## {path.stem}\n", flush=True)
        runpy.run_path(str(path), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
