"""The RL stage's held-out monitor (PPO, GRPO, RLOO, DPO): greedy answers to the dev prompts, judged by every judge
the run has, and the KL of the policy to its reference.

The runner builds a `Monitor` (the dev rows of the held-out prompts, the judges: the reward model as `reward`, the
held-out reward model as `holdout_reward` when the reward stage trained one, the demo's gold judge as `gold`) and
hands it to the stage, which calls `evaluate` with its policy every `eval_steps` and at the end. Answers go through
the evaluation's one generation path (`pipeline.eval.answers.answer`) on each process's share of the prompts and are
gathered in prompt order; the judges see the reply text, as the run's evaluation does. `select_best` maximises
`<judge>_score` of `summary`. eval.json's `monitor_*` keys come from `report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pipeline.eval.answers import answer, kl_to_reference
from pipeline.eval.judges import Judge, RewardModelJudge
from pipeline.eval.stats import split_of

class Monitor:
    """`rows`: the held-out (dev) prompt rows, or None (the stage then holds out its last training prompts);
    `judges`: {name: judge}. What a stage calls: `rows`, `judges`, `attach_reward_model`, `evaluate`, `summary`,
    `report` (stage code never imports this module: the runner hands the monitor in)."""

    def __init__(self, rows: list[dict] | None, judges: Mapping[str, Judge]):
        self.rows, self.judges = rows, dict(judges)

    @classmethod
    def for_prompts(cls, eval_prompts: str | Path | None, *, reward_model: str | Path | None = None,
                    holdout_reward_model: str | Path | None = None, gold: Judge | None = None, batch_size: int = 32) -> "Monitor":
        """The monitor of the dev rows of `eval_prompts`, judged by the reward models and the gold judge given."""
        from stages.common import read_jsonl

        rows = [r for r in read_jsonl(eval_prompts) if split_of(r) == "dev"] if eval_prompts is not None else None
        judges: dict[str, Judge] = {}
        if reward_model is not None:
            judges["reward"] = RewardModelJudge(reward_model, name="reward", batch_size=batch_size)
        if holdout_reward_model is not None:
            judges["holdout_reward"] = RewardModelJudge(holdout_reward_model, name="holdout_reward", batch_size=batch_size)
        if gold is not None:
            judges["gold"] = gold
        return cls(rows, judges)

    def attach_reward_model(self, model, tokenizer) -> None:
        """The stage's own copy of the reward model serves the `reward` judge (not loaded twice)."""
        judge = self.judges.get("reward")
        if isinstance(judge, RewardModelJudge):
            judge.attach(model, tokenizer)

    @staticmethod
    def summary(results: dict, count: int | None = None) -> dict:
        return summary(results, count)

    @staticmethod
    def report(final: dict, sft: dict) -> dict:
        return report(final, sft)

    def evaluate(self, model, rows: list[dict], *, config, accelerator, tokenizer, stop_ids: list[int], reference=None) -> dict:
        """Per prompt of `rows` (each process answers every world-th one), in prompt order: each judge's score of the
        greedy reply, whether it ended, its length in tokens, and with a `reference` the KL of `model` to it along
        one sampled reply (`config.temperature`, seeded by `config.seed`)."""
        rank, world = accelerator.process_index, accelerator.num_processes
        indices = list(range(len(rows)))[rank::world]
        mine = [rows[i] for i in indices]
        results = []
        if mine:
            batch_size = max(config.generation_batch_size or getattr(config, "rollout_batch_size", config.batch_size), config.batch_size)
            records = answer(model, tokenizer, mine, stop_ids=stop_ids, decodings=("greedy",), max_new_tokens=config.max_new_tokens,
                             batch_size=batch_size, seed=config.seed)
            replies = [r["greedy"][0] for r in records]
            scores = {name: [v["score"] for v in judge(mine, [r["reply"] for r in replies])] for name, judge in self.judges.items()}
            kl = (kl_to_reference(model, reference, tokenizer, mine, stop_ids=stop_ids, max_new_tokens=config.max_new_tokens,
                                  batch_size=config.batch_size, seed=config.seed + 17, temperature=config.temperature,
                                  top_k=getattr(config, "top_k", 0), top_p=getattr(config, "top_p", 1.0),
                                  max_prompt_length=config.max_prompt_length)
                  if reference is not None else [None] * len(mine))
            for j, i in enumerate(indices):
                results.append((i, {name: float(s[j]) for name, s in scores.items()}, bool(replies[j]["ended"]),
                                int(replies[j]["length"]), kl[j]))
        gathered = accelerator.gather_for_metrics(results, use_gather_object=True) if world > 1 else results
        gathered = sorted(gathered, key=lambda item: item[0])
        return {"scores": {name: [g[1][name] for g in gathered] for name in self.judges},
                "ended": [g[2] for g in gathered], "length": [g[3] for g in gathered], "kl": [g[4] for g in gathered]}


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summary(results: dict, count: int | None = None) -> dict:
    """`<judge>_score` for every judge, `end_of_turn_rate`, `reply_length`: means over the first `count` prompts."""
    take = (lambda xs: xs[:count]) if count is not None else (lambda xs: xs)
    out = {f"{name}_score": mean(take(scores)) for name, scores in results["scores"].items()}
    out["end_of_turn_rate"] = mean([float(e) for e in take(results["ended"])])
    out["reply_length"] = mean(take(results["length"]))
    return out


def report(final: dict, sft: dict) -> dict:
    """eval.json's `monitor_*` keys from the trained policy's results (with KL) and SFT's, on the monitor's (dev)
    prompts, greedy. The run's headline figures come from its own evaluation on the test prompts."""
    result = {**summary(final), "kl_to_sft": mean(final["kl"]), **{f"{k}_sft": v for k, v in summary(sft).items()},
              "num_eval_prompts": len(final["ended"])}
    return {f"monitor_{k}": v for k, v in result.items()}
