"""Rollouts: what every RL algorithm does with prompts and a policy, on token ids.

Prompt encoding through the chat template (truncated from the left so the generation prompt stays),
left padding, seeded prompt order (`PromptStream`), KV-cached batched generation that can keep the
log-probs `generate` computed, the assembled prompt + reply batch (`Rollout`, with the reply mask up to
and including the first stop token: the end-of-turn token or the document EOS), a sequence classifier's score at the last real token, the
reward-model normalisation, and a causal LM's logits over the reply.

Used by PPO (`stages.rlhf.ppo`), GRPO / RLOO / DPO (`stages.rlhf.alternatives`) and the evaluation's KL to a
reference (`pipeline.eval.answers.kl_to_reference`); `monitor_rows` picks the training and held-out rows of an RL
stage.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from stages.common import prompt_messages, render_prompt
from stages.rlhf import ppo_core as core

log = logging.getLogger("chatsmith.rlhf")


def backbone(model):
    """The transformer under a task head (`model.model` for Llama-style classes)."""
    return getattr(model, model.base_model_prefix)


def disable_dropout(model) -> None:
    # A PPO ratio is only 1 at the start of an update if the forward pass is deterministic.
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)



def encode_prompts(tokenizer, rows: list[dict], max_length: int) -> list[list[int]]:
    encoded = []
    for row in rows:
        text = render_prompt(tokenizer, prompt_messages(row))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        encoded.append(ids[-max_length:])  # keep the end: the generation prompt must stay
    return encoded


def left_pad(sequences: list[list[int]], pad_id: int):
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq) :] = torch.tensor(seq)
            attention_mask[row, width - len(seq) :] = 1
    return input_ids, attention_mask


class PromptStream:
    """An endless stream of prompt indices: each pass over the data in a fresh seeded shuffle.
    Position `i` of the stream is a pure function of (seed, i), so resuming needs only `i`."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self._epoch, self._order = -1, None

    def take(self, start: int, count: int) -> list[int]:
        out = []
        for position in range(start, start + count):
            epoch, index = divmod(position, self.size)
            if epoch != self._epoch:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._epoch, self._order = epoch, torch.randperm(self.size, generator=generator).tolist()
            out.append(self._order[index])
        return out



@dataclass
class Rollout:
    """One batch of prompt + reply with everything PPO needs, computed once."""

    input_ids: torch.Tensor  # (B, P + T): prompt left-padded, reply right-padded
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_width: int
    reply: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) 1.0 on reply tokens up to and including the first stop token
    ended: torch.Tensor  # (B,) the reply emitted a stop token (end-of-turn or document EOS)
    logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    scores_raw: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> dict:
        """A micro-batch, with columns that are padding in every chosen row cut away."""
        attention = self.attention_mask[index]
        reply_length = max(int(self.mask[index].sum(-1).max()), 1)
        first = int((attention[:, : self.prompt_width].sum(0) > 0).float().argmax())
        stop = self.prompt_width + reply_length
        return {
            "input_ids": self.input_ids[index, first:stop],
            "attention_mask": attention[:, first:stop],
            "position_ids": self.position_ids[index, first:stop],
            "reply": self.reply[index, :reply_length],
            "mask": self.mask[index, :reply_length],
            "reply_length": reply_length,
        }


def reply_mask(reply: torch.Tensor, stop_ids: list[int]):
    """(mask, ended): 1.0 on each reply up to and including its first stop token (end-of-turn or document
    EOS), and whether it emitted one. A pad equal to a stop token (Qwen's) only ever follows the stop."""
    is_stop = torch.isin(reply, torch.tensor(stop_ids, dtype=reply.dtype, device=reply.device))
    ended = is_stop.any(-1)
    # everything after the first stop token is padding
    after_stop = (is_stop.long().cumsum(-1) - is_stop.long()) > 0
    return (~after_stop).float(), ended


def generate(model, tokenizer, prompts: list[list[int]], config, *, sample: bool, keep_logits: bool, chunk: int,
             stop_ids: list[int]):
    """Batched KV-cached generation that stops on any of `stop_ids` (the chat format's `stop_token_ids`).
    Returns (prompt_ids, prompt_mask, reply, (logprobs, entropy) or None); with `keep_logits`, log-probs and
    entropies of the reply tokens come from the logits generate computed anyway (divided by the temperature),
    reduced on the device chunk by chunk."""
    pad_id = tokenizer.pad_token_id
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    device = next(model.parameters()).device
    replies, logits = [], []
    was_training = model.training
    model.eval()  # generate ignores the KV cache under gradient checkpointing in train mode
    try:
        for start in range(0, len(prompts), chunk):
            ids = prompt_ids[start : start + chunk].to(device)
            attention = prompt_mask[start : start + chunk].to(device)
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=attention,
                    max_new_tokens=config.max_new_tokens,
                    do_sample=sample,
                    temperature=config.temperature if sample else None,
                    top_k=config.top_k if sample else None,
                    top_p=config.top_p if sample else None,
                    eos_token_id=list(stop_ids),
                    pad_token_id=pad_id,
                    use_cache=True,
                    return_dict_in_generate=True,
                    output_logits=keep_logits,
                )
            reply = out.sequences[:, ids.shape[1] :]
            replies.append(reply.cpu())
            if keep_logits:
                step_logits = torch.stack(out.logits, dim=1)
                logits.append((
                    core.logprobs_from_logits(step_logits, reply, temperature=config.temperature).cpu(),
                    core.entropy_from_logits(step_logits, temperature=config.temperature).cpu(),
                ))
                del step_logits, out
    finally:
        model.train(was_training)
    width = max(r.shape[1] for r in replies)
    reply = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1]), value=pad_id) for r in replies])
    token_stats = None
    if keep_logits:
        token_stats = tuple(torch.cat([torch.nn.functional.pad(part[i], (0, width - part[i].shape[1])) for part in logits]) for i in (0, 1))
    return prompt_ids, prompt_mask, reply, token_stats


def assemble(prompt_ids, prompt_mask, reply, stop_ids: list[int]) -> Rollout:
    mask, ended = reply_mask(reply, stop_ids)
    attention_mask = torch.cat([prompt_mask, mask.long()], dim=1)
    return Rollout(
        input_ids=torch.cat([prompt_ids, reply], dim=1),
        attention_mask=attention_mask,
        position_ids=positions(attention_mask),
        prompt_width=prompt_ids.shape[1],
        reply=reply,
        mask=mask,
        ended=ended,
    )


@torch.no_grad()
def sequence_scores(model, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """A sequence classifier's score at the last real token of each row (prompt + reply)."""
    hidden = backbone(model)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).last_hidden_state
    last = (attention_mask * torch.arange(attention_mask.shape[1], device=attention_mask.device)).argmax(-1)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return model.score(hidden[rows, last]).squeeze(-1).float()


@torch.no_grad()
def reply_logits(model, input_ids, attention_mask, position_ids, reply_length: int) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, logits_to_keep=reply_length + 1)
    return out.logits[:, :-1].float()


def in_chunks(batch_size: int, total: int):
    for start in range(0, total, batch_size):
        yield slice(start, min(start + batch_size, total))


def read_reward_stats(reward_path: Path, enabled: bool) -> dict | None:
    """The reward stage's score statistics (`reward_stats.json`) that normalise rewards; None when off."""
    path = reward_path / "reward_stats.json"
    if not enabled or not path.exists():
        if enabled:
            log.warning("%s has no reward_stats.json: rewards are used unnormalised", reward_path)
        return None
    stats = json.loads(path.read_text())
    mean, std = float(stats["mean"]), float(stats["std"])
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"{path}: needs a finite mean and a positive std, got {stats}")
    return {"mean": mean, "std": std}


def shaped_scores(scores: torch.Tensor, ended: torch.Tensor, *, reward_stats: dict | None, missing_eot_penalty: float | None) -> torch.Tensor:
    """Raw reward-model scores normalised with the reward stage's statistics, with the penalty for a
    reply that never emitted end-of-turn: the reward every online algorithm optimises."""
    if reward_stats is not None:
        scores = (scores - reward_stats["mean"]) / reward_stats["std"]
    if missing_eot_penalty is not None:
        scores = torch.where(ended, scores, scores + missing_eot_penalty)
    return scores


MIN_FINAL_EVAL_PROMPTS = 100
"""The final evaluation scores at least this many held-out prompts (when there are that many)."""


def monitor_rows(config, prompts: str | Path, held_out: list[dict] | None, *, warn=None) -> tuple[list[dict], list[dict]]:
    """(training rows, monitor rows): the training prompts, and the monitor's held-out rows (at least
    `MIN_FINAL_EVAL_PROMPTS` of them, when there are that many, for the final evaluation; `num_eval_prompts` are scored
    along the way). Without held-out rows the last training prompts are held out."""
    from stages.common import read_jsonl

    train_rows = read_jsonl(prompts)
    if held_out is None:
        count = max(1, min(MIN_FINAL_EVAL_PROMPTS, len(train_rows) // 5))
        if warn:
            warn(f"no eval prompts given: holding out the last {count} training prompts for evaluation")
        train_rows, held_out = train_rows[:-count], train_rows[-count:]
    held_out = held_out[: max(MIN_FINAL_EVAL_PROMPTS, config.num_eval_prompts)]
    if not train_rows or not held_out:
        raise ValueError(f"{config.algorithm} needs training and eval prompts: got {len(train_rows)} and {len(held_out)}")
    return train_rows, held_out
