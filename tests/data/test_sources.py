"""Sources: what a recipe names -> files -> records, and the one-line errors on bad input."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from stages.data import formats, sources
from stages.data.sources import (Bad, DataError, ReadCounts, Source, as_sources, estimate_text_bytes, fingerprint,
                                 plan_parts, read_part, read_records, sample_texts, source_files)

REPO = Path(__file__).resolve().parents[2]


def one_line_error(source, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        list(read_records(source, **kwargs))
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- formats and paths

@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"])
def test_each_format_reads_every_document_in_order(tmp_path, make_documents, write_rows, fmt):
    docs = make_documents(30)
    path = write_rows(tmp_path / f"corpus.{fmt}", [{"text": d, "n": i} for i, d in enumerate(docs)], fmt)
    assert list(read_records(Source(paths=str(path)))) == docs


def test_save_to_disk_dir_reads_as_hf(tmp_path, make_documents, write_rows):
    docs = make_documents(12)
    path = write_rows(tmp_path / "saved", [{"text": d} for d in docs], "hf")
    assert source_files(Source(paths=str(path)))[0].format == "hf"
    assert list(read_records(Source(paths=str(path)))) == docs


def test_dataset_dict_dir_asks_for_a_split(tmp_path, make_documents):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "a"}])}).save_to_disk(str(tmp_path / "dd"))
    message = one_line_error(Source(paths=str(tmp_path / "dd")))
    assert "DatasetDict" in message and "train" in message


def test_txt_is_one_document_per_file_or_per_paragraph(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("First paragraph,\nsecond line.\n\n\nSecond paragraph.\n  \nThird.\n")
    assert list(read_records(Source(paths=str(path)))) == [path.read_text()]
    assert list(read_records(Source(paths=str(path), txt_document="paragraph"))) == [
        "First paragraph,\nsecond line.", "Second paragraph.", "Third."]


def test_txt_file_too_big_for_one_document(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "MAX_TXT_FILE_BYTES", 10)
    (tmp_path / "dump.txt").write_text("x" * 11)
    assert "txt_document: paragraph" in one_line_error(Source(paths=str(tmp_path / "dump.txt")))


def test_directory_glob_and_list_mean_the_same_files(tmp_path, make_documents, write_rows):
    docs = make_documents(20)
    write_rows(tmp_path / "c" / "a.jsonl", [{"text": d} for d in docs[:10]], "jsonl")
    write_rows(tmp_path / "c" / "sub" / "b.jsonl.gz", [{"text": d} for d in docs[10:]], "jsonl.gz")
    (tmp_path / "c" / "README.md").write_text("not data")
    by_dir = list(read_records(Source(paths=str(tmp_path / "c"))))
    by_glob = list(read_records(Source(paths=str(tmp_path / "c" / "**" / "*.jsonl*"))))
    by_list = list(read_records(Source(paths=[str(tmp_path / "c" / "a.jsonl"), str(tmp_path / "c" / "sub" / "b.jsonl.gz")])))
    assert by_dir == by_glob == by_list == docs


def test_missing_paths_and_unknown_extensions(tmp_path):
    assert "no such file" in one_line_error(Source(paths=str(tmp_path / "nope.jsonl")))
    assert "matches no file" in one_line_error(Source(paths=str(tmp_path / "*.jsonl")))
    (tmp_path / "data.csv").write_text("text\nhello\n")
    assert "set the source's format" in one_line_error(Source(paths=str(tmp_path / "data.csv")))
    (tmp_path / "empty").mkdir()
    assert "no data files" in one_line_error(Source(paths=str(tmp_path / "empty")))


def test_recipe_values_become_sources():
    assert as_sources("a.jsonl") == [Source(paths=["a.jsonl"])]
    assert as_sources(["a.jsonl", "b.parquet"]) == [Source(paths=["a.jsonl", "b.parquet"])]
    mixed = as_sources([{"paths": "web/*.parquet", "weight": 0.7, "name": "web"}, {"paths": ["books"], "weight": 0.3}])
    assert [(s.label, s.weight) for s in mixed] == [("web", 0.7), ("books", 0.3)]
    with pytest.raises(DataError, match="data source 0: weight"):
        as_sources([{"paths": "a.jsonl", "weight": -1}])
    with pytest.raises(DataError, match="data source 0: colour"):
        as_sources([{"paths": "a.jsonl", "colour": "red"}])


# ---------------------------------------------------------------- bad input

def test_unreadable_file_names_it(tmp_path, monkeypatch, make_documents, write_rows):
    path = write_rows(tmp_path / "a.jsonl", [{"text": "x"}], "jsonl")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(formats, "open", refuse, raising=False)  # root reads any file: refuse it here instead
    message = one_line_error(Source(paths=str(path)))
    assert message.startswith(f"{path}: cannot read") and "Permission denied" in message


def test_corrupt_gzip_and_zstd_name_the_file_and_line(tmp_path, make_documents, write_rows):
    rows = [{"text": d} for d in make_documents(400)]
    whole = write_rows(tmp_path / "whole.jsonl.gz", rows, "jsonl.gz").read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    message = one_line_error(Source(paths=str(tmp_path / "cut.jsonl.gz")))
    assert message.startswith(f"{tmp_path / 'cut.jsonl.gz'}: corrupt gzip after line ")
    (tmp_path / "plain.jsonl.gz").write_bytes(b'{"text": "not compressed"}\n')
    assert "corrupt gzip (Not a gzipped file" in one_line_error(Source(paths=str(tmp_path / "plain.jsonl.gz")))
    (tmp_path / "bad.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd garbage")
    assert "corrupt zstd" in one_line_error(Source(paths=str(tmp_path / "bad.jsonl.zst")))


def test_parquet_without_the_text_column_or_with_numbers(tmp_path, write_rows):
    write_rows(tmp_path / "a.parquet", [{"body": "x", "id": 1}], "parquet")
    message = one_line_error(Source(paths=str(tmp_path / "a.parquet")))
    assert message == f"{tmp_path / 'a.parquet'}: no column 'text' (columns: body, id); set the source's text_field"
    assert list(read_records(Source(paths=str(tmp_path / "a.parquet"), text_field="body"))) == ["x"]
    write_rows(tmp_path / "n.parquet", [{"text": 3}], "parquet")
    assert "column 'text' is int64, not a string" in one_line_error(Source(paths=str(tmp_path / "n.parquet")))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    assert "not a readable parquet file" in one_line_error(Source(paths=str(tmp_path / "junk.parquet")))


def test_bad_records_are_skipped_counted_and_located(tmp_path, make_documents):
    good = make_documents(300)
    lines = [json.dumps({"text": d}) for d in good[:100]] + ['{"text": ["a", "list"]}', "{broken json",
                                                             '{"body": "no text"}', '"a string"']
    lines += [json.dumps({"text": d}) for d in good[100:]]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    counts = ReadCounts()
    assert list(read_records(Source(paths=str(tmp_path / "a.jsonl")), counts=counts, max_bad_fraction=0.02)) == good
    assert (counts.records, counts.bad) == (300, 4)
    assert counts.first_bad == [f"{tmp_path / 'a.jsonl'} line 101: 'text' is a list, not a string",
                                f"{tmp_path / 'a.jsonl'} line 102: not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
                                f"{tmp_path / 'a.jsonl'} line 103: no field 'text' (fields: body)"]


def test_too_many_bad_records_is_an_error(tmp_path, make_documents):
    lines = [json.dumps({"text": d}) for d in make_documents(96)] + [json.dumps({"text": None})] * 4
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    source = Source(paths=str(tmp_path / "a.jsonl"), name="web")
    assert len(list(read_records(source, max_bad_fraction=0.04))) == 96
    message = one_line_error(source, max_bad_fraction=0.03)
    assert message == (f"source 'web': 4 of 100 records unusable (4.0% > max_bad_fraction 3.0%); "
                       f"first: {tmp_path / 'a.jsonl'} line 97: 'text' is null, not a string")


# ---------------------------------------------------------------- parts

@pytest.mark.parametrize("part_bytes", [1, 37, 200, 10_000])
def test_parts_of_a_big_jsonl_file_hold_every_line_once_in_order(tmp_path, make_documents, part_bytes):
    docs = make_documents(40)
    lines = [json.dumps({"text": d}) for d in docs]
    lines[25] = "{bad"
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    source = Source(paths=str(tmp_path / "a.jsonl"))
    parts = plan_parts(source_files(source), part_bytes=part_bytes)
    records = [r for part in parts for r in read_part(source, part)]
    assert [r for r in records if isinstance(r, str)] == docs[:25] + docs[26:]
    assert [r.where for r in records if isinstance(r, Bad)] == [f"{tmp_path / 'a.jsonl'} line 26"]
    assert len(parts) == (1 if part_bytes == 10_000 else -(-(tmp_path / "a.jsonl").stat().st_size // part_bytes))


def test_parquet_parts_follow_row_groups_and_count_rows(tmp_path, make_documents, write_rows):
    docs = make_documents(50)
    rows = [{"text": d} for d in docs]
    rows[30] = {"text": None}
    write_rows(tmp_path / "a.parquet", rows, "parquet")  # row groups of 7 rows
    source = Source(paths=str(tmp_path / "a.parquet"))
    parts = plan_parts(source_files(source), part_bytes=1)
    assert len(parts) == 8
    records = [r for part in parts for r in read_part(source, part)]
    assert [r for r in records if isinstance(r, str)] == docs[:30] + docs[31:]
    assert [str(r) for r in records if isinstance(r, Bad)] == [f"{tmp_path / 'a.parquet'} row 30: 'text' is null, not a string"]


# ---------------------------------------------------------------- conversations

def test_conversation_shapes_are_normalised_to_messages(tmp_path, write_rows):
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                           {"from": "gpt", "value": "Hello"}]},
        {"instruction": "Add", "input": "2 and 2", "output": "4"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ]
    path = write_rows(tmp_path / "sft.jsonl", rows, "jsonl")
    assert list(read_records(Source(paths=str(path), kind="conversations"))) == [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "user", "content": "Add\n\n2 and 2"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]},
    ]


@pytest.mark.parametrize("row, reason", [
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "x"}]},
     "conversations[1].from is 'robot', not one of"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 5}]},
     "messages[1].content is a number, not a string"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "'messages' does not end with an assistant turn"),
    ({"messages": "Hi"}, "'messages' is a string, not a non-empty list of turns"),
    ({"instruction": "Add", "output": ["4"]}, "'output' is a list, not a string"),
    ({"prompt": "Hi", "answer": "Hello"}, "no 'messages', 'conversations' or 'instruction'/'output' field (fields: prompt, answer)"),
])
def test_bad_conversations_name_the_row_and_field(tmp_path, write_rows, row, reason):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    path = write_rows(tmp_path / "sft.jsonl", [good, row], "jsonl")
    counts = ReadCounts()
    assert list(read_records(Source(paths=str(path), kind="conversations"), counts=counts, max_bad_fraction=1)) == [good]
    assert counts.first_bad[0].startswith(f"{path} line 2: {reason}")


def test_txt_cannot_hold_conversations(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    assert "holds text, not conversations" in one_line_error(Source(paths=str(tmp_path / "a.txt"), kind="conversations"))


# ---------------------------------------------------------------- fingerprint, samples, estimates

def test_fingerprint_follows_names_sizes_and_mtimes_not_contents(tmp_path, write_rows):
    path = write_rows(tmp_path / "c" / "a.jsonl", [{"text": "hello"}], "jsonl")
    source = Source(paths=str(tmp_path / "c"))
    first = fingerprint(source)
    assert fingerprint(source) == first
    stat = path.stat()
    path.write_text(path.read_text().replace("hello", "jello"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint(source) == first  # same size and mtime: not re-read (ShardSet.verify re-hashes)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    second = fingerprint(source)
    assert second != first
    write_rows(tmp_path / "c" / "b.jsonl", [{"text": "more"}], "jsonl")
    assert fingerprint(source) not in (first, second)
    assert fingerprint(Source(paths=str(tmp_path / "c"), text_field="body")) != fingerprint(source)


def test_tokenizer_sample_is_deterministic_weighted_and_near_its_size(tmp_path, make_documents, write_rows):
    for i in range(4):
        write_rows(tmp_path / "web" / f"{i}.jsonl", [{"text": d} for d in make_documents(200, tag=f"w{i}-")], "jsonl")
        write_rows(tmp_path / "books" / f"{i}.parquet", [{"text": d} for d in make_documents(200, tag=f"b{i}-")], "parquet")
    mix = [{"paths": str(tmp_path / "web"), "weight": 3}, {"paths": str(tmp_path / "books"), "weight": 1}]
    sample = list(sample_texts(mix, sample_bytes=40_000, seed=1))
    assert sample == list(sample_texts(mix, sample_bytes=40_000, seed=1))
    assert sample != list(sample_texts(mix, sample_bytes=40_000, seed=2))
    total = sum(len(t.encode()) for t in sample)
    web = sum(len(t.encode()) for t in sample if "(w" in t)
    assert 40_000 <= total <= 42_000
    assert 0.7 <= web / total <= 0.8
    assert len(set(sample)) == len(sample)


@pytest.mark.parametrize("fmt, size_recorded", [("jsonl", True), ("jsonl.gz", True), ("jsonl.gz", False),
                                                 ("jsonl.zst", True), ("jsonl.zst", False), ("parquet", True), ("hf", True)])
def test_text_size_estimate_reads_little_and_is_close(tmp_path, monkeypatch, make_documents, write_rows, fmt, size_recorded):
    if not size_recorded:  # a gzip past 4 GB, a zstd stream: the size comes from the sample's compression ratio
        monkeypatch.setattr(sources, "uncompressed_size", lambda file: None)
    rng = random.Random(0)  # random words: files compress alike, as a real corpus's do
    docs = [d + " " + " ".join(f"{rng.getrandbits(24):x}" for _ in range(rng.randint(5, 60))) for d in make_documents(3000)]
    for i in range(3):
        write_rows(tmp_path / "c" / f"{i}.{fmt}", [{"text": d, "id": n} for n, d in enumerate(docs[i * 1000 : (i + 1) * 1000])], fmt)
    estimate, sample = estimate_text_bytes(Source(paths=str(tmp_path / "c")), sample_disk_bytes=20_000)
    actual = sum(len(d.encode()) for d in docs)
    assert 0.9 * actual <= estimate <= 1.1 * actual
    assert 0 < len(sample) < len(docs)


def test_no_torch_at_import():
    code = ("import sys; import stages.data.sources, stages.data.shards, stages.data.stream; "
            "sys.exit('torch' in sys.modules or 'transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
