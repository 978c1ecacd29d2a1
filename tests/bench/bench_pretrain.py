"""Pretraining throughput: chatsmith's pretrain stage against a bare PyTorch loop.

Same model (the demo's 2M-parameter Llama), same packed data, same batch (32 x 128), same
optimizer and schedule, in the same process, alternating A/B/A/B so machine noise hits both.
Prints tokens/s of each and the ratio (chatsmith / bare); the aim is overhead <= 10% (ratio >= 0.90).

    .venv/bin/python tests/bench/bench_pretrain.py [--steps 60] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def make_data(root: Path):
    from pipeline.demo.config import WorldConfig
    from pipeline.demo.world import World
    from stages.common import write_jsonl
    from stages.tokenizer import train_tokenizer

    docs = World.build(WorldConfig()).pretrain_documents()
    tokenizer = train_tokenizer(docs, vocab_size=1024)
    tokenizer.save_pretrained(root / "tokenizer")
    write_jsonl(root / "docs.jsonl", ({"text": d} for d in docs))
    return tokenizer, docs


def chatsmith_run(root: Path, config, run_id: int) -> float:
    from stages import pretrain

    out = root / f"chatsmith-{run_id}"
    pretrain.run(config, tokenizer_dir=root / "tokenizer", documents=root / "docs.jsonl", output_dir=out)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    # steady state: every logged window but the first (warm-up, allocator, first-call overheads)
    windows = rows[1:]
    tokens = sum(r["tokens_per_s"] * (r["time_s"] - p["time_s"]) for p, r in zip(rows, windows))
    return tokens / (windows[-1]["time_s"] - rows[0]["time_s"])


def bare_run(tokenizer, docs, config) -> float:
    """The loop a researcher would write by hand: no accelerate, no logging, no checkpointing."""
    import torch

    from stages.pretrain import build_model, make_scheduler, pack, split_documents

    train_docs, _ = split_documents(docs, eval_fraction=config.eval_fraction, seed=config.seed)
    data, _ = pack(tokenizer, train_docs, config.seq_len, document_eos_id=tokenizer.eos_token_id)  # chatsmith: EOS = document EOS
    model = build_model(config, tokenizer)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    scheduler = make_scheduler(optimizer, config, config.max_steps)
    generator = torch.Generator().manual_seed(0)
    steps_per_epoch = len(data) // config.batch_size
    start = None
    for step in range(config.max_steps):
        if step == config.logging_steps:  # skip the same warm-up window chatsmith's figure skips
            start = time.perf_counter()
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(data), generator=generator)
        i = step % steps_per_epoch
        batch = data[order[i * config.batch_size : (i + 1) * config.batch_size]]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    elapsed = time.perf_counter() - start
    return (config.max_steps - config.logging_steps) * config.batch_size * config.seq_len / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from pipeline.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "tiny-cpu.yaml")
    config = recipe.stages.pretrain.model_copy(update={"max_steps": args.steps, "save_steps": 10_000, "logging_steps": 10})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer, docs = make_data(root)
        ours, bare = [], []
        for r in range(args.repeats):
            ours.append(chatsmith_run(root, config, r))
            bare.append(bare_run(tokenizer, docs, config))
    a, b = statistics.median(ours), statistics.median(bare)
    print(f"pretrain throughput, {config.batch_size}x{config.seq_len} tokens/step, {args.steps} steps, {args.repeats} repeats (median)")
    print(f"  chatsmith pretrain stage : {a:10.0f} tokens/s   runs: {[round(x) for x in ours]}")
    print(f"  bare PyTorch loop        : {b:10.0f} tokens/s   runs: {[round(x) for x in bare]}")
    print(f"  ratio chatsmith / bare   : {a / b:10.3f}   (overhead {100 * (1 - a / b):+.1f}%; aim <= 10%)")


if __name__ == "__main__":
    main()
