"""SFT: fine-tune a base model on conversations -> an assistant that answers in the chat format.

In:  a causal-LM checkpoint (the pretrain output or any local HF dir), JSONL conversations
     `{"messages": [{"role": ..., "content": ...}, ...]}` (demonstrations and rewrites).
Out: `output_dir/` — a HF checkpoint with the tokenizer and chat template, `metrics.jsonl`, `eval.json`
     (`eval_loss` on held-out conversations; the runner adds the behaviour figures).

TRL's SFTTrainer with `assistant_only_loss`: the loss covers the assistant's tokens only, and the
end-of-turn token sits inside the template's generation block, so the model learns to stop.
LoRA is `config.lora.enabled`; the adapter is merged into the saved weights.

    chatsmith stage sft recipes/tiny-cpu.yaml --out runs/demo
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from stages.checkpoint import merged, save_checkpoint
from stages.common import check_chat_format, load_tokenizer, read_jsonl, torch_dtype, write_json_atomic
from stages.config import SFTStageConfig
from stages.distributed import report_trainer_rank_data
from stages.trl_common import finish, metrics_callback, peft_config, resume_point, training_kwargs


def conversations(path: str | Path):
    """Conversations as a `datasets.Dataset` with only the `messages` column TRL reads."""
    from datasets import Dataset

    rows = read_jsonl(path)
    for i, row in enumerate(rows):
        messages = row.get("messages")
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError(f"{path}:{i + 1}: a conversation needs 'messages' ending with an assistant turn")
    return Dataset.from_list([{"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]} for r in rows])


def run(config: SFTStageConfig, *, init_from: str | Path, train_data: str | Path, output_dir: str | Path,
        eval_data: str | Path | None = None, meta: Optional[dict] = None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    output_dir = Path(output_dir)
    tokenizer = load_tokenizer(init_from, where="sft", trust_remote_code=config.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        str(init_from), dtype=torch_dtype(config.bf16), trust_remote_code=config.trust_remote_code,
        attn_implementation=config.attn_implementation,
    )
    if model.config.eos_token_id != tokenizer.eos_token_id:
        # The parent was pretrained with another EOS: the token SFT teaches must be the one generation stops on.
        model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    resume_from, resume_step = resume_point(output_dir)
    args = SFTConfig(
        **training_kwargs(config, output_dir=output_dir),
        num_train_epochs=config.num_train_epochs or 10_000,  # max_steps decides unless epochs are set
        max_length=config.max_length,
        assistant_only_loss=True,
        packing=config.packing,
        dataset_num_proc=None,
    )
    train = conversations(train_data)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=conversations(eval_data) if eval_data else None,
        processing_class=tokenizer,
        peft_config=peft_config(config.lora, task_type="CAUSAL_LM"),
        callbacks=[metrics_callback(output_dir, resume_step=resume_step)],
    )
    report_trainer_rank_data(trainer, "sft")
    trainer.train(resume_from_checkpoint=resume_from)

    metrics: dict = {"train_conversations": len(train), "steps": trainer.state.global_step}
    if eval_data:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    if trainer.is_world_process_zero():
        final = merged(trainer.model)
        check_chat_format(tokenizer, where="sft output")
        save_checkpoint(final, tokenizer, output_dir,
                        meta={"stage": "sft", "config": config.model_dump(mode="json"), **(meta or {})})
        write_json_atomic(output_dir / "eval.json", metrics)
        finish(output_dir, keep_resume=config.keep_resume)
    trainer.accelerator.wait_for_everyone()
    del trainer
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return metrics
