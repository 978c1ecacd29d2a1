"""The demo world as the runner sees it: its data, its labelers, its gold judge.

Built only when a recipe says `data.source: demo`; nothing outside the demo path imports this
package. `pipeline.demo.config` (the `data.world` settings) is the one module the recipe schema uses.

    Demo(run).write_data(paths)          pretraining text, SFT conversations, prompts, held-out prompts
    Demo(run).before_stage("reward")     comparisons from the SFT checkpoint via simulated labelers
    Demo(run).gold_scorer(stage_config)  the gold judge (for the demo's own held-out prompts only)
    Demo(run).after_stage(name, ...)     behaviour figures of the SFT / PPO checkpoint
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.demo.world import World
from stages.checkpoint import sha256_path
from stages.common import read_jsonl, write_json_atomic, write_jsonl


def gold_scorer_for_run(run_dir: str | Path):
    """The gold judge of a demo run directory (for `chatsmith arena --judge gold`)."""
    from pipeline.arena import ArenaError
    from pipeline.recipe import RecipeError, load_recipe

    try:
        recipe = load_recipe(Path(run_dir) / "recipe.yaml")
    except RecipeError as error:
        raise ArenaError(f"--judge gold needs a demo run directory: {error}") from None
    if recipe.data.source != "demo":
        raise ArenaError(f"--judge gold is the demo world's judge; {run_dir} is not a demo run (use --judge reward:DIR)")
    return World.build(recipe.data.world).gold_scorer()


class Demo:
    def __init__(self, run):
        self.run = run
        self.world = World.build(run.recipe.data.world)

    def write_data(self, paths: dict[str, Path]) -> None:
        world = self.world
        write_jsonl(paths["pretrain"], ({"text": d} for d in world.pretrain_documents()))
        conversations = world.sft_conversations()
        n_eval = max(8, len(conversations) // 20)
        write_jsonl(paths["sft_train"], conversations[n_eval:])
        write_jsonl(paths["sft_eval"], conversations[:n_eval])
        write_jsonl(paths["prompts"], world.rlhf_prompts())
        write_jsonl(paths["eval_prompts"], world.eval_prompts())

    def judged_settings(self) -> dict:
        """What the demo's evaluation of a stage depends on besides the stage config (enters its hash)."""
        return {"world": self.run.recipe.data.world.model_dump(mode="json")}

    def before_stage(self, name: str) -> None:
        if name == "reward" and not self.run.recipe.stages.reward.data:
            self.ensure_comparisons()

    def ensure_comparisons(self) -> None:
        """The comparisons, made from the SFT checkpoint once per SFT checkpoint."""
        from pipeline.demo.labelers import make_comparisons

        run = self.run
        sft_dir = Path(run.recipe.stages.reward.init_from or run.stage_dir("sft"))
        stamp = run.dir / "labels" / "made_from.json"
        sft_sha = sha256_path(sft_dir)
        if stamp.exists() and json.loads(stamp.read_text()).get("sft_sha256") == sft_sha:
            return
        run.say("labels: sampling candidates from the SFT checkpoint, simulated labelers rank them")
        started = time.perf_counter()
        result = make_comparisons(run, self.world, sft_dir)
        write_json_atomic(stamp, {"sft_sha256": sft_sha, "seconds": round(time.perf_counter() - started, 1),
                                  "ingest": result["ingest"], "build": {k: v for k, v in result["build"].items() if k != "paths"}})

    def gold_scorer(self, stage_config):
        # The judge knows the demo world's held-out prompts, not a user's own.
        return self.world.gold_scorer() if not getattr(stage_config, "eval_prompts", None) else None

    def after_stage(self, name: str, metrics: dict, inputs: dict[str, Path], out: Path) -> dict:
        """The run-wide behaviour figures merged into a chat stage's metrics."""
        if name == "sft":
            return {**metrics, **self.behaviour(out)}
        if name != "ppo":
            return metrics
        # The stage's own held-out figures (greedy, monitor prompts) stay under monitor_*; the run-wide
        # behaviour evaluation (same prompts and seed as SFT's) gives the headline keys.
        behaviour = self.behaviour(out)
        renamed = set(behaviour) | {"gold_score_sft", "end_of_turn_rate_sft"}
        metrics = {**{(f"monitor_{k}" if k in renamed else k): v for k, v in metrics.items()}, **behaviour}
        sft_eval = self.run.stage_dir("sft") / "eval.json"
        if sft_eval.exists() and Path(inputs["policy"]) == self.run.stage_dir("sft"):
            sft_metrics = json.loads(sft_eval.read_text())
            metrics["gold_score_sft"] = sft_metrics.get("gold_score")
            metrics["gold_score_greedy_sft"] = sft_metrics.get("gold_score_greedy")
        return metrics

    def behaviour(self, checkpoint: Path) -> dict:
        from pipeline.demo.behaviour import behaviour

        rows_path = self.run.data_path("eval_prompts.jsonl")
        if not rows_path.exists():
            return {}
        ev = self.run.recipe.eval
        metrics, answers = behaviour(checkpoint, read_jsonl(rows_path), self.world, max_new_tokens=ev.max_new_tokens,
                                     batch_size=ev.batch_size, temperature=ev.temperature, seed=ev.seed)
        write_jsonl(checkpoint / "eval_answers.jsonl", answers)
        return metrics
