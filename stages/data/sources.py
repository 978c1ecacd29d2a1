"""Corpus sources: what a recipe names, the files it means, and the records read from them.

In:  a recipe's data value: a path, a list of paths, or a list of `Source` mappings. A path is a
     file, a directory (its files with a known extension, or a Hugging Face `datasets` dir written by
     `save_to_disk`), or a glob (`corpus/**/*.jsonl.gz`).
Out: `Source` objects; their files, sorted; a fingerprint from names, sizes and mtimes (no content
     read); the files cut into `Part`s that workers read independently; and records streamed a batch
     at a time, never a whole file in memory: `str` documents (kind "text"), `{"messages": [...]}`
     (kind "conversations"), the row as a dict (the other kinds).

Bad input is a `DataError` whose message is one line naming the file and the line or row: a file
that cannot be read or decompressed, a parquet file without the text column. A record that cannot be
used (not JSON, text missing or not a string, a conversation in no known shape) is skipped and
counted; `check_bad_fraction` turns too many of them into a `DataError`. No torch, no tokenizer here;
each file format's own reading is in formats.py.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator

from stages.config import Frozen
from stages.data.formats import (EXTENSIONS, Bad, DataError, Part, SourceFile, column_bytes, file_sha256, format_of,
                                 head_sample, one_line, parquet_parts, read_rows, table_sample,
                                 txt_documents, type_name, uncompressed_size)

Format = Literal["jsonl", "jsonl.gz", "jsonl.zst", "txt", "txt.gz", "txt.zst", "parquet", "hf"]
Kind = Literal["text", "conversations", "comparisons", "prompts", "labels"]

WHOLE_FILES = 1 << 62  # a part size no file reaches

__all__ = ["Bad", "DataError", "Part", "ReadCounts", "Source", "SourceFile", "as_sources", "check_bad_fraction",
           "estimate_text_bytes", "file_sha256", "fingerprint", "normalise_conversation", "plan_parts", "read_part",
           "read_records", "sample_texts", "source_files"]


class Source(Frozen):
    """One body of data: files of one format and kind, with a weight in the pretraining mixture."""

    paths: list[str] = Field(min_length=1)
    """A file, a directory, a glob (`**` allowed), or a list of those. A directory means its files with a
    known extension (searched recursively), or a `datasets` dir written by `save_to_disk`."""
    format: Optional[Format] = None
    """jsonl, jsonl.gz, jsonl.zst, txt, txt.gz, txt.zst, parquet, or hf (a `save_to_disk` dir); None
    infers it from each file's extension."""
    text_field: str = "text"
    """The field (JSONL) or column (parquet, hf) holding a document's text; kind "text" only."""
    weight: float = Field(1.0, gt=0)
    """Mixture weight: the probability that a training sequence comes from this source is its weight
    over the sum of weights."""
    kind: Kind = "text"
    """What the records are: "text" (pretraining documents), "conversations" (SFT: messages,
    ShareGPT or alpaca rows, normalised to messages), "comparisons", "prompts", "labels" (rows as read)."""
    txt_document: Literal["file", "paragraph"] = "file"
    """What one document of a .txt file is: the whole file (up to 16 MB), or each run of lines ending at
    a blank line (for dumps of many documents)."""
    name: Optional[str] = None
    """A short label for logs and per-source metrics; None uses the first path."""

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, value):
        return [value] if isinstance(value, (str, os.PathLike)) else value

    @field_validator("paths")
    @classmethod
    def _plain_paths(cls, value):
        return [os.fspath(p) for p in value]

    @property
    def label(self) -> str:
        return self.name or self.paths[0]


def as_sources(value: Union[str, os.PathLike, Source, dict, Iterable]) -> list[Source]:
    """What a recipe gives (a path, a list of paths, Source mappings, or a mix) as a list of `Source`.
    Paths listed together form one source; each mapping is its own source."""
    if isinstance(value, (str, os.PathLike, Source, dict)):
        value = [value]
    items = list(value)
    if not items:
        raise DataError("no data sources given")
    paths = [os.fspath(v) for v in items if isinstance(v, (str, os.PathLike))]
    sources = [Source(paths=paths)] if paths else []
    for index, item in enumerate(items):
        if isinstance(item, Source):
            sources.append(item)
        elif isinstance(item, dict):
            try:
                sources.append(Source(**item))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "source"
                raise DataError(f"data source {index}: {where}: {first['msg']}") from None
        elif not isinstance(item, (str, os.PathLike)):
            raise DataError(f"data source {index}: expected a path or a mapping, got {type(item).__name__}")
    return sources


# ---------------------------------------------------------------- files

def _hf_arrow_files(directory: Path) -> list[Path]:
    if (directory / "dataset_dict.json").exists():
        splits = ", ".join(sorted(p.name for p in directory.iterdir() if p.is_dir()))
        raise DataError(f"{directory}: a DatasetDict; name one split's dir ({splits})")
    try:
        state = json.loads((directory / "state.json").read_text())
        return [directory / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{directory / 'state.json'}: not a `save_to_disk` state file ({one_line(exc)})") from None


def _is_hf_dir(path: Path) -> bool:
    return (path / "state.json").exists() or (path / "dataset_dict.json").exists()


def _expand(entry: str, forced: Optional[str]) -> list[tuple[Path, str]]:
    """(file, format) pairs one `paths` entry means, in sorted order."""
    path = Path(entry).expanduser()
    if any(c in entry for c in "*?["):
        matches = sorted(glob.glob(os.path.expanduser(entry), recursive=True))
        if not matches:
            raise DataError(f"{entry}: the glob matches no file")
        return [pair for match in matches for pair in _expand_existing(Path(match), forced, entry)]
    if not path.exists():
        raise DataError(f"{entry}: no such file or directory")
    return _expand_existing(path, forced, entry)


def _expand_existing(path: Path, forced: Optional[str], entry: str) -> list[tuple[Path, str]]:
    if path.is_dir():
        if forced == "hf" or (forced is None and _is_hf_dir(path)):
            return [(p, "hf") for p in _hf_arrow_files(path)]
        found = _walk(path, forced)
        if not found:
            raise DataError(f"{entry}: no data files in the directory (extensions: {', '.join(EXTENSIONS)})")
        return found
    fmt = forced or format_of(str(path))
    if fmt is None:
        raise DataError(f"{path}: cannot tell the format from the extension; set the source's format")
    if fmt == "hf":
        raise DataError(f"{path}: format hf needs a `save_to_disk` directory, not a file")
    return [(path, fmt)]


def _walk(directory: Path, forced: Optional[str]) -> list[tuple[Path, str]]:
    """Data files under a directory, sorted; a `save_to_disk` dir inside it counts as its Arrow files."""
    found = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue  # .git, .cache, editor files: never data
        if entry.is_dir():
            found += [(p, "hf") for p in _hf_arrow_files(entry)] if _is_hf_dir(entry) else _walk(entry, forced)
        elif (fmt := forced or format_of(str(entry))) and entry.is_file():
            found.append((entry, fmt))
    return found


def source_files(source: Source) -> list[SourceFile]:
    """The files a source means, in a fixed order (its `paths` in order, each sorted), each once."""
    seen, files = set(), []
    for entry in source.paths:
        for path, fmt in _expand(entry, source.format):
            key = os.path.realpath(path)
            if key in seen:
                continue
            seen.add(key)
            try:
                stat = path.stat()
            except OSError as exc:
                raise DataError(f"{path}: cannot read ({one_line(exc)})") from None
            files.append(SourceFile(path=str(path), format=fmt, size=stat.st_size, mtime_ns=stat.st_mtime_ns))
    return files


def fingerprint(source: Source) -> str:
    """Cheap identity of a source's data: reader settings and each file's name, size and mtime (no
    content read). `file_sha256` is the opt-in check that re-reads contents."""
    files = [[f.path, f.size, f.mtime_ns] for f in source_files(source)]
    settings = source.model_dump(include={"format", "text_field", "kind", "txt_document"})
    return hashlib.sha256(json.dumps({"files": files, "settings": settings}, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- parts

def plan_parts(files: list[SourceFile], *, part_bytes: int) -> list[Part]:
    """Cut files into parts of about `part_bytes` of text, in file order: the concatenation of the parts'
    records is the files' records in order, however many workers read them."""
    parts = []
    for file in files:
        if file.format == "jsonl" and file.size > part_bytes:
            starts = range(0, file.size, part_bytes)
            parts += [Part(file.path, file.format, s, min(s + part_bytes, file.size)) for s in starts]
        elif file.format == "parquet":
            parts += parquet_parts(file, part_bytes)
        else:
            parts.append(Part(file.path, file.format))
    return parts


# ---------------------------------------------------------------- records

def read_part(source: Source, part: Part) -> Iterator[Any]:
    """The records of one part, in order, with a `Bad` in place of each record that can't be used.
    A file that cannot be read at all raises `DataError`."""
    if part.format.startswith("txt"):
        if source.kind != "text":
            raise DataError(f"{part.path}: a .txt file holds text, not {source.kind}")
        yield from txt_documents(part, whole_file=source.txt_document == "file")
        return
    for where, row in read_rows(part, source.text_field if source.kind == "text" else None):
        yield row if isinstance(row, Bad) else _as_record(source, where, row)


def _as_record(source: Source, where, row):
    if not isinstance(row, dict):
        return Bad(where(), f"{type_name(row)}, not a JSON object")
    if source.kind == "text":
        text = row.get(source.text_field)
        if isinstance(text, str):
            return text
        if source.text_field not in row:
            return Bad(where(), f"no field {source.text_field!r} (fields: {', '.join(list(row)[:8])})")
        return Bad(where(), f"{source.text_field!r} is {type_name(text)}, not a string")
    if source.kind == "conversations":
        return normalise_conversation(row, where)
    if source.kind == "comparisons":
        return check_comparison(row, where)
    if source.kind == "prompts":
        return check_prompt(row, where)
    return row


@dataclass
class ReadCounts:
    """What reading a source (or a part of it) met: usable records, skipped ones, the first few reasons."""

    records: int = 0
    bad: int = 0
    empty: int = 0
    first_bad: list[str] = field(default_factory=list)
    rejected: Optional[list] = None
    """Every skipped record (`Bad`: where and why) when a list is given: what the run sets aside on file."""

    def add_bad(self, bad: Bad) -> None:
        self.bad += 1
        if len(self.first_bad) < 3:
            self.first_bad.append(str(bad))
        if self.rejected is not None:
            self.rejected.append(bad)

    def merge(self, other: "ReadCounts") -> None:
        self.records, self.bad, self.empty = self.records + other.records, self.bad + other.bad, self.empty + other.empty
        self.first_bad = (self.first_bad + other.first_bad)[:3]


def check_bad_fraction(label: str, counts: ReadCounts, max_bad_fraction: float) -> None:
    total = counts.records + counts.bad
    if counts.bad and counts.bad > max_bad_fraction * total:
        raise DataError(
            f"source {label!r}: {counts.bad} of {total} records unusable ({counts.bad / total:.1%} > "
            f"max_bad_fraction {max_bad_fraction:.1%}); first: {counts.first_bad[0]}")


def read_records(source: Source, *, max_bad_fraction: float = 0.01, counts: Optional[ReadCounts] = None) -> Iterator[Any]:
    """Every usable record of a source, in order (empty documents dropped). Bad records are skipped and
    counted into `counts`; at the end, more than `max_bad_fraction` of them raises `DataError`."""
    counts = counts if counts is not None else ReadCounts()
    for part in plan_parts(source_files(source), part_bytes=WHOLE_FILES):
        for record in read_part(source, part):
            if isinstance(record, Bad):
                counts.add_bad(record)
            elif record == "":
                counts.empty += 1
            else:
                counts.records += 1
                yield record
    check_bad_fraction(source.label, counts, max_bad_fraction)


def sample_texts(sources: Iterable[Source], *, sample_bytes: int, seed: int = 0) -> Iterator[str]:
    """About `sample_bytes` of text documents for training a tokenizer, the same on every call: each
    source gets a share by weight, spread over its files (in a seeded order) from each file's start."""
    sources = [s for s in as_sources(sources) if s.kind == "text"]
    if not sources:
        raise DataError("no text sources to sample")
    total_weight = sum(s.weight for s in sources)
    for source in sources:
        files = source_files(source)
        random.Random(seed).shuffle(files)
        budget = sample_bytes * source.weight / total_weight
        for index, file in enumerate(files):
            share = budget / (len(files) - index)  # what small files leave over goes to later ones
            taken = 0
            for part in plan_parts([file], part_bytes=WHOLE_FILES):
                for record in read_part(source, part):
                    if taken >= share:
                        break
                    if isinstance(record, str) and record:
                        taken += len(record.encode("utf-8"))
                        yield record
            budget -= taken
            if budget <= 0:
                break


def estimate_text_bytes(source: Source, *, sample_disk_bytes: int = 1 << 20) -> tuple[float, list[str]]:
    """About how many bytes of text a source holds, and some of its documents, reading little: for each
    format, the share of text in a sample from one file's start, times the data size of every file of
    that format (its size uncompressed, from gzip's trailer or zstd's frame header when they say, from
    the sample's compression ratio otherwise; the text column's size for parquet and Arrow)."""
    by_format: dict[str, list[SourceFile]] = {}
    for file in source_files(source):
        by_format.setdefault(file.format, []).append(file)
    total, sample = 0.0, []
    for fmt, files in by_format.items():
        if fmt in ("parquet", "hf"):
            texts, covered = table_sample(files[0], source.text_field, sample_disk_bytes)
            sizes = [column_bytes(f, source.text_field) for f in files]
        else:
            texts, covered, ratio = head_sample(files[0], source.text_field, sample_disk_bytes)
            sizes = [uncompressed_size(f) or f.size * ratio for f in files]
        total += sum(len(t.encode("utf-8")) for t in texts) / max(covered, 1) * sum(sizes)
        sample += texts
    return total, sample


# ---------------------------------------------------------------- conversations

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}
_ROLES = ("system", "user", "assistant")


def normalise_conversation(row: dict, where) -> Union[dict, Bad]:
    """`{"messages": [{"role", "content"}, ...]}` from a messages, ShareGPT (`conversations` with
    `from`/`value`) or alpaca (`instruction`/`input`/`output`) row; a `Bad` naming the row and field
    otherwise. `where` is a callable giving the row's location (computed only when needed)."""
    if "messages" in row:
        return _check_turns(row["messages"], "messages", "role", "content", {r: r for r in _ROLES}, where)
    if "conversations" in row:
        return _check_turns(row["conversations"], "conversations", "from", "value", _SHAREGPT_ROLES, where)
    if "instruction" in row and "output" in row:
        for key in ("instruction", "input", "output", "system"):
            if row.get(key) is not None and not isinstance(row[key], str):
                return Bad(where(), f"{key!r} is {type_name(row[key])}, not a string")
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        return {"messages": messages + [{"role": "user", "content": prompt},
                                        {"role": "assistant", "content": row["output"]}]}
    fields = ", ".join(list(row)[:8])
    return Bad(where(), f"no 'messages', 'conversations' or 'instruction'/'output' field (fields: {fields})")


def _messages_problem(value, name: str, default_role: str) -> Optional[str]:
    """Why `value` is neither a string nor a non-empty list of {role, content: string} messages (None when it is)."""
    if isinstance(value, str):
        return None
    if not isinstance(value, list) or not value:
        return f"{name!r} is {type_name(value)}, not a string or a non-empty list of messages"
    for index, turn in enumerate(value):
        if not isinstance(turn, dict):
            return f"{name}[{index}] is {type_name(turn)}, not an object"
        if turn.get("role", default_role) not in _ROLES:
            return f"{name}[{index}].role is {turn.get('role')!r}, not one of {', '.join(_ROLES)}"
        if not isinstance(turn.get("content"), str):
            return f"{name}[{index}].content is {type_name(turn.get('content'))}, not a string"
    return None


def check_comparison(row: dict, where) -> Union[dict, Bad]:
    """A comparison `{"prompt", "chosen", "rejected"[, "margin"]}` (each a string or messages), else a `Bad`."""
    missing = [key for key in ("prompt", "chosen", "rejected") if key not in row]
    if missing:
        return Bad(where(), f"no {', '.join(repr(k) for k in missing)} field (fields: {', '.join(list(row)[:8])})")
    for key, role in (("prompt", "user"), ("chosen", "assistant"), ("rejected", "assistant")):
        problem = _messages_problem(row[key], key, role)
        if problem:
            return Bad(where(), problem)
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        return Bad(where(), f"'margin' is {type_name(margin)}, not a number")
    return row


def check_prompt(row: dict, where) -> Union[dict, Bad]:
    """A prompt `{"prompt": str | messages}` or `{"messages": [...]}` with a user turn, else a `Bad`."""
    key = "prompt" if "prompt" in row else "messages" if "messages" in row else None
    if key is None:
        return Bad(where(), f"no 'prompt' or 'messages' field (fields: {', '.join(list(row)[:8])})")
    problem = _messages_problem(row[key], key, "user")
    if problem:
        return Bad(where(), problem)
    if isinstance(row[key], list) and not any(turn.get("role", "user") == "user" for turn in row[key]):
        return Bad(where(), f"{key!r} has no user turn")
    if row.get("split") is not None and row["split"] not in ("dev", "test"):
        return Bad(where(), f"'split' is {row['split']!r}, not dev or test")
    return row


def _check_turns(turns, name: str, role_key: str, text_key: str, roles: dict, where) -> Union[dict, Bad]:
    if not isinstance(turns, list) or not turns:
        return Bad(where(), f"{name!r} is {type_name(turns)}, not a non-empty list of turns")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return Bad(where(), f"{name}[{index}] is {type_name(turn)}, not an object")
        role = roles.get(str(turn.get(role_key, "")).lower())
        if role is None:
            known = ", ".join(sorted(roles))
            return Bad(where(), f"{name}[{index}].{role_key} is {turn.get(role_key)!r}, not one of {known}")
        if not isinstance(turn.get(text_key), str):
            return Bad(where(), f"{name}[{index}].{text_key} is {type_name(turn.get(text_key))}, not a string")
        messages.append({"role": role, "content": turn[text_key]})
    if messages[-1]["role"] != "assistant":
        return Bad(where(), f"{name!r} does not end with an assistant turn (the reply SFT learns)")
    if not any(m["role"] == "user" for m in messages):
        return Bad(where(), f"{name!r} has no user turn")
    return {"messages": messages}
