"""Does a held-out reward model share the proxy's blind spots? Mean scores of four kinds of reply to 40 dev
prompts (a plain correct answer, a hedged one, and two degenerate replies PPO learned at kl_coef=0) by the
proxy reward model, the run's held-out one, and a held-out one trained here from the run's SFT checkpoint
on the same comparisons (what `holdout_init_from` avoids).

    make demo-overopt && .venv/bin/python tests/bench/reward_blind_spots.py runs/overopt
"""

import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main(run: Path) -> None:
    from pipeline.demo.world import World
    from pipeline.evaluate import load_reward_checkpoint
    from pipeline.recipe import load_recipe
    from stages.rlhf import reward

    recipe = load_recipe(run / "recipe.yaml")
    cfg = recipe.stages.reward
    from_sft = run / "reward-holdout-from-sft"
    if not (from_sft / "config.json").exists():
        train = reward.comparisons(run / "labels/build/comparisons_train.jsonl", use_margin=cfg.use_margin)
        _, held = reward.split_by_prompt(train, cfg.holdout_fraction)
        reward.train_one(cfg, init_from=run / "sft", train=held, output_dir=from_sft,
                         eval_data=run / "labels/build/comparisons_eval.jsonl")
    world = World.build(recipe.data.world)
    rows = [r for r in (json.loads(l) for l in open(run / "data/eval_prompts.jsonl")) if r.get("split") == "dev"][:40]
    kinds = {"plain": "concise", "hedged": "hedging", "answer": "answer", "iviv": "iviviviviviviviviviviv H"}
    for name, directory in (("proxy (from SFT)", run / "reward"), ("held-out, from SFT", from_sft),
                            ("held-out, run's (holdout_init_from)", run / "reward" / "holdout")):
        model, tokenizer = load_reward_checkpoint(directory)
        means = {}
        for kind, how in kinds.items():
            conversations = []
            for row in rows:
                town = world.town(row["town"])
                reply = (world.write_reply(random.Random(0), town.name, row["attribute"], town.facts[row["attribute"]], how)
                         if how in ("concise", "hedging") else how)
                conversations.append([{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": reply}])
            scores = reward.score(model, tokenizer, conversations)
            means[kind] = round(sum(scores) / len(scores), 3)
        print(f"{name:38s} {means}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
