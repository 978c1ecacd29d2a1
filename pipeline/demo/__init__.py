"""The demo world as the runner sees it: its data, its labelers, its gold judge.

Built only when a recipe says `data.source: demo`; nothing outside the demo path imports this
package. `pipeline.demo.config` (the `data.world` settings) is the one module the recipe schema uses.

    Demo(run).write_data(paths)          pretraining text, SFT conversations, prompts, held-out prompts
    Demo(run).before_stage("reward")     comparisons from the SFT checkpoint via simulated labelers
    Demo(run).gold_scorer(stage_config)  the gold judge as PPO's monitor takes it (the demo's own held-out prompts only)
    Demo(run).gold_judge()               the gold judge as the run's evaluation takes it (`pipeline.evaluation`)
    Demo(run).stage_figures(...)         fact accuracy on towns seen in SFT, on pretrain-only towns, on unasked facts
    Demo(run).reward_figures(...)        the reward model and the labels against the gold judge
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.demo.world import World
from stages.checkpoint import sha256_path
from stages.common import write_json_atomic, write_jsonl


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
        sft_sha = run.manifest.sha256(sft_dir) if run.manifest else sha256_path(sft_dir)
        data_json = run.data_path("data.json")  # the recipe's own sources join these comparisons
        data_sha = json.loads(data_json.read_text()).get("config_sha256") if data_json.exists() else None
        made = json.loads(stamp.read_text()) if stamp.exists() else {}
        if made.get("sft_sha256") == sft_sha and made.get("data_sha256") == data_sha:
            return
        run.say("labels: sampling candidates from the SFT checkpoint, simulated labelers rank them")
        started = time.perf_counter()
        result = make_comparisons(run, self.world, sft_dir)
        write_json_atomic(stamp, {"sft_sha256": sft_sha, "data_sha256": data_sha, "seconds": round(time.perf_counter() - started, 1),
                                  "ingest": result["ingest"], "build": {k: v for k, v in result["build"].items() if k != "paths"}})

    def gold_scorer(self, stage_config):
        # The judge knows the demo world's held-out prompts, not a user's own.
        return self.world.gold_scorer() if not getattr(stage_config, "eval_prompts", None) else None

    def gold_judge(self):
        """The gold judge as an evaluation judge: (rows, replies) -> per-criterion verdicts with `score`."""
        world = self.world
        return lambda rows, replies: [world.judge(row, reply) for row, reply in zip(rows, replies)]

    def reward_figures(self, pairs: list[dict], chosen: list[float], rejected: list[float], clusters: list) -> dict:
        """The reward model against the gold judge on the held-out comparisons: on the pairs gold does not tie
        (scores more than TIE_WINDOW apart), how often the reward model orders them as gold does
        (`pairwise_accuracy_gold`) and how often the labels did (`label_gold_agreement`), with 95% CIs by prompt.
        The reward model learns the labels, so it should sit near or below the labels' agreement with gold."""
        from pipeline.bootstrap import mean_ci
        from pipeline.demo.world import TIE_WINDOW

        model_agrees, labels_agree, kept = [], [], []
        for pair, c_score, r_score, cluster in zip(pairs, chosen, rejected, clusters):
            fact = self.world.question_fact(pair["prompt"][-1]["content"])
            if fact is None:
                continue
            row = {"town": fact[0].name, "attribute": fact[1]}
            gold_c = self.world.gold_score(row, pair["chosen"][-1]["content"])
            gold_r = self.world.gold_score(row, pair["rejected"][-1]["content"])
            if abs(gold_c - gold_r) <= TIE_WINDOW:
                continue
            gold_prefers_chosen = gold_c > gold_r
            labels_agree.append(float(gold_prefers_chosen))  # the label says chosen > rejected
            model_agrees.append(float((c_score > r_score) == gold_prefers_chosen))
            kept.append(cluster)
        if not kept:
            return {}
        seed = self.run.recipe.eval.seed
        figures = {"gold_decided_pairs": len(kept)}
        for key, values in (("pairwise_accuracy_gold", model_agrees), ("label_gold_agreement", labels_agree)):
            mean, low, high = mean_ci(values, clusters=kept, seed=seed)
            figures[key], figures[f"{key}_ci95"] = mean, [low, high]
        return figures

    def stage_figures(self, records: list[dict], rows: list[dict]) -> dict:
        """Fact accuracy of greedy answers (gold's `truthful`), on towns in the SFT data (`seen`), on towns whose
        facts only pretraining saw (`pretrain_only`) and on facts of SFT towns no training data asks
        (`pair_unseen`), with 95% CIs over facts."""
        from pipeline.bootstrap import mean_ci
        from pipeline.evaluation import cluster_of

        figures = {}
        groups = {"seen": lambda row: bool(row.get("seen")), "pretrain_only": lambda row: not row.get("seen"),
                  # towns SFT saw, but a fact of theirs no training data asks about
                  "pair_unseen": lambda row: bool(row.get("seen")) and bool(row.get("pair_unseen"))}
        for label, wanted in groups.items():
            chosen = [(float(r["greedy"][0]["verdicts"]["gold"]["truthful"] == 1.0), cluster_of(row, i))
                      for i, (r, row) in enumerate(zip(records, rows)) if wanted(row)]
            if not chosen:
                continue
            values, clusters = [v for v, _ in chosen], [c for _, c in chosen]
            mean, low, high = mean_ci(values, clusters=clusters, seed=self.run.recipe.eval.seed)
            figures[f"fact_accuracy_{label}"] = mean
            figures[f"fact_accuracy_{label}_ci95"] = [low, high]
            figures[f"eval_prompts_{label}"] = len(values)
        return figures
