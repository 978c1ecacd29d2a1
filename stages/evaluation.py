"""Evaluation of a chat checkpoint on held-out prompts: one module for every run, demo or real.

In:  a causal LM with its tokenizer and stop tokens, prompt rows (`{"prompt"|"messages", "id", ...}`),
     the decodings to answer with, and judges.
Out: one record per prompt with each decoding's replies and every judge's verdict on them, and the
     plain means the monitors need. Confidence intervals are the runner's (`pipeline.evaluation`).

Decodings (`DECODINGS`): `greedy`; `chat`, the setting people chat with (T=0.7, top-p 0.95, two
samples per prompt: the arena reuses them); `t1`, sampling at T=1 (what PPO optimises). Sampling is
seeded per decoding, so two checkpoints are answered with the same random stream.

Judges plug in: `judge(rows, replies) -> [{"score": float, <criterion>: float, ...}]`.
`RewardModelJudge` scores with a reward-model checkpoint (any run); the demo world's gold judge lives in
`pipeline.demo`. `kl_to_reference` measures KL(policy || reference) along the policy's own T=1 samples.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

Judge = Callable[[list[dict], list[str]], list[dict]]


@dataclass(frozen=True)
class Decoding:
    sample: bool
    temperature: float = 1.0
    top_p: float = 1.0
    samples: int = 1
    """Replies per prompt."""


DECODINGS = {
    "greedy": Decoding(sample=False),
    "chat": Decoding(sample=True, temperature=0.7, top_p=0.95, samples=2),
    "t1": Decoding(sample=True, temperature=1.0),
}


def answer(model, tokenizer, rows: list[dict], *, stop_ids: list[int], decodings: Iterable[str] = tuple(DECODINGS),
           max_new_tokens: int, batch_size: int, seed: int) -> list[dict]:
    """Per prompt: `{"id", "prompt", <decoding>: [{"reply", "ended", "length"}, ...]}` for each decoding."""
    from stages.common import generate_replies, prompt_messages

    conversations = [prompt_messages(r) for r in rows]
    records = [{"id": r.get("id", i), "prompt": r.get("prompt") or conversations[i][-1]["content"]} for i, r in enumerate(rows)]
    for offset, name in enumerate(decodings):
        decoding = DECODINGS[name]
        for sample in range(decoding.samples):
            replies = generate_replies(model, tokenizer, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                       do_sample=decoding.sample, temperature=decoding.temperature, top_p=decoding.top_p,
                                       seed=seed + 1000 * offset + sample if decoding.sample else None, stop_ids=stop_ids)
            for record, reply in zip(records, replies):
                length = len(tokenizer(reply["reply"], add_special_tokens=False)["input_ids"])
                record.setdefault(name, []).append({**reply, "length": length})
    return records


def judge_answers(records: list[dict], rows: list[dict], judges: dict[str, Judge]) -> None:
    """Add every judge's verdict to every reply of every decoding (in place, under `verdicts`)."""
    decodings = [k for k in records[0] if k in DECODINGS] if records else []
    for decoding in decodings:
        for sample in range(len(records[0][decoding])):
            replies = [r[decoding][sample]["reply"] for r in records]
            for name, judge in judges.items():
                for record, verdict in zip(records, judge(rows, replies)):
                    record[decoding][sample].setdefault("verdicts", {})[name] = verdict


def per_prompt(records: list[dict], decoding: str, judge: str, key: str = "score") -> list[float]:
    """One number per prompt: the judge's `key` averaged over the decoding's samples."""
    return [statistics.fmean(s["verdicts"][judge][key] for s in r[decoding]) for r in records]


def means(records: list[dict]) -> dict:
    """`<judge>_<criterion>_<decoding>` (`<judge>_score_<decoding>` for the score), `end_of_turn_rate_<decoding>`
    and `reply_length_<decoding>`: means over prompts (and samples)."""
    out: dict = {}
    if not records:
        return out
    for decoding in (k for k in records[0] if k in DECODINGS):
        samples = [s for r in records for s in r[decoding]]
        out[f"end_of_turn_rate_{decoding}"] = statistics.fmean(float(s["ended"]) for s in samples)
        out[f"reply_length_{decoding}"] = statistics.fmean(s["length"] for s in samples)
        for judge, verdict in samples[0].get("verdicts", {}).items():
            for key in verdict:
                out[f"{judge}_{key}_{decoding}"] = statistics.fmean(per_prompt(records, decoding, judge, key))
    return out


class RewardModelJudge:
    """Scores replies with a reward-model checkpoint: the conversation rendered with its chat template
    (prompt + the reply as the assistant turn), the score read at the last token, as the reward stage
    trained it. Verdict: `{"score": raw reward}`."""

    def __init__(self, reward_dir: str | Path, *, batch_size: int = 32):
        from transformers import AutoModelForSequenceClassification

        from stages.common import load_tokenizer

        self.tokenizer = load_tokenizer(reward_dir, where=f"reward model {reward_dir}")
        self.model = AutoModelForSequenceClassification.from_pretrained(str(reward_dir)).eval()
        self.batch_size = batch_size

    def __call__(self, rows: list[dict], replies: list[str]) -> list[dict]:
        from stages.common import prompt_messages
        from stages.rlhf.reward import score

        conversations = [prompt_messages(r) + [{"role": "assistant", "content": reply}] for r, reply in zip(rows, replies)]
        return [{"score": s} for s in score(self.model, self.tokenizer, conversations, batch_size=self.batch_size)]


def kl_to_reference(model, reference, tokenizer, rows: list[dict], *, stop_ids: list[int], max_new_tokens: int,
                    batch_size: int, seed: int, max_prompt_length: int = 512) -> list[float]:
    """KL(model || reference) per prompt: one reply sampled from `model` at T=1, and along it the exact per-token
    KL between the two next-token distributions, summed over the reply (an unbiased, low-variance estimate of
    the sequence-level KL)."""
    import torch

    from stages.rlhf.rollout import assemble, encode_prompts, generate, in_chunks, reply_logits

    settings = type("Sampling", (), {"max_new_tokens": max_new_tokens, "temperature": 1.0, "top_k": 0, "top_p": 1.0})
    prompts = encode_prompts(tokenizer, rows, max_prompt_length)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prompt_ids, prompt_mask, reply, _ = generate(model, tokenizer, prompts, settings, sample=True, keep_logits=False,
                                                     chunk=batch_size, stop_ids=stop_ids)
    batch = assemble(prompt_ids, prompt_mask, reply, stop_ids)
    width, out = reply.shape[1], []
    for rows_slice in in_chunks(batch_size, len(prompts)):
        inputs = dict(input_ids=batch.input_ids[rows_slice], attention_mask=batch.attention_mask[rows_slice],
                      position_ids=batch.position_ids[rows_slice], reply_length=width)
        log_p = torch.log_softmax(reply_logits(model, **inputs), -1)
        log_q = torch.log_softmax(reply_logits(reference, **inputs), -1)
        per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
        out.extend((per_token * batch.mask[rows_slice]).sum(-1).tolist())
    return out
