"""Token shards: tokenized once into a cache, the same tokens whatever the workers, reused, resumable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from stages.data import shards as shards_module
from stages.data.shards import (ShardSet, cache_entries, default_cache_dir, estimate_shard_bytes, is_held_out,
                                remove_cache_entries, tokenize_sources)
from stages.data.sources import DataError


def write_corpus(root: Path, make_documents, write_rows, *, files: int = 3, per_file: int = 60, tag: str = "d") -> list[str]:
    """`files` files alternating jsonl.gz and parquet; returns all documents in file order."""
    docs = make_documents(files * per_file, tag=tag)
    for i in range(files):
        fmt = "jsonl.gz" if i % 2 == 0 else "parquet"
        write_rows(root / f"{tag}{i:02d}.{fmt}", [{"text": d} for d in docs[i * per_file : (i + 1) * per_file]], fmt)
    return docs


def stream(split) -> np.ndarray:
    return split.read(0, len(split))


def expected_tokens(tokenizer_dir, docs: list[str], *, eval_fraction: float) -> dict[str, list[int]]:
    """What the shards must hold, from the tokenizer as every stage loads it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = {"train": [], "eval": []}
    for doc, ids in zip(docs, tokenizer(docs, add_special_tokens=False)["input_ids"]):
        out["eval" if is_held_out(doc.encode(), eval_fraction) else "train"] += ids + [tokenizer.eos_token_id]
    return out


def test_shards_hold_each_document_then_eos_split_by_content(tmp_path, tokenizer_dir, make_documents, write_rows):
    docs = write_corpus(tmp_path / "corpus", make_documents, write_rows)
    shards = tokenize_sources([str(tmp_path / "corpus")], tokenizer_dir, tmp_path / "cache", num_workers=1,
                              eval_fraction=0.2, progress=False)
    expected = expected_tokens(tokenizer_dir, docs, eval_fraction=0.2)
    source = shards.sources[0]
    assert stream(source.train).tolist() == expected["train"]
    assert stream(source.eval).tolist() == expected["eval"]
    held_out = source.summary["splits"]["eval"]["documents"]
    assert 0.1 * len(docs) < held_out < 0.3 * len(docs)
    assert source.summary["splits"]["train"]["documents"] + held_out == len(docs)
    assert source.summary["splits"]["train"]["bytes"] == sum(len(d.encode()) for d in docs if not is_held_out(d.encode(), 0.2))


def test_second_call_reuses_the_cache_without_tokenizing(tmp_path, tokenizer_dir, make_documents, write_rows, monkeypatch):
    write_corpus(tmp_path / "corpus", make_documents, write_rows)
    first = tokenize_sources([str(tmp_path / "corpus")], tokenizer_dir, tmp_path / "cache", num_workers=1, progress=False)
    assert first.tokenized_parts == 3
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.ds")}

    def fail(job):
        raise AssertionError(f"tokenized {job.part.path} again")
    monkeypatch.setattr(shards_module, "tokenize_part", fail)
    second = tokenize_sources([str(tmp_path / "corpus")], tokenizer_dir, tmp_path / "cache", num_workers=1, progress=False)
    assert second.tokenized_parts == 0 and second.keys == first.keys
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.ds")} == written
    assert np.array_equal(stream(second.sources[0].train), stream(first.sources[0].train))
    reopened = ShardSet.open(tmp_path / "cache", first.keys)  # what a resumed run does: no source read at all
    assert np.array_equal(stream(reopened.sources[0].train), stream(first.sources[0].train))


def test_an_interrupted_run_does_only_the_missing_parts(tmp_path, tokenizer_dir, make_documents, write_rows):
    write_corpus(tmp_path / "corpus", make_documents, write_rows)
    full = tokenize_sources([str(tmp_path / "corpus")], tokenizer_dir, tmp_path / "cache", num_workers=1, progress=False)
    tokens = stream(full.sources[0].train)
    entry = tmp_path / "cache" / full.keys[0]
    (entry / "summary.json").unlink()  # as if cut while the third part was being written
    (entry / "parts" / "00002.json").unlink()
    (entry / "parts" / "00002.train.ds").write_bytes(b"half-written")
    again = tokenize_sources([str(tmp_path / "corpus")], tokenizer_dir, tmp_path / "cache", num_workers=1, progress=False)
    assert again.tokenized_parts == 1
    assert np.array_equal(stream(again.sources[0].train), tokens)


def test_tokens_do_not_depend_on_workers_or_part_size(tmp_path, tokenizer_dir, make_documents, write_rows):
    write_corpus(tmp_path / "corpus", make_documents, write_rows, files=4)
    lines = [json.dumps({"text": d}) for d in make_documents(80, tag="big")]
    (tmp_path / "corpus" / "z-big.jsonl").write_text("\n".join(lines) + "\n")
    runs = [tokenize_sources([str(tmp_path / "corpus")], tokenizer_dir, tmp_path / f"cache-{w}-{p}", num_workers=w,
                             part_bytes=p, progress=False)
            for w, p in [(1, 64 << 20), (2, 64 << 20), (1, 3000)]]
    assert runs[2].tokenized_parts > runs[0].tokenized_parts  # the big file really was cut into parts
    for run in runs[1:]:
        assert np.array_equal(stream(run.sources[0].train), stream(runs[0].sources[0].train))
        assert np.array_equal(stream(run.sources[0].eval), stream(runs[0].sources[0].eval))


def test_adding_a_file_keeps_every_earlier_document_on_its_side(tmp_path, tokenizer_dir, make_documents, write_rows):
    write_corpus(tmp_path / "corpus", make_documents, write_rows, tag="a")
    before = tokenize_sources([str(tmp_path / "corpus")], tokenizer_dir, tmp_path / "cache", num_workers=1,
                              eval_fraction=0.2, progress=False)
    write_corpus(tmp_path / "corpus", make_documents, write_rows, files=1, tag="b")  # sorts after the a* files
    after = tokenize_sources([str(tmp_path / "corpus")], tokenizer_dir, tmp_path / "cache", num_workers=1,
                             eval_fraction=0.2, progress=False)
    assert after.keys != before.keys
    for split in ("train", "eval"):
        old, new = stream(getattr(before.sources[0], split)), stream(getattr(after.sources[0], split))
        assert len(new) > len(old)
        assert np.array_equal(new[: len(old)], old)


def test_bad_input_in_a_worker_is_one_line(tmp_path, tokenizer_dir, make_documents, write_rows):
    write_corpus(tmp_path / "corpus", make_documents, write_rows, files=2)
    (tmp_path / "corpus" / "z.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError) as caught:
        tokenize_sources([str(tmp_path / "corpus")], tokenizer_dir, tmp_path / "cache", num_workers=2, progress=False)
    assert str(caught.value).startswith(f"{tmp_path / 'corpus' / 'z.jsonl.gz'}: corrupt gzip")


def test_too_many_bad_records_stop_tokenizing(tmp_path, tokenizer_dir, make_documents):
    lines = [json.dumps({"text": d}) for d in make_documents(50)] + ["{oops"] * 2
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"2 of 52 records unusable .* line 51: not JSON"):
        tokenize_sources([str(tmp_path / "a.jsonl")], tokenizer_dir, tmp_path / "cache", num_workers=1,
                         max_bad_fraction=0.02, progress=False)
    shards = tokenize_sources([str(tmp_path / "a.jsonl")], tokenizer_dir, tmp_path / "cache", num_workers=1,
                              max_bad_fraction=0.05, progress=False)
    assert shards.tokenized_parts == 0 and shards.sources[0].summary["bad"] == 2  # counted once, reused


def test_only_text_sources_with_distinct_labels_are_tokenized(tmp_path, tokenizer_dir):
    (tmp_path / "sft.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="only text sources"):
        tokenize_sources([{"paths": str(tmp_path / "sft.jsonl"), "kind": "conversations"}], tokenizer_dir, tmp_path / "c")
    with pytest.raises(DataError, match="two sources are labelled 'web'"):
        tokenize_sources([{"paths": str(tmp_path / "sft.jsonl"), "name": "web"}, {"paths": "other", "name": "web"}],
                         tokenizer_dir, tmp_path / "c")


def test_verify_rehashes_files_with_unchanged_size_and_mtime(tmp_path, tokenizer_dir, make_documents, write_rows):
    write_corpus(tmp_path / "corpus", make_documents, write_rows, files=1)
    tokenize_sources([str(tmp_path / "corpus")], tokenizer_dir, tmp_path / "cache", num_workers=1, progress=False)
    path = tmp_path / "corpus" / "d00.jsonl.gz"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-9] ^= 1  # same size, other content (the gzip CRC no longer matches: a real corruption)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    reused = tokenize_sources([str(tmp_path / "corpus")], tokenizer_dir, tmp_path / "cache", num_workers=1, progress=False)
    assert reused.tokenized_parts == 0
    with pytest.raises(DataError, match=f"{path}: changed since it was tokenized"):
        tokenize_sources([str(tmp_path / "corpus")], tokenizer_dir, tmp_path / "cache", num_workers=1, verify=True,
                         progress=False)


def test_cache_entries_listed_and_removed(tmp_path, tokenizer_dir, make_documents, write_rows):
    from filelock import FileLock

    write_corpus(tmp_path / "a", make_documents, write_rows, files=1, tag="a")
    write_corpus(tmp_path / "b", make_documents, write_rows, files=1, tag="b")
    shards = tokenize_sources([{"paths": str(tmp_path / "a"), "name": "A"}, {"paths": str(tmp_path / "b"), "name": "B"}],
                              tokenizer_dir, tmp_path / "cache", num_workers=1, progress=False)
    rows = {row["label"]: row for row in cache_entries(tmp_path / "cache")}
    assert set(rows) == {"A", "B"} and all(row["complete"] and row["parts_done"] == 1 for row in rows.values())
    assert rows["A"]["tokens"] == len(shards.sources[0].train) + len(shards.sources[0].eval)
    with FileLock(str(tmp_path / "cache" / f"{rows['A']['key']}.lock")):
        with pytest.raises(DataError, match="in use by another run"):
            remove_cache_entries(tmp_path / "cache", [rows["A"]["key"][:8]])
    assert remove_cache_entries(tmp_path / "cache", [rows["A"]["key"][:8]]) == [rows["A"]["key"]]
    assert [row["label"] for row in cache_entries(tmp_path / "cache")] == ["B"]
    assert remove_cache_entries(tmp_path / "cache") == [rows["B"]["key"]]
    assert cache_entries(tmp_path / "cache") == []


def test_disk_estimate_before_tokenizing_is_close(tmp_path, tokenizer_dir, make_documents, write_rows):
    write_corpus(tmp_path / "corpus", make_documents, write_rows, files=4, per_file=300)
    estimate = estimate_shard_bytes([str(tmp_path / "corpus")], tokenizer_dir)
    without_tokenizer = estimate_shard_bytes([str(tmp_path / "corpus")])
    shards = tokenize_sources([str(tmp_path / "corpus")], tokenizer_dir, tmp_path / "cache", num_workers=1, progress=False)
    actual = sum(p.stat().st_size for p in (tmp_path / "cache" / shards.keys[0]).rglob("*.ds*"))
    assert 0.85 * actual <= estimate <= 1.15 * actual
    assert without_tokenizer > actual  # no tokenizer yet: it errs on the large side


def test_shards_read_with_datatrove(tmp_path, tokenizer_dir, make_documents, write_rows):
    """The shard files are datatrove's tokenized-file layout: its reader sees the same tokens."""
    from datatrove.utils import dataset as dataset_module  # a test requirement: never skipped
    write_corpus(tmp_path / "corpus", make_documents, write_rows, files=1)
    shards = tokenize_sources([str(tmp_path / "corpus")], tokenizer_dir, tmp_path / "cache", num_workers=1, progress=False)
    path = tmp_path / "cache" / shards.keys[0] / "parts" / "00000.train.ds"
    dataset = dataset_module.DatatroveFileDataset(str(path), seq_len=31, token_size=2)
    assert dataset[1]["input_ids"].tolist() == stream(shards.sources[0].train)[32:64].tolist()


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("CHATSMITH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "chatsmith" / "token-shards"
    monkeypatch.setenv("CHATSMITH_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine" / "token-shards"
