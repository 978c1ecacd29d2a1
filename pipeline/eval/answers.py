"""Answers to held-out prompts, and what they are judged with: the one generation path of every evaluation.

    answer(model, tokenizer, rows, decodings=...)   -> per prompt, each decoding's replies
    judge_answers(records, rows, judges)            -> every judge's verdict on every reply (in place)
    means(records)                                  -> `<judge>_<name>_<decoding>`, end-of-turn rate, reply length
    kl_to_reference(model, reference, ...)          -> KL(model || reference) per prompt, along the model's samples

Decodings (`DECODINGS`): `greedy`; `chat`, the setting people chat with (T=0.7, top-p 0.95, two samples per
prompt: the arena reuses them); `t1`, sampling at T=1 (what PPO optimises). Sampling is seeded per decoding, so two
checkpoints are answered with the same random stream. The run's evaluation (`pipeline.eval.run`), PPO's monitor
(`pipeline.eval.monitor`) and the arena all answer through `answer`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from pipeline.eval.judges import Judge, flat


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


def decoding_seed(seed: int, name: str, sample: int = 0) -> int:
    """The seed of sample `sample` of decoding `name`: the same for every checkpoint answering with `seed` (a decoding
    not in `DECODINGS`, such as the arena CLI's own, draws sample s with `seed + s`)."""
    return seed + 1000 * (list(DECODINGS).index(name) if name in DECODINGS else 0) + sample


def answer(model, tokenizer, rows: list[dict], *, stop_ids: list[int],
           decodings: Iterable[str] | Mapping[str, Decoding] = tuple(DECODINGS), max_new_tokens: int, batch_size: int,
           seed: int) -> list[dict]:
    """Per prompt: `{"id", "prompt", <decoding>: [{"reply", "ended", "length"}, ...]}` for each decoding asked
    (names of `DECODINGS`, or {name: Decoding} for settings of one's own)."""
    from stages.common import generate_replies, prompt_messages

    decodings = dict(decodings) if isinstance(decodings, Mapping) else {name: DECODINGS[name] for name in decodings}
    conversations = [prompt_messages(r) for r in rows]
    records = [{"id": r.get("id", i), "prompt": r.get("prompt") or conversations[i][-1]["content"]} for i, r in enumerate(rows)]
    for name, decoding in decodings.items():
        for sample in range(decoding.samples):
            replies = generate_replies(model, tokenizer, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                       do_sample=decoding.sample, temperature=decoding.temperature, top_p=decoding.top_p,
                                       seed=decoding_seed(seed, name, sample) if decoding.sample else None, stop_ids=stop_ids)
            for record, reply in zip(records, replies):
                length = len(tokenizer(reply["reply"], add_special_tokens=False)["input_ids"])
                record.setdefault(name, []).append({**reply, "length": length})
    return records


def decodings_of(records: list[dict]) -> list[str]:
    return [k for k, v in records[0].items() if isinstance(v, list)] if records else []


def judge_answers(records: list[dict], rows: list[dict], judges: Mapping[str, Judge]) -> None:
    """Add every judge's verdict to every reply of every decoding (in place, under `verdicts`)."""
    for decoding in decodings_of(records):
        for sample in range(len(records[0][decoding])):
            replies = [r[decoding][sample]["reply"] for r in records]
            for name, judge in judges.items():
                for record, verdict in zip(records, judge(rows, replies)):
                    record[decoding][sample].setdefault("verdicts", {})[name] = verdict


def per_prompt(records: list[dict], decoding: str, judge: str, key: str = "score") -> list[float]:
    """One number per prompt: the judge's `key` (the score, a criterion or a flag) averaged over the decoding's samples."""
    return [statistics.fmean(float(flat(s["verdicts"][judge])[key]) for s in r[decoding]) for r in records]


def means(records: list[dict]) -> dict:
    """`<judge>_<name>_<decoding>` (`<judge>_score_<decoding>` for the score), `end_of_turn_rate_<decoding>`
    and `reply_length_<decoding>`: means over prompts (and samples)."""
    out: dict = {}
    for decoding in decodings_of(records):
        samples = [s for r in records for s in r[decoding]]
        out[f"end_of_turn_rate_{decoding}"] = statistics.fmean(float(s["ended"]) for s in samples)
        out[f"reply_length_{decoding}"] = statistics.fmean(s["length"] for s in samples)
        for judge, verdict in samples[0].get("verdicts", {}).items():
            for key in flat(verdict):
                out[f"{judge}_{key}_{decoding}"] = statistics.fmean(per_prompt(records, decoding, judge, key))
    return out


def load_chat_checkpoint(path: str | Path):
    """(model, tokenizer, chat format) of a chat checkpoint; the model's generation config stops on the format's
    stop tokens. A checkpoint without a chat template (a PPO run on a plain-text policy) is read as plain text."""
    from transformers import AutoModelForCausalLM

    from stages.chat_format import configure_generation
    from stages.common import load_chat_tokenizer

    tokenizer, chat_format = load_chat_tokenizer(path, where=f"evaluate {path}", plain_text=True)
    model = AutoModelForCausalLM.from_pretrained(str(path))
    configure_generation(model, chat_format)
    model.eval()
    return model, tokenizer, chat_format


def kl_to_reference(model, reference, tokenizer, rows: list[dict], *, stop_ids: list[int], max_new_tokens: int,
                    batch_size: int, seed: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    max_prompt_length: int = 512) -> list[float]:
    """KL(model || reference) per prompt: one reply sampled from `model` (at `temperature`, `top_k`, `top_p`), and
    along it the exact per-token KL between the two next-token distributions at that temperature, summed over the
    reply. Its mean over prompts is an unbiased, low-variance estimate of the sequence-level KL."""
    import torch

    from stages.rlhf.rollout import assemble, encode_prompts, generate, in_chunks, reply_logits

    settings = type("Sampling", (), {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p})
    prompts = encode_prompts(tokenizer, rows, max_prompt_length)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        prompt_ids, prompt_mask, reply, _ = generate(model, tokenizer, prompts, settings, sample=True, keep_logits=False,
                                                     chunk=batch_size, stop_ids=stop_ids)
        batch = assemble(prompt_ids, prompt_mask, reply, stop_ids)
        device, width, out = model.device, reply.shape[1], []
        for rows_slice in in_chunks(batch_size, len(prompts)):
            inputs = dict(input_ids=batch.input_ids[rows_slice].to(device), attention_mask=batch.attention_mask[rows_slice].to(device),
                          position_ids=batch.position_ids[rows_slice].to(device), reply_length=width)
            log_p = torch.log_softmax(reply_logits(model, **inputs) / temperature, -1)
            log_q = torch.log_softmax(reply_logits(reference, **inputs) / temperature, -1)
            per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
            out.extend((per_token.cpu() * batch.mask[rows_slice]).sum(-1).tolist())
    return out


def base_continuations(checkpoint: str | Path, prompts: list[str], *, max_new_tokens: int) -> list[str]:
    """A base model has not learned the chat format: what it does with the raw question text (for the report)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages.chat_format import read_chat_format, stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    chat_format = read_chat_format(checkpoint)
    stop_ids = stop_token_ids(chat_format) if chat_format else [tokenizer.eos_token_id]  # the document EOS too
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint))
    model.eval()
    out = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out
