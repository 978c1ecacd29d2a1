"""Reward model: learn labelers' comparisons -> a scalar score for (prompt, reply).

In:  the SFT checkpoint (or any causal-LM dir; a fresh 1-output score head is put on it) and
     JSONL comparisons in TRL's conversational preference form
     `{"prompt": [messages], "chosen": [assistant message], "rejected": [...], "margin"?: float}`.
Out: `output_dir/` — an `AutoModelForSequenceClassification` checkpoint (num_labels=1) with the
     tokenizer and `chat_format.json`, `metrics.jsonl`, `eval.json` (`pairwise_accuracy` on held-out comparisons, reward
     mean/std) and `reward_stats.json` (mean/std of rewards over the training replies, which PPO
     uses to normalise rewards).

The score is read at the last token of prompt + reply — the end-of-turn token.
TRL's RewardTrainer does the training (Bradley-Terry loss, margin when present).

    chatsmith stage reward recipes/tiny-cpu.yaml --out runs/demo
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from stages.checkpoint import merged, save_checkpoint
from stages.common import load_chat_tokenizer, read_jsonl, torch_dtype, write_json_atomic
from stages.config import RewardStageConfig
from stages.distributed import report_trainer_rank_data
from stages.trl_common import finish, metrics_callback, peft_config, resume_point, training_kwargs


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


def score(model, tokenizer, conversations: list[list[dict]], *, batch_size: int = 32) -> list[float]:
    """Reward of each full conversation (prompt + reply), read at its last token."""
    import torch

    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    scores: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            scores.extend(model(**enc).logits[:, 0].float().tolist())
    model.train(was_training)
    return scores


def score_pairs(model, tokenizer, rows: list[dict], *, batch_size: int = 32) -> tuple[list[float], list[float]]:
    """Rewards of each comparison's chosen and rejected conversation."""
    chosen = score(model, tokenizer, [r["prompt"] + r["chosen"] for r in rows], batch_size=batch_size)
    rejected = score(model, tokenizer, [r["prompt"] + r["rejected"] for r in rows], batch_size=batch_size)
    return chosen, rejected


def pairwise_accuracy(chosen: list[float], rejected: list[float]) -> dict:
    wins = [c > r for c, r in zip(chosen, rejected)]
    return {"pairwise_accuracy": sum(wins) / max(1, len(wins)), "eval_comparisons": len(wins),
            "eval_margin_mean": sum(c - r for c, r in zip(chosen, rejected)) / max(1, len(wins))}


def run(config: RewardStageConfig, *, init_from: str | Path, train_data: str | Path, output_dir: str | Path,
        eval_data: str | Path | None = None, meta: Optional[dict] = None) -> dict:
    import statistics

    import torch
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    output_dir = Path(output_dir)
    tokenizer, chat_format = load_chat_tokenizer(init_from, where="reward", trust_remote_code=config.trust_remote_code)
    torch.manual_seed(config.seed)  # the fresh score head
    model = AutoModelForSequenceClassification.from_pretrained(
        str(init_from), num_labels=1, dtype=torch_dtype(config.bf16),
        trust_remote_code=config.trust_remote_code, attn_implementation=config.attn_implementation,
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id

    resume_from, resume_step = resume_point(output_dir)
    args = RewardConfig(
        **training_kwargs(config, output_dir=output_dir),
        num_train_epochs=config.num_train_epochs or 10_000,
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
        disable_dropout=True,
    )
    train = comparisons(train_data, use_margin=config.use_margin)
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=train, processing_class=tokenizer,
        peft_config=peft_config(config.lora, task_type="SEQ_CLS"),
        callbacks=[metrics_callback(output_dir, resume_step=resume_step)],
    )
    report_trainer_rank_data(trainer, "reward")
    trainer.train(resume_from_checkpoint=resume_from)

    final = merged(trainer.model)
    final.eval()
    metrics: dict = {"train_comparisons": len(train), "steps": trainer.state.global_step}
    train_rows = [dict(r) for r in train.select(range(min(len(train), 512)))]
    chosen, rejected = score_pairs(final, tokenizer, train_rows)
    train_scores = chosen + rejected
    stats = {"mean": statistics.fmean(train_scores), "std": statistics.pstdev(train_scores) or 1.0,
             "count": len(train_scores)}
    metrics["train_pairwise_accuracy"] = pairwise_accuracy(chosen, rejected)["pairwise_accuracy"]
    if eval_data:
        eval_rows = [dict(r) for r in comparisons(eval_data, use_margin=False)]
        metrics.update(pairwise_accuracy(*score_pairs(final, tokenizer, eval_rows)))
    metrics.update(reward_mean=stats["mean"], reward_std=stats["std"])
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
