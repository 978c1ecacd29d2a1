"""Compare two run directories' results, file by file: what a refactor must not change.

    .venv/bin/python tests/bench/eval_diff.py RUN_A RUN_B [--allow-prefix monitor_]

For each stage's eval.json and the run's arena/ratings.json: `byte-identical`, or the keys that differ with both
values. `--allow-prefix P` lists keys starting with P apart (a change the comparison allows, e.g. PPO's `monitor_*`
figures when the monitor's judging changes) with their values before and after. Exit 1 when anything else differs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FILES = [f"{stage}/eval.json" for stage in ("pretrain", "sft", "reward", "ppo")] + ["arena/ratings.json"]


def compare(a: Path, b: Path, name: str, allowed: tuple[str, ...]) -> bool:
    """Print the comparison of one file; True when it holds no difference outside the allowed keys."""
    path_a, path_b = a / name, b / name
    if not path_a.exists() or not path_b.exists():
        print(f"{name}: missing in {a if not path_a.exists() else b}")
        return False
    if path_a.read_bytes() == path_b.read_bytes():
        print(f"{name}: byte-identical")
        return True
    ea, eb = json.loads(path_a.read_text()), json.loads(path_b.read_text())
    keys = list(dict.fromkeys([*ea, *eb]))
    differ = [k for k in keys if ea.get(k) != eb.get(k)]
    moved = [k for k in differ if k.startswith(allowed)] if allowed else []
    other = [k for k in differ if k not in moved]
    order = [k for k in ea if k in eb] != [k for k in eb if k in ea]
    print(f"{name}: {len(differ)} of {len(keys)} keys differ" + (", key order differs" if order else ""))
    for key in other:
        print(f"  {key}: {ea.get(key)!r} -> {eb.get(key)!r}")
    for key in moved:
        print(f"  (allowed) {key}: {ea.get(key)!r} -> {eb.get(key)!r}")
    return not other and not order


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--allow-prefix", action="append", default=[], metavar="P")
    args = parser.parse_args(argv)
    same = [compare(args.run_a, args.run_b, name, tuple(args.allow_prefix)) for name in FILES]
    return 0 if all(same) else 1


if __name__ == "__main__":
    raise SystemExit(main())
