"""Starting stages: in this process, or as a launched process group (accelerate / torchrun).

`chatsmith run` prepares the run directory (data, tokenizer) in this process, then runs each stage.
With `launch.config: single` and one process, a stage runs here. Otherwise each stage is its own
process group started with `accelerate launch` (DeepSpeed ZeRO configs) or `torchrun` (plain DDP on
CPU, where accelerate starts only one process), each process running `chatsmith stage NAME ...`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pipeline.recipe import Recipe

LAUNCHED_ENV = "CHATSMITH_LAUNCHED"


def run_command(args, recipe: Recipe, out_dir: str) -> int:
    from pipeline.report import stage_table, write_report
    from pipeline.runner import Run, StageFailed

    run = Run(recipe, out_dir)
    try:
        if args.command == "stage":
            run.prepare()
            metrics = run.run_stage(args.name, force=args.force)
            print(json.dumps({args.name: metrics}, indent=2, default=str))
            return 0
        run.run_all()
    except StageFailed as error:
        print(f"chatsmith: error: {error}", file=sys.stderr)
        return 1
    report = write_report(run.dir, recipe_name=recipe.name, samples=recipe.eval.report_samples)
    print()
    print(stage_table(run.dir))
    print(f"\nreport: {report}\nchat:   chatsmith chat {run.dir / 'ppo' if recipe.stages.ppo else run.dir / 'sft'}")
    return 0
