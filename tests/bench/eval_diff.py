"""Compare two run directories' eval.json files stage by stage (timings ignored): what a refactor must not change.

    .venv/bin/python tests/bench/eval_diff.py RUN_A RUN_B
"""
import json
import sys
from pathlib import Path

a, b = Path(sys.argv[1]), Path(sys.argv[2])
for stage in ("pretrain", "sft", "reward", "ppo"):
    ea = json.loads((a / stage / "eval.json").read_text()); eb = json.loads((b / stage / "eval.json").read_text())
    ea.pop("stage_seconds", None); eb.pop("stage_seconds", None)
    diff = {k: (ea.get(k), eb.get(k)) for k in sorted(set(ea) | set(eb)) if ea.get(k) != eb.get(k)}
    print(stage, "identical" if not diff else diff, f"({len(ea)} keys)")
