"""Another reward model for the over-optimisation check: the reward stage's own training (`stages.rlhf.reward.train_one`,
the run's `stages.reward` settings) on the held-out share of the comparisons (the prompts `RUN/reward/holdout` learnt
from, never the proxy's), from another starting point.

    .venv/bin/python tests/bench/overopt_alt_reward.py runs/overopt --init scratch --out runs/overopt/reward-alt/scratch
    .venv/bin/python tests/bench/overopt_updates.py runs/overopt --reward scratch=runs/overopt/reward-alt/scratch

--init: `sft` (where the proxy starts), `pretrain` (where `RUN/reward/holdout` starts; with another --seed, another
score head and data order), `scratch` (the pretrained architecture with random weights: no pretraining text at all), or a
checkpoint dir. The tokenizer and chat format are SFT's, as for the held-out model. --data all: every training
comparison instead of the held-out share.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def scratch_init(run_dir: Path, out: Path, seed: int) -> Path:
    """The pretrained model's architecture with fresh random weights (seeded), saved as a checkpoint to start from."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(run_dir / "pretrain")))
    model.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--init", required=True, help="sft | pretrain | scratch | a checkpoint dir")
    parser.add_argument("--data", choices=("holdout", "all"), default="holdout")
    parser.add_argument("--seed", type=int, default=None, help="default: the run's reward seed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from pipeline.recipe import load_recipe
    from stages.rlhf.reward import comparisons, split_by_prompt, train_one

    run_dir = args.run
    config = load_recipe(run_dir / "recipe.yaml").stages.reward
    fraction = config.holdout_fraction or 0.5
    config = config.model_copy(update={"holdout_fraction": 0.0, **({"seed": args.seed} if args.seed is not None else {})})
    build = run_dir / "labels" / "build"
    train = comparisons(build / "comparisons_train.jsonl", use_margin=config.use_margin)
    if args.data == "holdout":
        train = split_by_prompt(train, fraction)[1]
    if args.init == "scratch":
        init = scratch_init(run_dir, args.out.parent / f"{args.out.name}-init", config.seed)
    else:
        init = {"sft": run_dir / "sft", "pretrain": run_dir / "pretrain"}.get(args.init, Path(args.init))
    metrics = train_one(config, init_from=init, train=train, output_dir=args.out, eval_data=build / "comparisons_eval.jsonl",
                        meta={"overopt_alt_reward": {"init": args.init, "data": args.data, "seed": config.seed}},
                        tokenizer_from=run_dir / "sft")
    print(json.dumps({k: metrics.get(k) for k in ("pairwise_accuracy", "train_comparisons", "steps")}))


if __name__ == "__main__":
    main()
