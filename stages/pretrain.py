"""Pretrain: next-token prediction on packed documents -> a base model that continues text.

In:  documents (JSONL of `{"text": ...}`), a tokenizer dir (chat template, EOS, chat_format.json), and either a
     model config (random init; any HF causal-LM architecture, Llama by default) or `init_from`
     (continued pretraining from a local checkpoint).
Out: `output_dir/` — a HF checkpoint (config.json, model.safetensors, tokenizer, generation_config.json),
     `metrics.jsonl` (step, loss, lr, tokens_per_s, time_s), `eval.json` (eval_loss, bits_per_byte).

Documents are joined with the document EOS (`chat_format.json`'s, e.g. `<|endoftext|>`; the tokenizer's EOS is
the end-of-turn token) and cut into full `seq_len` sequences: no padding waste.
A seeded permutation per epoch fixes the data order, so an interrupted run resumes exactly from
`resume/` (weights, optimizer, scheduler, RNG, step).

    chatsmith stage pretrain recipes/tiny-cpu.yaml --out runs/demo
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Optional

from stages.checkpoint import ResumeState, make_scheduler, save_checkpoint
from stages.common import MetricsLog, load_chat_tokenizer, read_jsonl, torch_dtype, write_json_atomic
from stages.config import PretrainConfig
from stages.distributed import full_state_dict, make_accelerator, report_rank_data, set_deepspeed_micro_batch


def split_documents(documents: list[str], *, eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(documents) * eval_fraction))
    return [documents[i] for i in order[n_eval:]], [documents[i] for i in order[:n_eval]]


def pack(tokenizer, documents: list[str], seq_len: int, *, document_eos_id: int):
    """Token ids of all documents, each followed by the document EOS, as a [N, seq_len] tensor (tail
    dropped), and the length of the whole token stream before the tail was dropped."""
    import torch

    ids: list[int] = []
    for encoded in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(document_eos_id)
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"not enough text for one sequence of {seq_len} tokens ({len(ids)} tokens)")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len), len(ids)


def build_model(config: PretrainConfig, tokenizer):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    dtype = torch_dtype(config.bf16)
    if config.init_from:
        model = AutoModelForCausalLM.from_pretrained(
            config.init_from, trust_remote_code=config.trust_remote_code, dtype=dtype,
            attn_implementation=config.attn_implementation,
        )
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
    else:
        arch = config.model
        model_config = AutoConfig.for_model(
            arch.architecture,
            vocab_size=len(tokenizer),
            hidden_size=arch.hidden_size,
            intermediate_size=arch.intermediate_size,
            num_hidden_layers=arch.num_hidden_layers,
            num_attention_heads=arch.num_attention_heads,
            num_key_value_heads=arch.num_key_value_heads or arch.num_attention_heads,
            max_position_embeddings=arch.max_position_embeddings,
            tie_word_embeddings=arch.tie_word_embeddings,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype, attn_implementation=config.attn_implementation)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def evaluate(model, sequences, *, batch_size: int, bytes_per_token: float, accelerator) -> dict:
    """Mean next-token loss over all held-out sequences, and bits per UTF-8 byte of their text
    (`bytes_per_token`: the held-out text's bytes over its token count)."""
    import torch

    model.eval()
    total_nats, total_tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size].to(accelerator.device)
            loss = model(input_ids=batch, labels=batch).loss
            n = batch.numel() - batch.shape[0]  # each row predicts seq_len - 1 tokens
            total_nats += loss.item() * n
            total_tokens += n
    model.train()
    eval_loss = total_nats / total_tokens
    covered_bytes = bytes_per_token * total_tokens
    return {"eval_loss": eval_loss, "bits_per_byte": total_nats / math.log(2) / covered_bytes, "eval_tokens": total_tokens}


def run(config: PretrainConfig, *, tokenizer_dir: str | Path, documents: str | Path, output_dir: str | Path,
        meta: Optional[dict] = None) -> dict:
    import torch

    output_dir = Path(output_dir)
    accelerator = make_accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps)
    tokenizer, chat_format = load_chat_tokenizer(tokenizer_dir, where="pretrain", trust_remote_code=config.trust_remote_code)
    # chatsmith's trained tokenizers end documents and turns with the same token; a base's format may not
    document_eos_id = chat_format.document_eos_id if chat_format.document_eos_id is not None else chat_format.end_of_turn_id

    texts = [row["text"] for row in read_jsonl(documents)]
    train_texts, eval_texts = split_documents(texts, eval_fraction=config.eval_fraction, seed=config.seed)
    train_seqs, _ = pack(tokenizer, train_texts, config.seq_len, document_eos_id=document_eos_id)
    eval_seqs, eval_stream_tokens = pack(tokenizer, eval_texts, config.seq_len, document_eos_id=document_eos_id)
    bytes_per_token = sum(len(t.encode("utf-8")) for t in eval_texts) / eval_stream_tokens

    model = build_model(config, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    scheduler = make_scheduler(optimizer, config, config.max_steps)
    set_deepspeed_micro_batch(accelerator, micro_batch_size=config.batch_size, max_grad_norm=config.max_grad_norm)
    model, optimizer = accelerator.prepare(model, optimizer)

    resume = ResumeState(accelerator, output_dir / "resume")
    counters = resume.load(model=model, optimizer=optimizer, scheduler=scheduler)
    step = counters["step"] if counters else 0
    if counters:
        accelerator.print(f"pretrain: resuming from step {step} ({resume.dir})")
    batches = GlobalBatches(train_seqs, config, accelerator)
    accelerator.print(
        f"pretrain: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {len(train_seqs)} sequences "
        f"x {config.seq_len} tokens, global batch {batches.global_size}, {config.max_steps} steps "
        f"({config.max_steps / batches.steps_per_epoch:.1f} epochs)"
    )
    report_rank_data("pretrain", accelerator, batches.micro_batch(step, 0))

    log = MetricsLog(output_dir / "metrics.jsonl", resume_step=step, enabled=accelerator.is_main_process)
    train_loop(model, optimizer, scheduler, batches, config=config, accelerator=accelerator, step=step, log=log, resume=resume)

    metrics = evaluate(model, eval_seqs, batch_size=config.batch_size, bytes_per_token=bytes_per_token, accelerator=accelerator)
    metrics.update(train_sequences=len(train_seqs), steps=config.max_steps, epochs=config.max_steps / batches.steps_per_epoch)
    accelerator.wait_for_everyone()
    weights = full_state_dict(accelerator, model)  # whole on the main process even when ZeRO-3 shards them
    if accelerator.is_main_process:
        save_checkpoint(accelerator.unwrap_model(model), tokenizer, output_dir, state_dict=weights, chat_format=chat_format,
                        meta={"stage": "pretrain", "config": config.model_dump(mode="json"), **(meta or {})})
        write_json_atomic(output_dir / "eval.json", metrics)
    if not config.keep_resume:
        resume.remove()
    accelerator.wait_for_everyone()
    return metrics


class GlobalBatches:
    """The data order: a seeded permutation of the packed sequences per epoch, cut into global batches of
    batch_size x processes x gradient_accumulation_steps; each rank takes its own slice of each. A pure
    function of (seed, step), so resuming needs only the step."""

    def __init__(self, sequences, config: PretrainConfig, accelerator):
        self.sequences, self.seed = sequences, config.seed
        self.per_rank, self.world, self.rank = config.batch_size, accelerator.num_processes, accelerator.process_index
        self.global_size = self.per_rank * self.world * config.gradient_accumulation_steps
        self.steps_per_epoch = max(1, len(sequences) // self.global_size)
        self.device = accelerator.device
        self._epoch, self._order = None, None

    def micro_batch(self, step: int, micro: int):
        import torch

        epoch, index_in_epoch = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.sequences), generator=generator)
        batch_ids = self._order[index_in_epoch * self.global_size : (index_in_epoch + 1) * self.global_size]
        offset = (micro * self.world + self.rank) * self.per_rank
        return self.sequences[batch_ids[offset : offset + self.per_rank]].to(self.device)


def train_loop(model, optimizer, scheduler, batches: GlobalBatches, *, config: PretrainConfig, accelerator, step: int,
               log: MetricsLog, resume: ResumeState) -> None:
    import torch
    from tqdm.auto import tqdm

    model.train()
    progress = tqdm(total=config.max_steps, initial=step, desc="pretrain", disable=not accelerator.is_main_process)
    running_loss, running_micro, running_tokens = 0.0, 0, 0
    window_start = time.perf_counter()
    while step < config.max_steps:
        for micro in range(config.gradient_accumulation_steps):
            batch = batches.micro_batch(step, micro)
            with accelerator.accumulate(model):
                loss = model(input_ids=batch, labels=batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running_loss += loss.detach()
            running_micro += 1
            running_tokens += batch.numel() * accelerator.num_processes
        scheduler.step()
        step += 1
        progress.update(1)
        log_now = step % config.logging_steps == 0 or step == config.max_steps
        save_now = step % config.save_steps == 0 and step < config.max_steps
        # Checked when logging or saving, not every step (each check is a device sync): a NaN
        # anywhere in the window poisons the running sum, and no save is written after it.
        if (log_now or save_now) and not torch.isfinite(running_loss):
            raise FloatingPointError(f"pretrain: non-finite loss before step {step}; last good save is in {resume.dir}")
        if log_now:
            # The global batch's loss: the mean over processes (a collective; every rank logs in step).
            mean_loss = (accelerator.reduce(running_loss, reduction="mean") / running_micro).item()
            elapsed = time.perf_counter() - window_start
            log.log(step, loss=mean_loss, lr=scheduler.get_last_lr()[0], tokens_per_s=running_tokens / elapsed,
                    epoch=step / batches.steps_per_epoch)
            progress.set_postfix(loss=f"{mean_loss:.3f}")
            running_loss, running_micro, running_tokens, window_start = 0.0, 0, 0, time.perf_counter()
        if save_now:
            resume.save(model=model, optimizer=optimizer, scheduler=scheduler, counters={"step": step})
    progress.close()
