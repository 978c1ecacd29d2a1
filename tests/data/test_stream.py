"""Training windows: a global batch fixed by (seed, step), sliced by rank, mixed by weight, resumable."""

from __future__ import annotations

import numpy as np
import pytest

from stages.data.shards import tokenize_sources
from stages.data.sources import DataError
from stages.data.stream import TrainSampler, eval_windows, permute

SEQ_LEN = 16


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory, tokenizer_dir):
    """Shards of two sources, "web" (weight 0.7) and "books" (weight 0.3), of different sizes."""
    from tiny_models import TINY_TEXT

    root = tmp_path_factory.mktemp("stream")
    for name, n in [("web", 400), ("books", 150)]:
        lines = [f'{{"text": "{TINY_TEXT[i % len(TINY_TEXT)]} ({name} {i})"}}' for i in range(n)]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return tokenize_sources([{"paths": str(root / "web.jsonl"), "name": "web", "weight": 0.7},
                             {"paths": str(root / "books.jsonl"), "name": "books", "weight": 0.3}],
                            tokenizer_dir, root / "cache", num_workers=1, eval_fraction=0.1, progress=False)


def global_rows(sampler: TrainSampler, step: int) -> list[tuple[int, int]]:
    sources, windows = sampler.global_batch_at(step)
    return list(zip(sources.tolist(), windows.tolist()))


@pytest.mark.parametrize("n", [1, 2, 3, 17, 64, 1000, 4099])
def test_permute_is_a_bijection_that_depends_on_the_key(n):
    positions = np.arange(n)
    shuffled = permute(positions, n, key=11)
    assert sorted(shuffled.tolist()) == positions.tolist()
    if n >= 17:
        assert not np.array_equal(shuffled, positions)
        assert not np.array_equal(shuffled, permute(positions, n, key=12))


def test_windows_are_consecutive_slices_of_the_stream_with_eos_between_documents(two_sources):
    sampler = TrainSampler(two_sources, seq_len=SEQ_LEN, global_batch=4, seed=0)
    web = two_sources.sources[0].train
    tokens = web.read(0, len(web))
    assert np.array_equal(sampler.window(0, 3), tokens[3 * SEQ_LEN : 4 * SEQ_LEN])
    assert (tokens == two_sources.eos_token_id).sum() == two_sources.sources[0].summary["splits"]["train"]["documents"]
    assert sampler.windows[0] == len(tokens) // SEQ_LEN


def test_ranks_take_disjoint_slices_whose_union_is_the_global_batch(two_sources):
    sampler = TrainSampler(two_sources, seq_len=SEQ_LEN, global_batch=12, seed=3)
    whole = sampler.batch_for_step(5, rank=0, world=1, per_rank=12, grad_accum=1)[0]
    for world, grad_accum in [(2, 3), (3, 2), (4, 1)]:
        per_rank = 12 // (world * grad_accum)
        by_rank = [sampler.batch_for_step(5, rank=r, world=world, per_rank=per_rank, grad_accum=grad_accum) for r in range(world)]
        # global row of (micro m, rank r, row i) is (m * world + r) * per_rank + i
        rebuilt = np.stack([by_rank[r][m, i] for m in range(grad_accum) for r in range(world) for i in range(per_rank)])
        assert np.array_equal(rebuilt, whole)
    rows = global_rows(sampler, 5)
    assert len(set(rows)) == len(rows)  # disjoint: no window twice in one global batch
    with pytest.raises(ValueError, match="global batch 12"):
        sampler.batch_for_step(5, rank=0, world=2, per_rank=4, grad_accum=1)


def test_global_batch_depends_on_seed_and_step_only(two_sources):
    walked = TrainSampler(two_sources, seq_len=SEQ_LEN, global_batch=8, seed=1)
    batches = [global_rows(walked, step) for step in range(30)]
    resumed = TrainSampler(two_sources, seq_len=SEQ_LEN, global_batch=8, seed=1)  # a new process resuming at step 20
    assert [global_rows(resumed, step) for step in range(20, 30)] == batches[20:]
    assert global_rows(resumed, 3) == batches[3]  # going back replays from the start
    other_seed = TrainSampler(two_sources, seq_len=SEQ_LEN, global_batch=8, seed=2)
    assert [global_rows(other_seed, step) for step in range(30)] != batches
    assert len({tuple(b) for b in batches}) == 30


def test_mixture_weights_are_realised_in_tokens(two_sources):
    sampler = TrainSampler(two_sources, seq_len=SEQ_LEN, global_batch=8, seed=0)
    tokens = sampler.tokens_by_source(250)  # 2,000 sequences
    assert sum(tokens.values()) == 2000 * SEQ_LEN
    assert abs(tokens["web"] / (2000 * SEQ_LEN) - 0.7) <= 0.03
    sources = np.concatenate([sampler.global_batch_at(step)[0] for step in range(250)])
    assert np.bincount(sources).tolist() == [tokens["web"] // SEQ_LEN, tokens["books"] // SEQ_LEN]


def test_each_source_cycles_its_own_shuffled_order(two_sources):
    sampler = TrainSampler(two_sources, seq_len=SEQ_LEN, global_batch=8, seed=0)
    drawn = {0: [], 1: []}
    for step in range(400):
        for source, window in global_rows(sampler, step):
            drawn[source].append(window)
    for source, windows in drawn.items():
        n = int(sampler.windows[source])
        assert len(windows) > 2 * n  # more than two passes over this source
        first, second = windows[:n], windows[n : 2 * n]
        assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))  # every window once per pass
        assert first != second and first != sorted(first)  # a new shuffled order each pass
    assert sampler.epochs_by_source(400)["books"] == len(drawn[1]) / sampler.windows[1]


def test_a_source_shorter_than_one_window_is_refused(two_sources):
    books = len(two_sources.sources[1].train)
    assert len(two_sources.sources[0].train) > books + 1
    with pytest.raises(DataError, match=f"'books': {books} training tokens, not enough for one sequence of {books + 1}"):
        TrainSampler(two_sources, seq_len=books + 1, global_batch=2)


def test_eval_windows_are_held_out_and_capped(two_sources):
    held = eval_windows(two_sources, seq_len=SEQ_LEN, max_windows=5)
    assert held.tokens.shape == (5, SEQ_LEN)
    assert set(held.source_index.tolist()) == {0, 1}  # spread over both sources
    all_held = eval_windows(two_sources, seq_len=SEQ_LEN, max_windows=10_000)
    available = sum(len(s.eval) // SEQ_LEN for s in two_sources.sources)
    assert len(all_held.tokens) == available
    for row, source in zip(held.tokens, held.source_index):  # each a window of its source's held-out stream
        stream = two_sources.sources[source].eval
        cut = stream.read(0, len(stream) // SEQ_LEN * SEQ_LEN).reshape(-1, SEQ_LEN)
        assert (cut == row).all(axis=1).any()
    eval_bytes = sum(s.summary["splits"]["eval"]["bytes"] for s in two_sources.sources)
    assert held.bytes_per_token == eval_bytes / sum(len(s.eval) for s in two_sources.sources)
    with pytest.raises(DataError, match="raise eval_fraction"):
        eval_windows(two_sources, seq_len=10_000, max_windows=5)
