"""Ingest a labeler export: read it, validate every unit, quarantine what cannot be used.

    chatsmith labels ingest --format FMT INPUT --out DIR

In:  INPUT in one of labeling.readers.FORMATS.
Out: DIR/accepted.jsonl  native records (labeling.schema), each with provenance;
     DIR/rejected.jsonl  one line per unit set aside: {"line", "part", "reason", "detail", "raw", ...};
     DIR/summary.json    {"read", "accepted", "rejected", "reasons": {reason: count}, "kinds", ...}.
`read` counts every unit examined (a non-blank line; an annotation or response of a one-document
format; a message group of an OA tree) and always equals accepted + rejected.

Ingest streams: memory holds one unit at a time plus an 8-byte digest per accepted record (for
duplicate detection).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from pydantic import ValidationError

from labeling.readers import FORMATS, READERS, InputError, Item
from labeling.schema import RECORD_ADAPTER, SCHEMA_VERSION, Comparison, Demonstration, Rewrite, content_id

MAX_RAW_CHARS = 20_000  # rejected.jsonl keeps the raw text up to this length (and says if it cut)


class FormatError(InputError):
    """An unknown --format."""


def _validation_reason(err: ValidationError) -> tuple[str, str]:
    errors = err.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    detail = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    if any(e.get("type") == "missing" for e in errors):
        missing = [".".join(str(p) for p in e.get("loc", ())) for e in errors if e.get("type") == "missing"]
        return "missing_field", "missing " + ", ".join(missing)
    if any("rank mismatch" in str(e.get("msg")) for e in errors):
        return "rank_mismatch", detail
    if any(e.get("type") == "union_tag_invalid" or e.get("type") == "union_tag_not_found" for e in errors):
        return "unknown_kind", detail
    return "invalid_field", detail


def _content_problem(record) -> tuple[str, str] | None:
    if isinstance(record, Comparison):
        if any(not c.content.strip() for c in record.candidates):
            empty = [c.id for c in record.candidates if not c.content.strip()]
            return "empty_reply", f"candidate(s) {empty} are empty"
        contents = [c.content.strip() for c in record.candidates]
        if len(set(contents)) != len(contents):
            return "identical_replies", "two or more candidates have the same text"
    elif isinstance(record, (Demonstration, Rewrite)):
        if not record.reply.strip():
            return "empty_reply", "the reply is empty"
        if isinstance(record, Rewrite) and record.reply.strip() == record.original.strip():
            return "identical_replies", "the rewrite equals the original"
    if not any(m.content.strip() for m in record.prompt if m.role == "user"):
        return "empty_prompt", "the prompt has no user text"
    return None


def _raw_text(raw: bytes) -> tuple[str, bool]:
    text = raw.decode("utf-8", errors="backslashreplace")
    if len(text) > MAX_RAW_CHARS:
        return text[:MAX_RAW_CHARS], True
    return text, False


def load_tasks(path: str | os.PathLike) -> dict[str, dict]:
    """task id -> task dict, from a tasks.jsonl written by labeling.tasks.write_tasks."""
    tasks = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                task = json.loads(line)
                tasks[task["task_id"]] = task
    return tasks


def ingest(fmt: str, input_path: str | os.PathLike, out_dir: str | os.PathLike, *, tasks_path: str | os.PathLike | None = None) -> dict:
    """Read `input_path` in format `fmt`; write accepted/rejected JSONL and summary.json to `out_dir`.

    `tasks_path` (label-studio only): the tasks.jsonl the export was made from; annotations are
    matched to it by task id. Returns the summary dict (also written to out_dir/summary.json).
    Raises InputError (a user error: one line, no traceback at the CLI) when the input cannot be
    read at all or `fmt` is unknown; bad content never raises, it is quarantined."""
    if fmt not in READERS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    input_path, out_dir = Path(input_path), Path(out_dir)
    if not input_path.exists():
        raise InputError(f"{input_path}: no such file")
    if input_path.is_dir():
        raise InputError(f"{input_path} is a directory, not a file")
    kwargs = {}
    if tasks_path is not None:
        if fmt != "label-studio":
            raise InputError("--tasks only applies to --format label-studio")
        try:
            kwargs["tasks"] = load_tasks(tasks_path)
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"cannot read tasks file {tasks_path}: {err}") from None
    out_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    reasons: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    seen: set[int] = set()
    read = accepted = 0
    source = str(input_path)
    accepted_tmp, rejected_tmp = out_dir / "accepted.jsonl.tmp", out_dir / "rejected.jsonl.tmp"
    with open(accepted_tmp, "w", encoding="utf-8") as good, open(rejected_tmp, "w", encoding="utf-8") as bad:

        def set_aside(item: Item, reason: str, detail: str) -> None:
            raw, cut = _raw_text(item.raw)
            row = {"source_format": fmt, "file": source, "line": item.line, "part": item.part,
                   "reason": reason, "detail": detail, "sha256": item.sha256, "raw": raw}
            if cut:
                row["raw_truncated"] = True
            bad.write(json.dumps(row, ensure_ascii=False) + "\n")
            reasons[reason] += 1

        for item in READERS[fmt](input_path, **kwargs):
            read += 1
            if item.reason is not None:
                set_aside(item, item.reason, item.detail)
                continue
            fields = dict(item.record)
            fields.pop("provenance", None)
            fields["provenance"] = {"source_format": fmt, "file": source, "line": item.line, "sha256": item.sha256, "part": item.part}
            try:
                record = RECORD_ADAPTER.validate_python(fields)
            except ValidationError as err:
                set_aside(item, *_validation_reason(err))
                continue
            if record.status != "submitted":
                set_aside(item, f"status_{record.status}", f"a {record.status} judgment does not count")
                continue
            problem = _content_problem(record)
            if problem:
                set_aside(item, *problem)
                continue
            digest = content_id(record)
            key = int(digest[:16], 16)
            if key in seen:
                set_aside(item, "duplicate", f"same content as an earlier record ({digest[:16]})")
                continue
            seen.add(key)
            if not record.id:
                record = record.model_copy(update={"id": digest[:32]})
            good.write(record.model_dump_json() + "\n")
            accepted += 1
            kinds[record.kind] += 1
    os.replace(accepted_tmp, out_dir / "accepted.jsonl")
    os.replace(rejected_tmp, out_dir / "rejected.jsonl")

    rejected = sum(reasons.values())
    elapsed = time.perf_counter() - start
    summary = {
        "format": fmt,
        "input": source,
        "schema_version": SCHEMA_VERSION,
        "read": read,
        "accepted": accepted,
        "rejected": rejected,
        "reasons": dict(sorted(reasons.items())),
        "kinds": dict(sorted(kinds.items())),
        "seconds": round(elapsed, 3),
        "accepted_path": str(out_dir / "accepted.jsonl"),
        "rejected_path": str(out_dir / "rejected.jsonl"),
    }
    assert read == accepted + rejected, "ingest lost count of a unit"  # an invariant, not user input
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / "summary.json")
    return summary


def read_records(ingest_dir: str | os.PathLike):
    """Yield the accepted records of an ingest directory (or of an accepted.jsonl path)."""
    path = Path(ingest_dir)
    if path.is_dir():
        path = path / "accepted.jsonl"
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield RECORD_ADAPTER.validate_json(line)
