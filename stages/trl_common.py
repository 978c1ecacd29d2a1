"""What the stages built on TRL trainers (SFT, reward, GRPO/RLOO/DPO) share: the mapping from
chatsmith's `TrainCommon` to TrainingArguments, resume from the Trainer's `resume/checkpoint-N`,
metrics.jsonl, and the LoRA option. (The stages' own loops resume through `stages.checkpoint`.)"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from stages.checkpoint import SCHEDULES, after_resume_save
from stages.common import MetricsLog
from stages.config import LoraConfig, TrainCommon
from stages.distributed import tracking_environment


def training_kwargs(config: TrainCommon, *, output_dir: Path) -> dict[str, Any]:
    """Keyword arguments for a TRL `*Config` (a TrainingArguments subclass) from chatsmith's config.

    `report_to` goes to the Trainer's own tracker callbacks, pointed at `output_dir/tracking/` (its `resume/`
    is removed when the stage ends) by `tracking_environment`, the run named after the stage."""
    import torch

    on_gpu = torch.cuda.is_available()
    if config.report_to:
        tracking_environment(output_dir)
    return dict(
        output_dir=str(output_dir / "resume"),
        max_steps=config.max_steps,
        save_steps=config.save_steps,
        save_strategy="steps",
        save_total_limit=1,
        save_only_model=False,
        logging_steps=config.logging_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=SCHEDULES[config.lr_scheduler],
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        seed=config.seed,
        data_seed=config.seed,
        bf16=bool(config.bf16 and on_gpu),
        use_cpu=not on_gpu,
        report_to=list(config.report_to) or "none",
        run_name=Path(output_dir).name,
        disable_tqdm=False,
        dataloader_num_workers=0,
        eval_strategy="no",
        # Always set: TRL's SFTConfig and RewardConfig default to checkpointing (a third more compute per step).
        activation_checkpointing=config.gradient_checkpointing,
    )


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete `resume/checkpoint-N`. The Trainer writes `trainer_state.json` last, so
    a directory without it is a save that a kill cut short: skipped, the previous one is used."""
    resume = output_dir / "resume"
    if not resume.is_dir():
        return None
    complete = [p for p in resume.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").exists()]
    return str(max(complete, key=lambda p: int(p.name.split("-")[-1]))) if complete else None


def resume_point(output_dir: Path) -> tuple[str | None, int]:
    """The checkpoint to resume from (None to start fresh) and its step."""
    checkpoint = last_checkpoint(output_dir)
    return checkpoint, int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0


def run_trainer(trainer, resume_from: str | None, resume_step: int) -> None:
    """`trainer.train`, resuming from `resume_from` (step `resume_step`). A stage killed after the Trainer's last save
    (step == max_steps) but before its own end is not trained again: the Trainer, resumed at max_steps, takes one more
    optimizer step before it checks max_steps (transformers 5.23), which is an update the uninterrupted run never made.
    Its weights and state are loaded from the checkpoint instead. Under DeepSpeed the engine that loads a checkpoint is
    made inside `train`, so there the Trainer's behaviour stands (one extra step at the end)."""
    finished = resume_from is not None and 0 < trainer.args.max_steps <= resume_step
    if finished and not trainer.is_deepspeed_enabled:
        from transformers.trainer_callback import TrainerState

        trainer._load_from_checkpoint(resume_from)
        trainer.state = TrainerState.load_from_json(str(Path(resume_from) / "trainer_state.json"))
        return
    trainer.train(resume_from_checkpoint=resume_from)


def metrics_callback(output_dir: Path, *, resume_step: int):
    """A TrainerCallback that mirrors the trainer's log lines into `metrics.jsonl`, and counts the Trainer's saves of
    `resume/checkpoint-N` for the tests' kill point (`stages.checkpoint.after_resume_save`)."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self):
            self.log = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.log = MetricsLog(output_dir / "metrics.jsonl", resume_step=resume_step, enabled=state.is_world_process_zero)
            if resume_step and state.is_world_process_zero:
                print(f"{output_dir.name}: resuming from step {resume_step} ({output_dir / 'resume'})", flush=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.log is None or not logs:
                return
            values = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and k not in {"step"}}
            if "train_runtime" in values:  # the trainer's end-of-training summary, not a step
                return
            self.log.log(state.global_step, **values)

        def on_save(self, args, state, control, **kwargs):
            from accelerate import PartialState

            PartialState().wait_for_everyone()  # every rank's share of checkpoint-N (optimizer shards, RNG) is written
            after_resume_save()

    return MetricsCallback()


def peft_config(lora: LoraConfig, *, task_type: str):
    if not lora.enabled:
        return None
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), task_type=task_type,
    )


def finish(output_dir: Path, *, keep_resume: bool) -> None:
    if not keep_resume:
        shutil.rmtree(output_dir / "resume", ignore_errors=True)
