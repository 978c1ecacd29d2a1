"""Reward model: learn labelers' comparisons -> a scalar score for (prompt, reply).

In:  the SFT checkpoint (or any causal-LM dir; a fresh 1-output score head is put on it) and
     JSONL comparisons in TRL's conversational preference form
     `{"prompt": [messages], "chosen": [assistant message], "rejected": [...], "margin"?: float}`.
Out: `output_dir/` — an `AutoModelForSequenceClassification` checkpoint (num_labels=1) with the
     tokenizer and `chat_format.json`, `metrics.jsonl`, `eval.json` (`pairwise_accuracy` on held-out comparisons, reward
     mean/std, how many comparisons `max_length` left out) and `reward_stats.json` (mean/std of rewards over a
     sample of the training replies, which PPO uses to normalise rewards). With `holdout_fraction`, also
     `output_dir/holdout/`: a second reward model on the comparisons of a disjoint share of the prompts, started
     from the checkpoint SFT started from (`holdout_init_from`) so that it does not share this one's blind spots
     (its `pairwise_accuracy` is `holdout_pairwise_accuracy` in eval.json): the RL stage's check on
     over-optimising this one.

The score is read at the last token of prompt + reply — the end-of-turn token. After training, comparisons are
scored as training saw them (`evaluate`): rendered with the tokenizer's chat template, pairs longer than
`max_length` left out as RewardTrainer leaves them out, batched by length and spread over the processes.
TRL's RewardTrainer does the training (Bradley-Terry loss, margin when present).

    chatsmith stage reward recipes/tiny-cpu.yaml --out runs/demo
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from stages.checkpoint import merged, save_checkpoint
from stages.common import load_chat_tokenizer, read_jsonl, torch_dtype, write_json_atomic, write_jsonl
from stages.config import RewardStageConfig
from stages.distributed import report_trainer_rank_data
from stages.trl_common import finish, metrics_callback, peft_config, resume_point, run_trainer, training_kwargs


def comparisons(path: str | Path, *, use_margin: bool):
    """Comparisons as a `datasets.Dataset` with exactly the columns RewardTrainer reads."""
    from datasets import Dataset

    rows = read_jsonl(path)
    with_margin = use_margin and any("margin" in r for r in rows)
    out = []
    for i, row in enumerate(rows):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
        if missing:
            raise ValueError(f"{path}:{i + 1}: a comparison needs {missing}")
        item = {"prompt": _messages(row["prompt"], "user"), "chosen": _messages(row["chosen"], "assistant"),
                "rejected": _messages(row["rejected"], "assistant")}
        if with_margin:
            item["margin"] = float(row.get("margin", 0.0))
        out.append(item)
    return Dataset.from_list(out)


def _messages(value, role: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": m["role"], "content": m["content"]} for m in value]


STATS_SAMPLE = 512
"""Training comparisons (a seeded sample of those training kept) scored after training for `reward_stats.json`
and `train_pairwise_accuracy`."""


def encode(tokenizer, conversation: list[dict]) -> list[int]:
    """Token ids of a conversation as RewardTrainer tokenizes it: the tokenizer's own chat template, tokenized. A
    plain-text tokenizer (no template: PPO's `plain` format) gets the prompt text, then the reply and its EOS, as
    PPO's rollouts of a plain-text policy are scored."""
    if not tokenizer.chat_template:
        from stages.common import render_prompt

        prompt = tokenizer(render_prompt(tokenizer, conversation[:-1]), add_special_tokens=False)["input_ids"]
        reply = tokenizer(conversation[-1]["content"], add_special_tokens=False)["input_ids"]
        return [*prompt, *reply, tokenizer.eos_token_id]
    return list(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"])


def encode_pairs(tokenizer, rows: list[dict], *, max_length: int | None) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Chosen and rejected token ids of each comparison, and how many comparisons were dropped because a side is
    longer than `max_length` tokens: RewardTrainer drops those pairs from training (it does not truncate), so a
    pair is scored only where it is whole, its score read at its end-of-turn token as training reads it."""
    pairs, dropped = [], 0
    for row in rows:
        encoded = encode_pair(tokenizer, row, max_length=max_length)
        if encoded is None:
            dropped += 1
        else:
            pairs.append(encoded)
    return pairs, dropped


def encode_pair(tokenizer, row: dict, *, max_length: int | None) -> tuple[list[int], list[int]] | None:
    """One comparison's chosen and rejected token ids (`encode_pairs`); None when a side is past `max_length`."""
    chosen = encode(tokenizer, row["prompt"] + row["chosen"])
    rejected = encode(tokenizer, row["prompt"] + row["rejected"])
    if max_length is not None and max(len(chosen), len(rejected)) > max_length:
        return None
    return chosen, rejected


def score_ids(model, sequences: list[list[int]], *, pad_token_id: int, batch_size: int = 32,
              accelerator=None) -> list[float]:
    """Reward of each token sequence (read at its last token), in the input order.

    Sequences are batched by length, longest first, and right-padded as RewardTrainer's collator pads them
    (causal attention: padding after a sequence does not change its score). With an `accelerator` of several
    processes each takes every world-th sequence of that order (a balanced share of tokens), all run the same
    number of batches (ZeRO-3's forward is a collective) and every process gets every score."""
    import torch

    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator is not None else (1, 0)
    share = order[rank::world]
    if world > 1 and order:
        share += [order[0]] * (-(-len(order) // world) - len(share))  # pad to the same count on every rank
    scored: list[tuple[int, float]] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(share), batch_size):
            batch = share[start : start + batch_size]
            width = max(len(sequences[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
                attention_mask[row, : len(sequences[i])] = 1
            logits = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device)).logits
            scored.extend(zip(batch, logits[:, 0].float().tolist()))
    model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        scored = gather_object(scored)
    by_index = dict(scored)  # the padding repeats an index with the same score
    return [by_index[i] for i in range(len(sequences))]


def score(model, tokenizer, conversations: list[list[dict]], *, batch_size: int = 32) -> list[float]:
    """Reward of each full conversation (prompt + reply), read at its last token (no length limit)."""
    pad_token_id = model.config.get_text_config().pad_token_id  # what the score head skips to find the last token
    return score_ids(model, [encode(tokenizer, c) for c in conversations], batch_size=batch_size,
                     pad_token_id=tokenizer.pad_token_id if pad_token_id is None else pad_token_id)


def score_pairs(model, pairs: list[tuple[list[int], list[int]]], *, pad_token_id: int, batch_size: int = 32,
                accelerator=None) -> tuple[list[float], list[float]]:
    """Rewards of each encoded comparison's chosen and rejected conversation (`encode_pairs`)."""
    scores = score_ids(model, [ids for pair in pairs for ids in pair], pad_token_id=pad_token_id,
                       batch_size=batch_size, accelerator=accelerator)
    return scores[0::2], scores[1::2]


def pairwise_accuracy(chosen: list[float], rejected: list[float]) -> dict:
    wins = [c > r for c, r in zip(chosen, rejected)]
    return {"pairwise_accuracy": sum(wins) / max(1, len(wins)), "eval_comparisons": len(wins),
            "eval_margin_mean": sum(c - r for c, r in zip(chosen, rejected)) / max(1, len(wins))}


EVAL_PAIRS = "eval_pairs.jsonl"
"""`output_dir/eval_pairs.jsonl`: each held-out comparison scored (those within `max_length`), with
`chosen_score` and `rejected_score`."""


def split_by_prompt(dataset, fraction: float):
    """(main, held-out) comparisons: a comparison is held out when a hash of its prompt falls below `fraction`,
    so every comparison of a prompt lands on the same side, and the split does not depend on the seed or order."""
    import hashlib
    import json

    def held_out(row) -> bool:
        digest = hashlib.sha256(json.dumps(row["prompt"], sort_keys=True, ensure_ascii=False).encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction

    flags = [held_out(row) for row in dataset]
    return (dataset.select([i for i, f in enumerate(flags) if not f]), dataset.select([i for i, f in enumerate(flags) if f]))


def run(config: RewardStageConfig, *, init_from: str | Path, train_data: str | Path, output_dir: str | Path,
        eval_data: str | Path | None = None, meta: Optional[dict] = None, holdout_init_from: str | Path | None = None,
        holdout_dir: str | Path | None = None) -> dict:
    """Train the reward model (and first, with `holdout_fraction`, the held-out one on its share of the prompts into
    `holdout_dir` (default `output_dir/holdout`), from `holdout_init_from`: default `config.holdout_init_from`, else
    `init_from`)."""
    import json

    output_dir = Path(output_dir)
    train = comparisons(train_data, use_margin=config.use_margin)
    if not config.holdout_fraction:
        return train_one(config, init_from=init_from, train=train, output_dir=output_dir, eval_data=eval_data, meta=meta)
    train, held = split_by_prompt(train, config.holdout_fraction)
    if not len(train) or not len(held):
        raise ValueError(f"reward: holdout_fraction={config.holdout_fraction} leaves {len(train)} comparisons for the reward "
                         f"model and {len(held)} for the held-out one; both need some")
    holdout_dir = Path(holdout_dir) if holdout_dir is not None else output_dir / "holdout"
    if (holdout_dir / "eval.json").exists() and (holdout_dir / "config.json").exists():  # done before a crash
        held_metrics = json.loads((holdout_dir / "eval.json").read_text())
    else:
        start = holdout_init_from or config.holdout_init_from or init_from
        held_metrics = train_one(config, init_from=start, train=held, output_dir=holdout_dir, eval_data=eval_data,
                                 meta={**(meta or {}), "holdout_of": "reward", "holdout_init_from": str(start)},
                                 tokenizer_from=init_from)
    metrics = train_one(config, init_from=init_from, train=train, output_dir=output_dir, eval_data=eval_data, meta=meta,
                        extra={f"holdout_{k}": v for k, v in held_metrics.items()
                               if k in ("pairwise_accuracy", "train_comparisons", "eval_comparisons", "steps")})
    return metrics


def train_one(config: RewardStageConfig, *, init_from: str | Path, train, output_dir: Path,
              eval_data: str | Path | None = None, meta: Optional[dict] = None, extra: Optional[dict] = None,
              tokenizer_from: str | Path | None = None) -> dict:
    """One reward model on the comparisons `train` (a Dataset from `comparisons`) -> `output_dir`, its weights
    from `init_from`, its tokenizer and chat format from `tokenizer_from` (default `init_from`): the held-out
    reward model starts from the base but reads text as the policy writes it."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tokenizer, chat_format = load_chat_tokenizer(tokenizer_from or init_from, where="reward",
                                                 trust_remote_code=config.trust_remote_code)
    torch.manual_seed(config.seed)  # the fresh score head
    model = AutoModelForSequenceClassification.from_pretrained(
        str(init_from), num_labels=1, dtype=torch_dtype(config.bf16),
        trust_remote_code=config.trust_remote_code, attn_implementation=config.attn_implementation,
    )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # tokens SFT's chat format added
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id

    resume_from, resume_step = resume_point(output_dir)
    args = RewardConfig(
        **training_kwargs(config, output_dir=output_dir),
        num_train_epochs=config.num_train_epochs or 10_000,
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
        disable_dropout=True,
        dataset_num_proc=config.dataset_num_proc,
    )
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=train, processing_class=tokenizer,
        peft_config=peft_config(config.lora, task_type="SEQ_CLS"),
        callbacks=[metrics_callback(output_dir, resume_step=resume_step)],
    )
    report_trainer_rank_data(trainer, "reward")
    run_trainer(trainer, resume_from, resume_step)

    final = merged(trainer.model)
    final.eval()
    metrics: dict = {"train_comparisons": len(train), "steps": trainer.state.global_step}
    stats = evaluate(final, tokenizer, config, trainer=trainer, eval_data=eval_data, metrics=metrics, output_dir=output_dir)
    metrics.update(extra or {})
    if trainer.is_world_process_zero():
        save_checkpoint(final, tokenizer, output_dir, chat_format=chat_format,
                        meta={"stage": "reward", "config": config.model_dump(mode="json"), **(meta or {})})
        write_json_atomic(output_dir / "reward_stats.json", stats)
        write_json_atomic(output_dir / "eval.json", metrics)
        finish(output_dir, keep_resume=config.keep_resume)
    trainer.accelerator.wait_for_everyone()
    del trainer
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return metrics


def evaluate(model, tokenizer, config: RewardStageConfig, *, trainer, eval_data, metrics: dict, output_dir) -> dict:
    """Score the trained model as training saw the data; add eval.json's keys to `metrics`, return reward_stats.

    Training pairs: a seeded sample of `STATS_SAMPLE` of those RewardTrainer kept (its own token ids, pairs longer
    than `max_length` already dropped) -> `reward_stats.json` (PPO normalises rewards with it) and
    `train_pairwise_accuracy`. Held-out pairs: all of them, dropped past `max_length` as training drops them ->
    `pairwise_accuracy`, and each pair's scores in `output_dir/eval_pairs.jsonl`. Batches of one training
    micro-batch's sequences, spread over the processes."""
    import random
    import statistics

    accelerator = trainer.accelerator
    kept = trainer.train_dataset
    sample = sorted(random.Random(config.seed).sample(range(len(kept)), min(len(kept), STATS_SAMPLE)))
    rows = kept.select(sample)
    train_pairs = list(zip(rows["chosen_ids"], rows["rejected_ids"]))
    score_kwargs = dict(pad_token_id=tokenizer.pad_token_id, batch_size=2 * config.batch_size, accelerator=accelerator)
    chosen, rejected = score_pairs(model, train_pairs, **score_kwargs)
    train_scores = chosen + rejected
    metrics.update(train_comparisons_dropped=metrics["train_comparisons"] - len(kept), train_stats_sample=len(sample),
                   train_pairwise_accuracy=pairwise_accuracy(chosen, rejected)["pairwise_accuracy"])
    _report_dropped(accelerator, "training", metrics["train_comparisons_dropped"], metrics["train_comparisons"],
                    config.max_length)
    if eval_data:
        eval_rows = [dict(r) for r in comparisons(eval_data, use_margin=False)]
        encoded = [encode_pair(tokenizer, row, max_length=config.max_length) for row in eval_rows]
        kept = [(row, pair) for row, pair in zip(eval_rows, encoded) if pair is not None]
        dropped = len(eval_rows) - len(kept)
        _report_dropped(accelerator, "held-out", dropped, len(eval_rows), config.max_length)
        chosen, rejected = score_pairs(model, [pair for _, pair in kept], **score_kwargs)
        metrics.update(pairwise_accuracy(chosen, rejected), eval_comparisons_dropped=dropped)
        if accelerator.is_main_process:  # per pair, for the run's evaluation (CIs, the demo's gold comparison)
            write_jsonl(Path(output_dir) / EVAL_PAIRS,
                        ({**row, "chosen_score": c, "rejected_score": r} for (row, _), c, r in zip(kept, chosen, rejected)))
    stats = {"mean": statistics.fmean(train_scores) if train_scores else 0.0,
             "std": (statistics.pstdev(train_scores) if train_scores else 0.0) or 1.0, "count": len(train_scores)}
    metrics.update(reward_mean=stats["mean"], reward_std=stats["std"])
    return stats


def _report_dropped(accelerator, which: str, dropped: int, total: int, max_length: int) -> None:
    if dropped:
        accelerator.print(f"reward: {dropped} of {total} {which} comparisons are longer than max_length={max_length} "
                          "tokens; RewardTrainer does not train on them, so they are not scored either")
