"""Behaviour evaluation of a chat checkpoint on held-out prompts, scored by the demo world's judge.

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

from pipeline.demo_world import World
from stages.common import generate_replies, load_tokenizer, prompt_messages


def load_chat_model(path: str | Path):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(path, where=f"evaluate {path}")
    model = AutoModelForCausalLM.from_pretrained(str(path))
    model.eval()
    return model, tokenizer


def behaviour(checkpoint: str | Path, rows: list[dict], world: World, *, max_new_tokens: int, batch_size: int,
              temperature: float, seed: int) -> tuple[dict, list[dict]]:
    """Metrics and the per-prompt answers (greedy and sampled) of one checkpoint."""
    model, tokenizer = load_chat_model(checkpoint)
    conversations = [prompt_messages(r) for r in rows]
    greedy = generate_replies(model, tokenizer, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size)
    sampled = generate_replies(model, tokenizer, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               do_sample=True, temperature=temperature, seed=seed)
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


def base_continuations(checkpoint: str | Path, prompts: list[str], *, max_new_tokens: int) -> list[str]:
    """A base model has not learned the chat format: show what it does with the raw question text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint))
    model.eval()
    out = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out
