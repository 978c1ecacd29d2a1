"""Corpus data for pretraining: sources and readers, token shards in a cache, training windows.

    sources.py   what a recipe names -> files -> records (no torch, no tokenizer)
    formats.py   one part of one file of a format -> rows or documents; sizes without reading
    shards.py    text sources + a tokenizer -> token shards in a cache dir, tokenized once, in parallel
    stream.py    shards -> each step's global batch, each rank's slice of it, held-out eval windows

Nothing here imports torch: batches are numpy arrays (`torch.from_numpy` them).
"""

from stages.data.shards import (ShardSet, cache_entries, default_cache_dir, estimate_shard_bytes,
                                remove_cache_entries, tokenize_sources)
from stages.data.sources import DataError, Source, as_sources, read_records, sample_texts
from stages.data.stream import EvalWindows, TrainSampler, eval_windows

__all__ = ["DataError", "EvalWindows", "ShardSet", "Source", "TrainSampler", "as_sources", "cache_entries",
           "default_cache_dir", "estimate_shard_bytes", "eval_windows", "read_records", "remove_cache_entries",
           "sample_texts", "tokenize_sources"]
