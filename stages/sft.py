"""SFT: fine-tune a base model on conversations -> an assistant that answers in the chat format.

In:  a causal-LM checkpoint (the pretrain output or any local HF dir), JSONL conversations
     `{"messages": [{"role": ..., "content": ...}, ...]}` (demonstrations and rewrites).
Out: `output_dir/` — a HF checkpoint with the tokenizer, its chat template and `chat_format.json`,
     `metrics.jsonl`, `eval.json` (`eval_loss` on held-out conversations; the runner adds the behaviour figures).

The checkpoint's own chat template is kept (`stages.chat_format.prepare_tokenizer`: the run's prepared
tokenizer when `init_from` is the pretrain output, a base checkpoint's made ready here otherwise). Conversations
are tokenized here with a mask on each assistant reply and its end-of-turn token (`tokenize_conversations`), and
TRL's SFTTrainer takes the loss there only: the model learns to answer, then to stop. Generation stops on the
end-of-turn token and the document EOS (`configure_generation`, saved in generation_config.json).
LoRA is `config.lora.enabled`; the adapter is merged into the saved weights.

    chatsmith stage sft recipes/tiny-cpu.yaml --out runs/demo
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

from stages.chat_format import (ChatFormat, ChatFormatError, check_tokenizer, configure_generation, prepare_tokenizer,
                                 tokenize_conversations)
from stages.checkpoint import merged, save_checkpoint
from stages.common import read_jsonl, torch_dtype, write_json_atomic
from stages.config import SFTStageConfig
from stages.distributed import report_trainer_rank_data
from stages.trl_common import finish, metrics_callback, peft_config, resume_point, run_trainer, training_kwargs


def conversations(path: str | Path, tokenizer, chat_format: ChatFormat, *, max_length: int,
                  num_proc: Optional[int] = None):
    """Conversations as a `datasets.Dataset` of `input_ids` and `assistant_masks` (TRL builds the labels from
    the masks), cut to `max_length` tokens; a conversation left with no assistant token is dropped. With
    `num_proc` > 1 the masks are computed by that many processes (`datasets.map`), with the same result."""
    from datasets import Dataset

    rows = read_jsonl(path)
    for i, row in enumerate(rows):
        messages = row.get("messages")
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError(f"{path}:{i + 1}: a conversation needs 'messages' ending with an assistant turn")
    messages = [[{"role": m["role"], "content": m["content"]} for m in r["messages"]] for r in rows]
    del rows
    try:
        if num_proc and num_proc > 1:
            dataset = Dataset.from_dict({"messages": messages}).map(
                _tokenize_batch, batched=True, batch_size=512, with_indices=True, num_proc=min(num_proc, len(messages)),
                remove_columns=["messages"], desc="assistant masks",
                fn_kwargs={"tokenizer": tokenizer, "chat_format": chat_format, "max_length": max_length})
            dropped = len(messages) - len(dataset)
            if dropped:
                warnings.warn(f"{dropped} conversation(s) had no assistant token within max_length={max_length}; dropped")
        else:
            dataset = Dataset.from_list(tokenize_conversations(tokenizer, messages, max_length=max_length,
                                                               chat_format=chat_format))
    except ChatFormatError as error:  # "conversation i" counts from 0: line i + 1 of the file
        raise ChatFormatError(f"{path}: {error}") from error
    if not len(dataset):
        raise ValueError(f"{path}: no conversation has an assistant token within max_length={max_length}")
    return dataset


def _tokenize_batch(batch: dict, indices: list[int], *, tokenizer, chat_format: ChatFormat, max_length: int) -> dict:
    """`datasets.map` worker: one batch of conversations -> input_ids and assistant_masks (dropped rows left out);
    a chat-format error names the conversation by its index in the file."""
    out = {"input_ids": [], "assistant_masks": []}
    for index, messages in zip(indices, batch["messages"]):
        try:
            with warnings.catch_warnings():  # a dropped row is counted once, by the caller
                warnings.simplefilter("ignore")
                (row,) = tokenize_conversations(tokenizer, [messages], max_length=max_length, chat_format=chat_format) or [None]
        except ChatFormatError as error:
            raise ChatFormatError(str(error).replace("conversation 0:", f"conversation {index}:", 1)) from None
        if row is not None:
            out["input_ids"].append(row["input_ids"])
            out["assistant_masks"].append(row["assistant_masks"])
    return out


def load_model(config: SFTStageConfig, init_from: str | Path, tokenizer, chat_format: ChatFormat):
    """The model to fine-tune, with embeddings for tokens the chat format added and generation stopping on its
    stop tokens (the token SFT teaches is one generation stops on)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(init_from), dtype=torch_dtype(config.bf16), trust_remote_code=config.trust_remote_code,
        attn_implementation=config.attn_implementation,
    )
    # Only when tokens were added: real checkpoints often have spare embedding rows past len(tokenizer).
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    configure_generation(model, chat_format)
    return model


def run(config: SFTStageConfig, *, init_from: str | Path, train_data: str | Path, output_dir: str | Path,
        eval_data: str | Path | None = None, meta: Optional[dict] = None) -> dict:
    import torch
    from trl import SFTConfig, SFTTrainer

    output_dir = Path(output_dir)
    # The run's prepared tokenizer (init_from/chat_format.json), or a base checkpoint's made ready the same way.
    tokenizer, chat_format = prepare_tokenizer(init_from, trust_remote_code=config.trust_remote_code)
    model = load_model(config, init_from, tokenizer, chat_format)

    resume_from, resume_step = resume_point(output_dir)
    args = SFTConfig(
        **training_kwargs(config, output_dir=output_dir),
        num_train_epochs=config.num_train_epochs or 10_000,  # max_steps decides unless epochs are set
        max_length=config.max_length,
        assistant_only_loss=False,  # the masks are the dataset's `assistant_masks` column; TRL applies them
        packing=config.packing,
        dataset_num_proc=config.dataset_num_proc,
    )
    train = conversations(train_data, tokenizer, chat_format, max_length=config.max_length, num_proc=config.dataset_num_proc)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=conversations(eval_data, tokenizer, chat_format, max_length=config.max_length,
                                   num_proc=config.dataset_num_proc) if eval_data else None,
        processing_class=tokenizer,
        peft_config=peft_config(config.lora, task_type="CAUSAL_LM"),
        callbacks=[metrics_callback(output_dir, resume_step=resume_step)],
    )
    report_trainer_rank_data(trainer, "sft")
    run_trainer(trainer, resume_from, resume_step)

    metrics: dict = {"train_conversations": len(train), "steps": trainer.state.global_step}
    if eval_data:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    if trainer.is_world_process_zero():
        final = merged(trainer.model)
        check_tokenizer(tokenizer, chat_format, where="sft output")
        save_checkpoint(final, tokenizer, output_dir, chat_format=chat_format,
                        meta={"stage": "sft", "config": config.model_dump(mode="json"), **(meta or {})})
        write_json_atomic(output_dir / "eval.json", metrics)
        finish(output_dir, keep_resume=config.keep_resume)
    trainer.accelerator.wait_for_everyone()
    del trainer
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return metrics
