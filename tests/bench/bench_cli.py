"""How fast the CLI answers when it should do no work, as ratios against a bare interpreter measured in the same run
(the tests check the behaviour behind each: tests/test_cli.py, tests/test_pipeline_e2e.py).

- `chatsmith --help` and `python -m pipeline.eval.arena --help` (or `pipeline.arena` before the move) against
  `python -c pass`: the heavy stack is not imported, so the ratio stays small (importing torch alone is many times
  a bare start).
- `import torch` against `python -c pass`, for scale.

    python tests/bench/bench_cli.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def wall(command: list[str], repeats: int) -> float:
    """Median wall time of `command` (one untimed run first, to warm the disk cache)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    subprocess.run(command, cwd=REPO, env=env, capture_output=True, check=True)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    arena = "pipeline.arena" if (REPO / "pipeline" / "arena.py").exists() else "pipeline.eval.arena"
    reference = wall([sys.executable, "-c", "pass"], args.repeats)
    rows = [("python -c pass (reference)", reference)]
    for name, command in [("chatsmith --help", [sys.executable, "-m", "pipeline.cli", "--help"]),
                          (f"{arena} --help", [sys.executable, "-m", arena, "--help"]),
                          ("python -c 'import torch'", [sys.executable, "-c", "import torch"])]:
        rows.append((name, wall(command, args.repeats)))
    print(f"{'command':32} {'median s':>9} {'x reference':>12}")
    for name, seconds in rows:
        print(f"{name:32} {seconds:9.3f} {seconds / reference:12.1f}")


if __name__ == "__main__":
    main()
