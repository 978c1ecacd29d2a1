"""Fixtures for the data-layer tests: a tiny tokenizer, and corpus files written in any supported format."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tiny_models import TINY_TEXT, build_tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data-tokenizer") / "tokenizer"
    build_tiny_tokenizer(path)
    return path


@pytest.fixture
def make_documents():
    return _documents


@pytest.fixture
def write_rows():
    return _write_rows


def _documents(n: int, *, tag: str = "d") -> list[str]:
    """`n` distinct documents of one to three demo sentences."""
    return [" ".join(TINY_TEXT[(i * 7 + k) % len(TINY_TEXT)] for k in range(1 + i % 3)) + f" ({tag}{i})" for i in range(n)]


def _write_rows(path: Path, rows: list, fmt: str) -> Path:
    """Write rows (dicts; strings for txt) as `fmt`: jsonl, jsonl.gz, jsonl.zst, parquet, txt, hf."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("jsonl", "jsonl.gz", "jsonl.zst"):
        data = "".join(json.dumps(row) + "\n" for row in rows).encode()
        if fmt == "jsonl.gz":
            data = gzip.compress(data)
        elif fmt == "jsonl.zst":
            import zstandard

            data = zstandard.ZstdCompressor().compress(data)
        path.write_bytes(data)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)
    elif fmt == "txt":
        path.write_text("".join(rows))
    elif fmt == "hf":
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path
