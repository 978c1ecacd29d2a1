"""Pretrain: next-token prediction on packed documents -> a base model that continues text.

In:  the corpus as token shards (`corpus.json`: cache entries made by `stages.data.tokenize_sources`, e.g.
     by `chatsmith data tokenize`; tokenized here by the main process when missing), a tokenizer dir
     (chat template, chat_format.json), and either a model config (random init; any HF causal-LM
     architecture, Llama by default) or `init_from` (continued pretraining from a local checkpoint).
Out: `output_dir/` — a HF checkpoint (config.json, model.safetensors, tokenizer, generation_config.json),
     `metrics.jsonl` (step, loss, lr, tokens_per_s, tokens from each source, time_s), `eval.json`
     (eval_loss, bits_per_byte on held-out documents, at most `eval_batches` batches).

The shards are read memory-mapped: memory stays flat whatever the corpus size. Each source's documents
are joined with the document EOS (`chat_format.json`'s, e.g. `<|endoftext|>`) and cut into full `seq_len`
windows: no padding. Each step's global batch (windows drawn from the sources by their mixture weights)
is a function of (seed, step) alone (`stages.data.stream.TrainSampler`) and each rank takes its slice, so
an interrupted run resumes exactly from `resume/` (weights, optimizer, scheduler, RNG, step) without
reading the sources again. Held-out documents were chosen by a hash of their content when tokenized.

    chatsmith stage pretrain recipes/tiny-cpu.yaml --out runs/demo
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

from stages.checkpoint import ResumeState, make_scheduler, save_checkpoint
from stages.common import MetricsLog, load_chat_tokenizer, torch_dtype, write_json_atomic
from stages.config import PretrainConfig
from stages.data.shards import ShardSet, tokenize_sources
from stages.data.sources import Source
from stages.data.stream import TrainSampler, eval_windows
from stages.distributed import full_state_dict, make_accelerator, report_rank_data, set_deepspeed_micro_batch


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
    """Mean next-token loss over the held-out windows, and bits per UTF-8 byte of their text
    (`bytes_per_token`: the held-out text's bytes over its token count, EOS included)."""
    import torch

    sequences = torch.from_numpy(sequences)
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


def run(config: PretrainConfig, *, tokenizer_dir: str | Path, corpus: str | Path, output_dir: str | Path,
        meta: Optional[dict] = None) -> dict:
    import torch

    output_dir = Path(output_dir)
    accelerator = make_accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                                   report_to=config.report_to, output_dir=output_dir)
    tokenizer, chat_format = load_chat_tokenizer(tokenizer_dir, where="pretrain", trust_remote_code=config.trust_remote_code)
    shards = open_corpus(corpus, tokenizer_dir, accelerator)
    global_batch = config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    sampler = TrainSampler(shards, seq_len=config.seq_len, global_batch=global_batch, seed=config.seed)
    held_out = eval_windows(shards, seq_len=config.seq_len, max_windows=config.eval_batches * config.batch_size)

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
    batches = RankBatches(sampler, config, accelerator)
    windows = int(sampler.windows.sum())
    accelerator.print(
        f"pretrain: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {windows} sequences "
        f"x {config.seq_len} tokens in {len(shards.sources)} source(s), global batch {global_batch}, {config.max_steps} steps "
        f"({config.max_steps * global_batch / windows:.1f} epochs)"
    )
    report_rank_data("pretrain", accelerator, batches.micro_batch(step, 0),
                     rows=lambda: batches.sampler.batch_for_step(step, **batches.slice).reshape(-1, config.seq_len).tolist())

    log = MetricsLog(output_dir / "metrics.jsonl", resume_step=step, enabled=accelerator.is_main_process, accelerator=accelerator)
    train_loop(model, optimizer, scheduler, batches, config=config, accelerator=accelerator, step=step, log=log, resume=resume)
    log.close()  # finishes the trackers (accelerate's end_training would also end the process group)

    metrics = evaluate(model, held_out.tokens, batch_size=config.batch_size, bytes_per_token=held_out.bytes_per_token,
                       accelerator=accelerator)
    metrics.update(train_sequences=windows, steps=config.max_steps, epochs=config.max_steps * global_batch / windows,
                   tokens_by_source=sampler.tokens_by_source(config.max_steps))
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


def open_corpus(corpus: str | Path, tokenizer_dir: str | Path, accelerator):
    """The token shards `corpus.json` names. When they are missing (a cleaned cache), the main process
    tokenizes the sources it lists while the others wait: the ranks share one tokenization."""
    corpus = json.loads(Path(corpus).read_text())
    missing = [key for key in corpus["keys"] if not (Path(corpus["cache_dir"]) / key / "summary.json").exists()]
    if missing and accelerator.is_main_process:
        tokenize_sources(corpus["sources"], tokenizer_dir, corpus["cache_dir"], eos_token_id=corpus["eos_token_id"])
    accelerator.wait_for_everyone()
    return ShardSet.open(corpus["cache_dir"], corpus["keys"], sources=[Source(**s) for s in corpus["sources"]])


class RankBatches:
    """This rank's micro-batches of each step, as tensors on the device (`TrainSampler` decides the
    global batch from (seed, step); each rank takes its own disjoint slice)."""

    def __init__(self, sampler: TrainSampler, config: PretrainConfig, accelerator):
        self.sampler, self.device = sampler, accelerator.device
        self.slice = dict(rank=accelerator.process_index, world=accelerator.num_processes, per_rank=config.batch_size,
                          grad_accum=config.gradient_accumulation_steps)
        self._step, self._tokens = None, None

    def micro_batch(self, step: int, micro: int):
        import torch

        if step != self._step:
            self._step, self._tokens = step, torch.from_numpy(self.sampler.batch_for_step(step, **self.slice))
        return self._tokens[micro].to(self.device)


def train_loop(model, optimizer, scheduler, batches: RankBatches, *, config: PretrainConfig, accelerator, step: int,
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
                    **{f"tokens/{label}": count for label, count in batches.sampler.tokens_by_source(step).items()})
            progress.set_postfix(loss=f"{mean_loss:.3f}")
            running_loss, running_micro, running_tokens, window_start = 0.0, 0, 0, time.perf_counter()
        if save_now:
            resume.save(model=model, optimizer=optimizer, scheduler=scheduler, counters={"step": step})
    progress.close()
