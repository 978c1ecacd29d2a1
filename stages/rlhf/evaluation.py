"""Held-out evaluation of a policy, shared by PPO and its alternatives (GRPO, RLOO, DPO).

`HeldOutEval` generates greedy replies to held-out prompts (sharded over processes, gathered in
prompt order), scores them with the reward model (raw) and with a gold judge when one is given
(the demo world's; on real data there is none), and optionally measures the KL of the policy to a
reference along sampled replies. `eval_report` turns the trained policy's and the SFT policy's
results into eval.json's shared keys.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from stages.common import read_jsonl
from stages.config import RLCommon
from stages.rlhf.rollout import assemble, generate, in_chunks, reply_logits, sequence_scores

log = logging.getLogger("chatsmith.rlhf")

GoldScorer = Callable[[list[dict], list[str]], list[float]]
"""`(prompt rows, replies) -> scores`: a judge that knows the right answers (the demo world's)."""
MIN_FINAL_EVAL_PROMPTS = 100
"""The final evaluation scores at least this many held-out prompts (when there are that many)."""


class HeldOutEval:
    """The held-out evaluation PPO and its alternatives (`stages.rlhf.alternatives`) share: greedy
    replies to the first `count` held-out prompts, scored by the reward model (raw; skipped without
    one) and the gold scorer, and optionally the KL to a reference. Per-prompt results are gathered
    over processes and returned as lists in prompt order."""

    def __init__(self, config: RLCommon, accelerator, tokenizer, prompts: list[list[int]], rows: list[dict], *, reward_model, gold_scorer,
                 chunk: int, stop_ids: list[int], holdout_model=None):
        self.config, self.accelerator, self.tokenizer = config, accelerator, tokenizer
        self.prompts, self.rows = prompts, rows
        self.reward_model, self.gold_scorer, self.holdout_model = reward_model, gold_scorer, holdout_model
        self.stop_ids = list(stop_ids)
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.chunk = chunk

    def evaluate(self, model, count: int, *, reference=None) -> dict:
        """With a `reference`, also the KL of `model` to it (see `_kl_to_reference`)."""
        indices = list(range(count))[self.rank :: self.world]
        results = []
        if indices:
            prompts = [self.prompts[i] for i in indices]
            prompt_ids, prompt_mask, reply, _ = generate(model, self.tokenizer, prompts, self.config, sample=False, keep_logits=False, chunk=self.chunk,
                                                         stop_ids=self.stop_ids)
            batch = assemble(prompt_ids, prompt_mask, reply, self.stop_ids)
            device = self.accelerator.device
            def scored_by(model) -> list:
                if model is None:
                    return [None] * len(indices)
                return torch.cat([
                    sequence_scores(model, batch.input_ids[r].to(device), batch.attention_mask[r].to(device), batch.position_ids[r].to(device)).cpu()
                    for r in in_chunks(self.config.batch_size, len(indices))
                ]).tolist()

            scores, held = scored_by(self.reward_model), scored_by(self.holdout_model)
            texts = [self._decode(row, ended) for row, ended in zip(batch.reply.tolist(), batch.ended.tolist())]
            gold = self.gold_scorer([self.rows[i] for i in indices], texts) if self.gold_scorer else [None] * len(indices)
            kl = self._kl_to_reference(model, reference, prompts) if reference is not None else [None] * len(indices)
            for j, i in enumerate(indices):
                results.append((i, None if scores[j] is None else float(scores[j]), None if gold[j] is None else float(gold[j]),
                                bool(batch.ended[j]), int(batch.mask[j].sum()), kl[j], None if held[j] is None else float(held[j])))
        gathered = self.accelerator.gather_for_metrics(results, use_gather_object=True) if self.world > 1 else results
        gathered = sorted(gathered)
        return {
            "reward": [r[1] for r in gathered],
            "gold": [r[2] for r in gathered],
            "ended": [r[3] for r in gathered],
            "length": [r[4] for r in gathered],
            "kl": [r[5] for r in gathered],
            "holdout_reward": [r[6] for r in gathered],
        }

    def _decode(self, tokens: list[int], ended: bool) -> str:
        """The reply's text: cut at its first stop token, then pad dropped (a pad may be a stop token)."""
        if ended:
            tokens = tokens[: next(i for i, token in enumerate(tokens) if token in self.stop_ids)]
        tokens = [t for t in tokens if t != self.tokenizer.pad_token_id]
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    @torch.no_grad()
    def _kl_to_reference(self, model, reference, prompts: list[list[int]]) -> list[float]:
        """KL(policy || SFT) per prompt: one reply sampled from the policy (the training temperature),
        and along it the exact per-token KL between the two next-token distributions, summed over the
        reply. Its mean over prompts is an unbiased, low-variance estimate of the sequence-level KL."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + 17)
            prompt_ids, prompt_mask, reply, _ = generate(model, self.tokenizer, prompts, self.config, sample=True, keep_logits=False, chunk=self.chunk,
                                                         stop_ids=self.stop_ids)
        batch = assemble(prompt_ids, prompt_mask, reply, self.stop_ids)
        device, width, out = self.accelerator.device, reply.shape[1], []
        for rows in in_chunks(self.config.batch_size, len(prompts)):
            inputs = dict(input_ids=batch.input_ids[rows].to(device), attention_mask=batch.attention_mask[rows].to(device), position_ids=batch.position_ids[rows].to(device), reply_length=width)
            log_p = torch.log_softmax(reply_logits(model, **inputs) / self.config.temperature, -1)
            log_q = torch.log_softmax(reply_logits(reference, **inputs) / self.config.temperature, -1)
            per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
            out.extend((per_token.cpu() * batch.mask[rows]).sum(-1).tolist())
        return out


def eval_report(final: dict, sft: dict, *, gold: bool, reward: bool) -> dict:
    """eval.json's `monitor_*` keys from `HeldOutEval` results of the trained policy (with KL) and of SFT on the
    monitor's (dev) prompts, greedy. The run's headline figures come from its own evaluation on the test
    prompts (`pipeline.evaluation`)."""
    result = {
        **summary(final),
        "kl_to_sft": mean(final["kl"]),
        **{f"{k}_sft": v for k, v in summary(sft).items()},
        "num_eval_prompts": len(final["reward"]),
    }
    dropped = ("gold_score",) * (not gold) + ("reward_score",) * (not reward)
    return {f"monitor_{k}": v for k, v in result.items() if not k.startswith(dropped)}


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summary(results: dict, count: int | None = None) -> dict:
    take = (lambda xs: xs[:count]) if count is not None else (lambda xs: xs)
    out = {
        "gold_score": mean(take(results["gold"])),
        "reward_score": mean(take(results["reward"])),
        "end_of_turn_rate": mean([float(e) for e in take(results["ended"])]),
        "reply_length": mean(take(results["length"])),
    }
    held = mean(take(results.get("holdout_reward") or []))
    if held is not None:  # only with a held-out reward model
        out["holdout_reward_score"] = held
    return out


def prompt_rows(config: RLCommon, prompts: str | Path, eval_prompts: str | Path | None) -> tuple[list[dict], list[dict]]:
    """Training and held-out prompt records for the monitor; held-out rows with a `split` are the `dev` ones only
    (`test` rows are for the run's headline figures); without eval prompts, the last training prompts are held out."""
    train_rows = read_jsonl(prompts)
    eval_source = eval_prompts if eval_prompts is not None else config.eval_prompts
    if eval_source is not None:
        eval_rows = [r for r in read_jsonl(eval_source) if r.get("split", "dev") == "dev"]
    else:
        held_out = max(1, min(MIN_FINAL_EVAL_PROMPTS, len(train_rows) // 5))
        log.warning("no eval prompts given: holding out the last %d training prompts for evaluation", held_out)
        train_rows, eval_rows = train_rows[:-held_out], train_rows[-held_out:]
    eval_rows = eval_rows[: max(MIN_FINAL_EVAL_PROMPTS, config.num_eval_prompts)]
    if not train_rows or not eval_rows:
        raise ValueError(f"{config.algorithm} needs training and eval prompts: got {len(train_rows)} and {len(eval_rows)}")
    return train_rows, eval_rows
