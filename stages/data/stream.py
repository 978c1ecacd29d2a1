"""Training and eval windows from token shards: what every rank trains on at every step.

In:  a `ShardSet` (shards.py), `seq_len`, a seed, the global batch size.
Out: for a step, its global batch: which source and which window of it each sequence is, a function of
     (seed, step) alone; each rank's disjoint slice of it as int64 token ids
     `[grad_accum, per_rank, seq_len]`; the tokens each source has given so far; held-out eval windows.

A window is `seq_len` consecutive tokens of one source's train stream (its documents, each followed by
EOS, end to end), cut at multiples of `seq_len`: no padding, the tail dropped (as before shards).
Each sequence of a global batch comes from source s with probability weight_s / sum(weights); a
source serves its windows in a seeded pseudo-random order and starts a new order when it runs out.
Where a source is in its order at step t depends only on the draws of steps < t, which are replayed
from the seed (no source is read, nothing but the step needs saving for an exact resume).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.data.shards import ShardSet
from stages.data.sources import DataError

_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit key from small integers."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def permute(positions: np.ndarray, n: int, key: int) -> np.ndarray:
    """Where each of `positions` goes under a pseudo-random bijection of [0, n) chosen by `key`: a
    4-round Feistel network on the next even power of two, walked until it lands below n. O(1) memory,
    where a permutation array of a large corpus's windows would take gigabytes on every rank."""
    bits = max(2, int(n - 1).bit_length())
    bits += bits % 2
    half, half_mask = bits // 2, np.uint64((1 << (bits // 2)) - 1)
    round_keys = [np.uint64(_mix64(key * 4 + i)) for i in range(4)]
    out = positions.astype(np.uint64)
    todo = np.ones(out.shape, dtype=bool)
    with np.errstate(over="ignore"):  # uint64 products wrap on purpose
        while todo.any():
            left, right = out[todo] >> np.uint64(half), out[todo] & half_mask
            for round_key in round_keys:
                mixed = (right ^ round_key) * np.uint64(0xBF58476D1CE4E5B9)
                mixed ^= mixed >> np.uint64(29)
                left, right = right, left ^ (mixed & half_mask)
            out[todo] = (left << np.uint64(half)) | right
            todo &= out >= np.uint64(n)  # cycle-walking: each step stays a bijection of [0, 2**bits)
    return out.astype(np.int64)


class TrainSampler:
    """The global batch of every step, and each rank's slice of it, over a mixture of sources."""

    def __init__(self, shards: ShardSet, *, seq_len: int, global_batch: int, seed: int = 0):
        self.shards, self.seq_len, self.global_batch, self.seed = shards, seq_len, global_batch, seed
        self.windows = np.array([len(s.train) // seq_len for s in shards.sources], dtype=np.int64)
        for source, count in zip(shards.sources, self.windows):
            if count == 0:
                raise DataError(f"source {source.label!r}: {len(source.train)} training tokens, "
                                f"not enough for one sequence of {seq_len}")
        weights = np.array([s.weight for s in shards.sources], dtype=np.float64)
        self.cumulative = np.cumsum(weights / weights.sum())
        self._replayed_step, self._replayed_counts = 0, np.zeros(len(self.windows), dtype=np.int64)

    def _sources_of(self, step: int) -> np.ndarray:
        """The source of each sequence of the step's global batch (uniforms against the weights' CDF)."""
        uniforms = np.random.default_rng([self.seed, step]).random(self.global_batch)
        return np.minimum(np.searchsorted(self.cumulative, uniforms, side="right"), len(self.windows) - 1)

    def windows_before(self, step: int) -> np.ndarray:
        """Windows each source gave in steps [0, step), replayed from the seed (sequential calls are O(1))."""
        if step < self._replayed_step:
            self._replayed_step, self._replayed_counts = 0, np.zeros_like(self._replayed_counts)
        while self._replayed_step < step:
            self._replayed_counts += np.bincount(self._sources_of(self._replayed_step), minlength=len(self.windows))
            self._replayed_step += 1
        return self._replayed_counts.copy()

    def global_batch_at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(source index, window index) of each sequence of the step's global batch."""
        sources = self._sources_of(step)
        before = self.windows_before(step)
        windows = np.empty(self.global_batch, dtype=np.int64)
        for source in np.unique(sources):
            chosen = sources == source
            # how many windows the source gave before each of its sequences in this batch
            ordinals = before[source] + np.arange(chosen.sum())
            windows[chosen] = self._served(int(source), ordinals)
        return sources, windows

    def _served(self, source: int, ordinals: np.ndarray) -> np.ndarray:
        """The windows a source serves as its `ordinals`-th: pass `ordinal // n` over its n windows, each
        pass in its own seeded order."""
        n = int(self.windows[source])
        passes, positions = np.divmod(ordinals, n)
        windows = np.empty_like(positions)
        for number in np.unique(passes):
            in_pass = passes == number
            windows[in_pass] = permute(positions[in_pass], n, key=_mix64(self.seed * 1_000_003 + source) ^ int(number))
        return windows

    def batch_for_step(self, step: int, *, rank: int, world: int, per_rank: int, grad_accum: int) -> np.ndarray:
        """This rank's token ids for the step, `[grad_accum, per_rank, seq_len]` int64. Micro-batch m of rank r
        is global rows [(m * world + r) * per_rank, + per_rank): the ranks' slices are disjoint and together
        are the global batch."""
        if per_rank * world * grad_accum != self.global_batch:
            raise ValueError(f"per_rank {per_rank} x world {world} x grad_accum {grad_accum} "
                             f"!= global batch {self.global_batch}")
        sources, windows = self.global_batch_at(step)
        out = np.empty((grad_accum, per_rank, self.seq_len), dtype=np.int64)
        for micro in range(grad_accum):
            offset = (micro * world + rank) * per_rank
            for row in range(per_rank):
                out[micro, row] = self.window(int(sources[offset + row]), int(windows[offset + row]))
        return out

    def window(self, source: int, index: int) -> np.ndarray:
        return self.shards.sources[source].train.read(index * self.seq_len, (index + 1) * self.seq_len)

    def tokens_by_source(self, step: int) -> dict[str, int]:
        """Training tokens each source gave in steps [0, step), by source label (for metrics)."""
        counts = self.windows_before(step) * self.seq_len
        return {s.label: int(c) for s, c in zip(self.shards.sources, counts)}

    def epochs_by_source(self, step: int) -> dict[str, float]:
        """Passes over each source's windows in steps [0, step)."""
        return {s.label: float(c / n) for s, c, n in zip(self.shards.sources, self.windows_before(step), self.windows)}


@dataclass
class EvalWindows:
    tokens: np.ndarray  # [n, seq_len] int64
    source_index: np.ndarray  # [n]: which source each window is from
    bytes_per_token: float  # held-out text bytes over held-out tokens (EOS counted), for bits per byte


def eval_windows(shards: ShardSet, *, seq_len: int, max_windows: int) -> EvalWindows:
    """Held-out windows, at most `max_windows` (eval_batches x batch size), spread evenly over the
    sources' held-out streams end to end."""
    counts = np.array([len(s.eval) // seq_len for s in shards.sources], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        held = sum(len(s.eval) for s in shards.sources)
        raise DataError(f"held-out text is {held} tokens, not enough for one sequence of {seq_len}; raise eval_fraction")
    picks = np.arange(total) if total <= max_windows else (np.arange(max_windows) * total) // max_windows
    starts = np.concatenate([[0], np.cumsum(counts)])
    source_index = np.searchsorted(starts, picks, side="right") - 1
    tokens = np.stack([shards.sources[s].eval.read((p - starts[s]) * seq_len, (p - starts[s] + 1) * seq_len)
                       for s, p in zip(source_index, picks)])
    held_bytes = sum(s.summary["splits"]["eval"]["bytes"] for s in shards.sources)
    held_tokens = sum(s.summary["splits"]["eval"]["tokens"] for s in shards.sources)
    return EvalWindows(tokens, source_index, held_bytes / held_tokens)
