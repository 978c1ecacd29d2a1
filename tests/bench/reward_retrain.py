"""Retrain only the reward stage of a finished demo run, with `stages.reward` overrides, and print its held-out
pairwise accuracy (vs the labels, the figure issue 16's 0.70-0.90 bar is on) and the accuracy by kind of pair. The
run's own SFT checkpoint, comparisons and held-out comparisons are used as they are; nothing in RUN is written.

    .venv/bin/python tests/bench/reward_retrain.py runs/dev-5 --out runs/dev-5-rm/nomargin use_margin=false

For tuning the demo's reward settings on worlds the README's figures do not come from (run the demo with a seed
outside the reported ones, e.g. `chatsmith run recipes/tiny-cpu.yaml --out runs/dev-5 seed=5`). With no overrides
it retrains with the run's settings (a check that the stage reproduces the run's figure).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished demo run directory")
    parser.add_argument("--out", type=Path, required=True, help="where the retrained reward model goes")
    parser.add_argument("overrides", nargs="*", help="stages.reward keys, e.g. use_margin=false max_steps=800 init_from=RUN/pretrain")
    args = parser.parse_intermixed_args()
    build = args.run / "labels" / "build"
    missing = [str(p) for p in (args.run / "recipe.yaml", args.run / "sft", build / "comparisons_train.jsonl",
                                build / "comparisons_eval.jsonl") if not p.exists()]
    if missing:
        raise SystemExit(f"reward_retrain: {args.run} is not a finished demo run (missing {', '.join(missing)})")
    if args.out.exists() and any(args.out.iterdir()):  # the stage would resume (or skip) what is there
        raise SystemExit(f"reward_retrain: --out {args.out} is not empty; give a new directory")

    from pipeline.eval.run import evaluate_reward
    from pipeline.recipe import RecipeError, load_recipe
    from pipeline.runner import Run
    from stages.rlhf import reward

    try:
        recipe = load_recipe(args.run / "recipe.yaml", overrides=[f"stages.reward.{o}" for o in args.overrides])
    except RecipeError as error:
        raise SystemExit(f"reward_retrain: {error}") from None
    start = time.time()
    metrics = reward.run(recipe.stages.reward, init_from=Path(recipe.stages.reward.init_from or args.run / "sft"),
                         output_dir=args.out,
                         train_data=build / "comparisons_train.jsonl", eval_data=build / "comparisons_eval.jsonl")
    seconds = time.time() - start
    figures = evaluate_reward(Run(recipe, args.run, say=lambda _: None), args.out)  # the run's own evaluation
    lo, hi = figures["pairwise_accuracy_ci95"]
    gold = (f", vs gold {figures['pairwise_accuracy_gold']:.3f} (labels vs gold {figures['label_gold_agreement']:.3f})"
            if "pairwise_accuracy_gold" in figures else "")
    print(f"{args.run} reward retrained with {args.overrides or 'the run settings'} in {seconds:.0f} s: "
          f"held-out pairwise_accuracy {metrics['pairwise_accuracy']:.3f} [{lo:.3f}, {hi:.3f}] on "
          f"{metrics['eval_comparisons']} pairs{gold}, train_pairwise_accuracy {metrics['train_pairwise_accuracy']:.3f}, "
          f"{metrics['steps']} steps")
    from reward_pair_kinds import accuracy_by_kind

    print("\n".join(accuracy_by_kind(args.run, args.out / reward.EVAL_PAIRS)))


if __name__ == "__main__":
    main()
