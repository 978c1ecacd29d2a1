"""File formats: one part of one file read as rows or documents, and files sized without reading them.

In:  a `Part` (a file, or a byte range / row-group range of one) and its format: jsonl, jsonl.gz,
     jsonl.zst, txt, txt.gz, txt.zst, parquet, or hf (an Arrow file of a `save_to_disk` dir).
Out: `(where, row)` pairs, a batch at a time (never a whole file in memory), with a `Bad` for a line
     that is not JSON; `where()` names the file and line or row, computed only when a message needs it.
     For size estimates: a sample from a file's start, and sizes from gzip/zstd headers and parquet
     metadata.

A file that cannot be read or decompressed raises `DataError` in one line naming it and the line.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

# Longest first, so "a.jsonl.gz" is jsonl.gz and not a file ending in ".gz".
EXTENSIONS = {".jsonl.gz": "jsonl.gz", ".jsonl.zst": "jsonl.zst", ".txt.gz": "txt.gz", ".txt.zst": "txt.zst",
              ".jsonl": "jsonl", ".txt": "txt", ".parquet": "parquet"}
# A whole .txt file is one document; past this size it is almost surely a dump of many documents.
MAX_TXT_FILE_BYTES = 16 << 20
# Records read and handed on at a time (parquet and Arrow batches).
BATCH_ROWS = 1024


class DataError(ValueError):
    """Bad input, in one line that names the source file and the line or row."""


@dataclass(frozen=True)
class SourceFile:
    path: str
    format: str
    size: int
    mtime_ns: int


def format_of(path: str) -> Optional[str]:
    name = Path(path).name.lower()
    return next((fmt for ext, fmt in EXTENSIONS.items() if name.endswith(ext)), None)


def file_sha256(path: str, *, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({one_line(exc)})") from None
    return digest.hexdigest()


@dataclass(frozen=True)
class Part:
    """A piece of one file that one worker reads: a byte range of an uncompressed JSONL file (each line
    belongs to the part it starts in), a range of parquet row groups, or (other formats) the whole file."""

    path: str
    format: str
    start: int = 0
    stop: Optional[int] = None  # None: to the end


def parquet_parts(file: SourceFile, part_bytes: int) -> list[Part]:
    """Runs of whole row groups of about `part_bytes` uncompressed bytes each, in order."""
    metadata = _parquet_file(file.path).metadata
    parts, start, size = [], 0, 0
    for group in range(metadata.num_row_groups):
        size += metadata.row_group(group).total_byte_size
        if size >= part_bytes:
            parts.append(Part(file.path, file.format, start, group + 1))
            start, size = group + 1, 0
    if start < metadata.num_row_groups or not parts:
        parts.append(Part(file.path, file.format, start, metadata.num_row_groups))
    return parts


@dataclass(frozen=True)
class Bad:
    """A record that was skipped: where it is (file and line or row) and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


# ---------------------------------------------------------------- reading

def read_rows(part: Part, text_field: Optional[str] = None) -> Iterator[tuple[Any, Any]]:
    """(where, row) for the rows of a JSONL, parquet or Arrow part; for tables, `text_field` reads that
    column alone (`{text_field: value}` rows), after checking it is a string column."""
    return _jsonl_rows(part) if part.format.startswith("jsonl") else _table_rows(part, text_field)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def type_name(value) -> str:
    names = {type(None): "null", dict: "an object", list: "a list", bool: "a boolean", int: "a number",
             float: "a number", str: "a string"}
    return names.get(type(value), type(value).__name__)


def _read_errors():
    import zstandard

    return (OSError, EOFError, zlib.error, zstandard.ZstdError)


def _compression(fmt: str) -> str:
    return fmt.rpartition(".")[2] if "." in fmt else ""


def _failure(compression: str) -> str:
    return {"gz": "corrupt gzip", "zst": "corrupt zstd"}.get(compression, "cannot read")


def _open_binary(path: str, compression: str):
    """A buffered binary stream of the file's decompressed bytes."""
    if compression == "gz":
        return gzip.open(path, "rb")
    handle = open(path, "rb")
    if compression == "zst":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(handle, closefd=True), 1 << 20)
    return handle


def _lines(part: Part) -> Iterator[tuple[Any, bytes]]:
    """(where, line) for the lines of a part; `where()` names the file and line number."""
    compression = _compression(part.format)
    first = _LineNumber(part.path)
    number = 0
    try:
        with _open_binary(part.path, compression) as handle:
            position = first.offset = _seek_line_start(handle, part.start) if part.start else 0
            for line in handle:
                if part.stop is not None and position >= part.stop:
                    break
                position += len(line)
                number += 1
                yield (lambda n=number: f"{part.path} line {first() + n - 1}"), line
    except _read_errors() as exc:
        after = f" after line {first() + number - 1}" if number else ""
        raise DataError(f"{part.path}: {_failure(compression)}{after} ({one_line(exc)})") from None


def _seek_line_start(handle, start: int) -> int:
    """Move to the first line that starts at or after `start`; return its byte offset."""
    handle.seek(start - 1)
    if handle.read(1) == b"\n":
        return start
    return start + len(handle.readline())


class _LineNumber:
    """The line number at a byte offset of an uncompressed file. A part that starts deep in a big file
    counts its newlines only when a message needs the number, then once."""

    def __init__(self, path: str):
        self.path, self.offset, self.number = path, 0, None

    def __call__(self) -> int:
        if self.offset == 0:
            return 1
        if self.number is None:
            newlines, left = 0, self.offset
            with open(self.path, "rb") as handle:
                while left > 0 and (block := handle.read(min(left, 1 << 22))):
                    newlines += block.count(b"\n")
                    left -= len(block)
            self.number = newlines + 1
        return self.number


def _jsonl_rows(part: Part) -> Iterator[tuple[Any, Any]]:
    for where, line in _lines(part):
        if not line.strip():
            continue
        try:
            yield where, json.loads(line)
        except ValueError as exc:
            yield where, Bad(where(), f"not JSON ({one_line(exc)})")


def txt_documents(part: Part, *, whole_file: bool) -> Iterator[Union[str, Bad]]:
    if whole_file:
        yield _decode(_read_whole(part), lambda: part.path)
        return
    paragraph, start = [], None
    for where, line in _lines(part):
        if line.strip():
            start = start or where
            paragraph.append(line)
        elif paragraph:
            yield _decode(b"".join(paragraph).rstrip(b"\r\n"), start)
            paragraph, start = [], None
    if paragraph:
        yield _decode(b"".join(paragraph).rstrip(b"\r\n"), start)


def _read_whole(part: Part) -> bytes:
    compression = _compression(part.format)
    try:
        with _open_binary(part.path, compression) as handle:
            raw = handle.read(MAX_TXT_FILE_BYTES + 1)
    except _read_errors() as exc:
        raise DataError(f"{part.path}: {_failure(compression)} ({one_line(exc)})") from None
    if len(raw) > MAX_TXT_FILE_BYTES:
        raise DataError(f"{part.path}: over {MAX_TXT_FILE_BYTES >> 20} MB as one document; "
                        f"set the source's txt_document: paragraph, or give it as JSONL")
    return raw


def _decode(raw: bytes, where) -> Union[str, Bad]:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Bad(where(), f"not UTF-8 at byte {exc.start}")


def _parquet_file(path: str):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError...: all mean "not readable as parquet"
        raise DataError(f"{path}: not a readable parquet file ({one_line(exc)})") from None


def _table_rows(part: Part, text_field: Optional[str]) -> Iterator[tuple[Any, Any]]:
    """(where, row) from parquet row groups or a `save_to_disk` Arrow file, a batch at a time."""
    batches, schema, first_row = _table_batches(part)
    columns = None
    if text_field is not None:
        _check_text_column(part.path, schema, text_field)
        columns = [text_field]
    row = first_row
    try:
        for batch in batches(columns):
            if columns:
                values = [{text_field: v} for v in batch.column(0).to_pylist()]
            else:
                values = batch.to_pylist()
            for value in values:
                yield (lambda n=row: f"{part.path} row {n}"), value
                row += 1
    except Exception as exc:  # a truncated or corrupt page surfaces while reading a batch
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{part.path}: cannot read row {row} onwards ({one_line(exc)})") from None


def _table_batches(part: Part):
    import pyarrow as pa

    if part.format == "parquet":
        parquet = _parquet_file(part.path)
        metadata = parquet.metadata
        stop = metadata.num_row_groups if part.stop is None else part.stop
        first_row = sum(metadata.row_group(g).num_rows for g in range(part.start))
        groups = list(range(part.start, stop))
        return (lambda columns: parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, columns=columns),
                parquet.schema_arrow, first_row)
    try:
        reader = pa.ipc.open_stream(pa.memory_map(part.path))
    except Exception as exc:
        raise DataError(f"{part.path}: not a readable Arrow file ({one_line(exc)})") from None

    def batches(columns):
        for batch in reader:
            for start in range(0, batch.num_rows, BATCH_ROWS):
                piece = batch.slice(start, BATCH_ROWS)
                yield piece.select(columns) if columns else piece
    return batches, reader.schema, 0


def _no_column(path: str, name: str, names: list[str]) -> DataError:
    return DataError(f"{path}: no column {name!r} (columns: {', '.join(names[:8])}); set the source's text_field")


def _check_text_column(path: str, schema, name: str) -> None:
    import pyarrow as pa

    if name not in schema.names:
        raise _no_column(path, name, schema.names)
    kind = schema.field(name).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{path}: column {name!r} is {kind}, not a string")


# ---------------------------------------------------------------- sizes and samples

def head_sample(file: SourceFile, text_field: str, disk_bytes: int) -> tuple[list[str], int, float]:
    """Documents in the first `disk_bytes` of a line-based file (the cut last line dropped), the
    decompressed bytes they came from, and the decompressed over compressed size of that start."""
    with open(file.path, "rb") as handle:
        head = handle.read(disk_bytes)
    data = _decompress_start(file, head)
    while b"\n" not in data and len(head) < file.size:  # a zstd block (up to 128 KB of text) decodes whole or not at all
        with open(file.path, "rb") as handle:
            head = handle.read(2 * len(head))
        data = _decompress_start(file, head)
    ratio = len(data) / max(len(head), 1)
    if len(head) < file.size:
        data = data[: data.rfind(b"\n") + 1]
    if file.format.startswith("txt"):
        return [data.decode("utf-8", errors="replace")], len(data), ratio
    texts = []
    for line in data.splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get(text_field), str):
            texts.append(row[text_field])
    return texts, len(data), ratio


def _decompress_start(file: SourceFile, head: bytes) -> bytes:
    """What the first bytes of a file decompress to (as far as they go)."""
    compression = _compression(file.format)
    try:
        if compression == "gz":
            return zlib.decompressobj(wbits=47).decompress(head)
        if compression == "zst":
            import zstandard

            return zstandard.ZstdDecompressor().decompressobj().decompress(head)
    except _read_errors() as exc:
        raise DataError(f"{file.path}: {_failure(compression)} ({one_line(exc)})") from None
    return head


def uncompressed_size(file: SourceFile) -> Optional[int]:
    """A compressed file's size uncompressed where the file records it, else None (plain files: their size)."""
    compression = _compression(file.format)
    if not compression:
        return file.size
    with open(file.path, "rb") as handle:
        if compression == "zst":
            import zstandard

            try:
                size = zstandard.frame_content_size(handle.read(18))
            except zstandard.ZstdError:
                return None
            return size if size > 0 else None
        handle.seek(max(file.size - 4, 0))
        size = int.from_bytes(handle.read(4), "little")  # gzip's ISIZE: the size modulo 2**32
    # ISIZE wraps at 4 GB; a file under 256 MB would need text compressing over 16x to wrap it
    return size if file.size < 1 << 28 and size >= file.size else None


def table_sample(file: SourceFile, text_field: str, text_bytes: int) -> tuple[list[str], int]:
    """Texts from the first row groups (parquet) or batches (Arrow) of a file, and the text column's
    stored size for those rows (what `column_bytes` counts for the whole file)."""
    texts, taken = [], 0
    stop = 1
    if file.format == "parquet":
        metadata = _parquet_file(file.path).metadata
        sampled = metadata.row_group(0).total_byte_size
        while stop < metadata.num_row_groups and sampled < text_bytes:
            sampled += metadata.row_group(stop).total_byte_size
            stop += 1
    for _, row in read_rows(Part(file.path, file.format, 0, stop if file.format == "parquet" else None), text_field):
        if isinstance(row[text_field], str):
            texts.append(row[text_field])
            taken += len(texts[-1].encode("utf-8"))
            if file.format == "hf" and taken >= text_bytes:
                break
    if file.format == "parquet":
        return texts, column_bytes(file, text_field, row_groups=range(stop))
    return texts, taken  # Arrow stores the text as it is


def column_bytes(file: SourceFile, column: str, row_groups: Optional[range] = None) -> int:
    import pyarrow as pa

    if file.format == "parquet":
        metadata = _parquet_file(file.path).metadata
        names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
        if column not in names:
            raise _no_column(file.path, column, names)
        index = names.index(column)
        groups = range(metadata.num_row_groups) if row_groups is None else row_groups
        return sum(metadata.row_group(g).column(index).total_uncompressed_size for g in groups)
    try:
        reader = pa.ipc.open_stream(pa.memory_map(file.path))
        _check_text_column(file.path, reader.schema, column)
        return sum(batch.column(column).nbytes for batch in reader)  # memory-mapped: no text is decoded
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{file.path}: not a readable Arrow file ({one_line(exc)})") from None
