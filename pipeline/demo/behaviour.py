"""Behaviour evaluation of a chat checkpoint on the demo world's held-out prompts, scored by its gold judge.

Two decodings, both over every held-out prompt:
- greedy: `end_of_turn_rate`, `fact_accuracy_seen` (towns whose facts are in the SFT data),
  `fact_accuracy_pretrain_only` (towns whose facts only pretraining saw), `gold_score_greedy`;
- sampled at the eval temperature with a fixed seed: `gold_score` and `end_of_turn_rate_sampled` —
  the policy as it samples, which is what PPO optimises. SFT and PPO checkpoints are scored on the
  same prompts with the same seed.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from pipeline.demo.world import World
from stages.chat_format import stop_token_ids
from stages.common import generate_replies, prompt_messages


def behaviour(checkpoint: str | Path, rows: list[dict], world: World, *, max_new_tokens: int, batch_size: int,
              temperature: float, seed: int) -> tuple[dict, list[dict]]:
    """Metrics and the per-prompt answers (greedy and sampled) of one checkpoint."""
    from pipeline.evaluate import load_chat_checkpoint

    model, tokenizer, chat_format = load_chat_checkpoint(checkpoint)
    stop_ids = stop_token_ids(chat_format)  # end-of-turn, then the document EOS when it differs
    conversations = [prompt_messages(r) for r in rows]
    greedy = generate_replies(model, tokenizer, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              stop_ids=stop_ids)
    sampled = generate_replies(model, tokenizer, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               do_sample=True, temperature=temperature, seed=seed, stop_ids=stop_ids)
    greedy_verdicts = [world.judge(r, g["reply"]) for r, g in zip(rows, greedy)]
    sampled_verdicts = [world.judge(r, s["reply"]) for r, s in zip(rows, sampled)]
    seen = [v["truthful"] == 1.0 for r, v in zip(rows, greedy_verdicts) if r.get("seen")]
    unseen = [v["truthful"] == 1.0 for r, v in zip(rows, greedy_verdicts) if not r.get("seen")]
    metrics = {
        "end_of_turn_rate": statistics.fmean(g["ended"] for g in greedy),
        "fact_accuracy_seen": statistics.fmean(seen) if seen else None,
        "fact_accuracy_pretrain_only": statistics.fmean(unseen) if unseen else None,
        "gold_score_greedy": statistics.fmean(v["score"] for v in greedy_verdicts),
        "gold_score": statistics.fmean(v["score"] for v in sampled_verdicts),
        "end_of_turn_rate_sampled": statistics.fmean(s["ended"] for s in sampled),
        "eval_prompts": len(rows),
        "eval_prompts_seen": len(seen),
        "eval_prompts_pretrain_only": len(unseen),
    }
    for criterion in ("truthful", "helpful", "harmless", "concise"):
        metrics[f"gold_{criterion}"] = statistics.fmean(v[criterion] for v in sampled_verdicts)
    answers = [{"id": r.get("id"), "prompt": r.get("prompt"), "greedy": g["reply"], "sampled": s["reply"]}
               for r, g, s in zip(rows, greedy, sampled)]
    return metrics, answers
