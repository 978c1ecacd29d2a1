"""Pretraining throughput: chatsmith's pretrain stage (streaming memory-mapped token shards) against a bare
PyTorch loop over the same text packed into one in-memory tensor (the way pretraining read data before the
shards, and the way a researcher would write it by hand).

Same model (the demo's 2M-parameter Llama), same text, same batch (32 x 128), same optimizer and
schedule, in the same process, alternating A/B/A/B so machine noise hits both; the median of the runs.
Prints tokens/s of each and the ratio (chatsmith / bare); the aim is ratio >= 0.97.

    .venv/bin/python tests/bench/bench_pretrain.py [--steps 60] [--repeats 5]
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
    """The demo world's documents, a trained tokenizer, and the documents' token shards (corpus.json)."""
    from pipeline.demo.config import WorldConfig
    from pipeline.demo.world import World
    from stages import tokenizer as tokenizer_stage
    from stages.common import write_json_atomic, write_jsonl
    from stages.config import TokenizerConfig
    from stages.data import tokenize_sources
    from stages.data.sources import Source

    docs = World.build(WorldConfig(seed=0)).pretrain_documents()
    tokenizer = tokenizer_stage.run(TokenizerConfig(vocab_size=1024), documents=docs, output_dir=root / "tokenizer")
    write_jsonl(root / "docs.jsonl", ({"text": d} for d in docs))
    source = Source(paths=[str(root / "docs.jsonl")], name="demo")
    shards = tokenize_sources([source], root / "tokenizer", root / "cache", num_workers=1, progress=False,
                              eos_token_id=tokenizer.eos_token_id)
    write_json_atomic(root / "corpus.json", {"cache_dir": str(root / "cache"), "keys": shards.keys, "weights": [1.0],
                                             "sources": [source.model_dump(mode="json")], "eos_token_id": tokenizer.eos_token_id})
    return tokenizer, docs


def chatsmith_run(root: Path, config, run_id: int) -> float:
    from stages import pretrain

    out = root / f"chatsmith-{run_id}"
    pretrain.run(config, tokenizer_dir=root / "tokenizer", corpus=root / "corpus.json", output_dir=out)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    # steady state: every logged window but the first (warm-up, allocator, first-call overheads)
    windows = rows[1:]
    tokens = sum(r["tokens_per_s"] * (r["time_s"] - p["time_s"]) for p, r in zip(rows, windows))
    return tokens / (windows[-1]["time_s"] - rows[0]["time_s"])


def bare_run(tokenizer, docs, config) -> float:
    """The loop a researcher would write by hand: no accelerate, no logging, no checkpointing."""
    import torch

    from stages.checkpoint import make_scheduler
    from stages.pretrain import build_model

    ids = [t for encoded in tokenizer(docs, add_special_tokens=False)["input_ids"] for t in encoded + [tokenizer.eos_token_id]]
    count = len(ids) // config.seq_len
    data = torch.tensor(ids[: count * config.seq_len], dtype=torch.long).view(count, config.seq_len)  # all in memory
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
    parser.add_argument("--repeats", type=int, default=5)
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
    print(f"  chatsmith pretrain stage (token shards) : {a:10.0f} tokens/s   runs: {[round(x) for x in ours]}")
    print(f"  bare PyTorch loop (in-memory tensor)    : {b:10.0f} tokens/s   runs: {[round(x) for x in bare]}")
    print(f"  ratio chatsmith / bare   : {a / b:10.3f}   (aim >= 0.97)")


if __name__ == "__main__":
    main()
