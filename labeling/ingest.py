"""Ingest a labeler export: read it, validate every unit, quarantine what cannot be used.

    chatsmith labels ingest --format FMT INPUT --out DIR [--tasks TASKS_JSONL] [--hh-demonstrations]

In:  INPUT in one of labeling.readers.FORMATS.
Out: DIR/accepted.jsonl  native records (labeling.schema), each with provenance;
     DIR/rejected.jsonl  one line per unit set aside: {"line", "part", "reason", "detail", "raw", ...};
     DIR/summary.json    {"read", "accepted", "rejected", "reasons": {reason: count}, "kinds", ...}.
`read` counts every unit examined (a non-blank line; an annotation or response of a one-document
format; a message group of an OA tree) and always equals accepted + rejected.

An input that yields no good record at all (empty, a Git LFS pointer, binary data, another format,
nothing but bad records) raises `NothingAccepted` after writing the three files: one line saying
why, and which other reader would accept the file when one would (the CLI exits 1).

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

from labeling.readers import FORMATS, LFS_MAGIC, READERS, UTF8_BOM, InputError, Item
from labeling.schema import RECORD_ADAPTER, SCHEMA_VERSION, Comparison, Demonstration, Rewrite, content_id

MAX_RAW_CHARS = 20_000  # rejected.jsonl keeps the raw text up to this length (and says if it cut)


class FormatError(InputError):
    """An unknown --format."""


class NothingAccepted(InputError):
    """The input gave no good record: the message says why in one line; `summary` has the counts
    (accepted.jsonl, rejected.jsonl and summary.json are written before it is raised)."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


# Reader options: which format takes each (anything else is a user error).
OPTIONS = {"tasks": "label-studio", "hh_demonstrations": "hh-rlhf"}
SNIFF_UNITS = 200  # units each other reader tries when looking for the format a file is really in


def _validation_reason(err: ValidationError) -> tuple[str, str]:
    errors = err.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    detail = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    if any(e.get("type") == "string_too_short" and e.get("loc", ())[-1:] == ("reply",) for e in errors):
        return "empty_reply", "the reply is empty"
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


def check_item(item: Item, fmt: str, source: str) -> tuple[object | None, str, str]:
    """(the validated record, or None with the reason and detail it is set aside). No duplicates check."""
    if item.reason is not None:
        return None, item.reason, item.detail
    fields = dict(item.record)
    fields.pop("provenance", None)
    fields["provenance"] = {"source_format": fmt, "file": source, "line": item.line, "sha256": item.sha256, "part": item.part}
    try:
        record = RECORD_ADAPTER.validate_python(fields)
    except ValidationError as err:
        return None, *_validation_reason(err)
    if record.status != "submitted":
        return None, f"status_{record.status}", f"a {record.status} judgment does not count"
    problem = _content_problem(record)
    if problem:
        return None, *problem
    return record, "", ""


def _accepts_any(fmt: str, path: Path) -> bool:
    """Whether reader `fmt` accepts at least one record among the first SNIFF_UNITS units of `path`."""
    try:
        for count, item in enumerate(READERS[fmt](path), start=1):
            if check_item(item, fmt, str(path))[0] is not None:
                return True
            if count >= SNIFF_UNITS:
                return False
    except (InputError, OSError, ValueError):
        return False
    return False


def sniff(fmt: str, path: str | os.PathLike) -> str | None:
    """Preflight: None when reader `fmt` accepts a record among the first units of `path`; otherwise one
    line saying why not (missing, empty, LFS pointer, binary, or the format it looks like). Writes nothing."""
    path = Path(path)
    if not path.is_file():
        return f"{path}: no such file"
    if path.stat().st_size == 0:
        return f"{path} is empty: no records to ingest"
    if _accepts_any(fmt, path):
        return None
    head = _head(path)
    if head.removeprefix(UTF8_BOM).startswith(LFS_MAGIC):
        return f"{path} is a Git LFS pointer, not the data: run `git lfs pull` (or download the file itself)"
    what = _not_text(head)
    if what:
        return f"{path} is {what.partition(': ')[0]}, not {_a(fmt)} export"
    other = next((o for o in FORMATS if o != fmt and _accepts_any(o, path)), None)
    hint = f"; looks like {_a(other)} export; use format {other}" if other else ""
    return f"{path}: no record among the first {SNIFF_UNITS} is a usable {fmt} record{hint}"


def _head(path: Path, size: int = 8192) -> bytes:
    import gzip

    with open(path, "rb") as handle:
        head = handle.read(size)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as handle:
                return handle.read(size)
        except (OSError, EOFError):
            return head
    return head


def _not_text(head: bytes) -> str | None:
    """What the file is when it is not UTF-8 text ("WHAT" or "WHAT: ADVICE"); None for text."""
    magic = {b"PAR1": "a Parquet file: convert it to JSONL first (pandas.read_parquet(F).to_json(OUT, orient='records', lines=True))",
             b"PK\x03\x04": "a zip archive: unzip it and ingest the export inside",
             b"SQLite format 3": "an SQLite database", b"\x89PNG": "a PNG image", b"%PDF": "a PDF document"}
    for prefix, what in magic.items():
        if head.startswith(prefix):
            return what
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text: save it as UTF-8"
    if b"\x00" in head:
        return "binary data"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a character cut at the end of the sample
            return "binary data (not UTF-8 text)"
    return None


def _a(fmt: str) -> str:
    return f"{'an' if fmt[0] in 'aeiou' else 'a'} {fmt}"


def nothing_accepted_message(fmt: str, path: Path, summary: dict, out_dir: Path) -> str:
    """One line: why nothing in `path` was accepted as `fmt`, and the format it looks like."""
    if summary["read"] == 0:
        return f"{path} is empty: no records to ingest"
    head = _head(path)
    if head.removeprefix(UTF8_BOM).startswith(LFS_MAGIC):
        return f"{path} is a Git LFS pointer, not the data: run `git lfs pull` (or download the file itself)"
    what = _not_text(head)
    if what:
        what, _, advice = what.partition(": ")
        return f"{path} is {what}, not {_a(fmt)} export" + (f": {advice}" if advice else "")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["reasons"].items(), key=lambda kv: -kv[1]))
    message = (f"nothing accepted from {path} as {fmt}: read {summary['read']}, all rejected ({reasons}; "
               f"see {out_dir / 'rejected.jsonl'})")
    for other in FORMATS:
        if other != fmt and _accepts_any(other, path):
            return f"{message}; looks like {_a(other)} export; use --format {other}"
    return message


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


def _reader_options(fmt: str, tasks_path: str | os.PathLike | None, hh_demonstrations: bool) -> dict:
    """The keyword arguments for reader `fmt`. Raises InputError for an option of another format, or a tasks
    file that cannot be read."""
    kwargs = {}
    for option, given in (("tasks", tasks_path is not None), ("hh_demonstrations", hh_demonstrations)):
        if given and fmt != OPTIONS[option]:
            raise InputError(f"--{option.replace('_', '-')} only applies to --format {OPTIONS[option]}")
    if hh_demonstrations:
        kwargs["hh_demonstrations"] = True
    if tasks_path is not None:
        try:
            kwargs["tasks"] = load_tasks(tasks_path)
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"cannot read tasks file {tasks_path}: {err}") from None
    return kwargs


def _accept(item: Item, fmt: str, source: str, seen: set[int]) -> tuple[object | None, str, str]:
    """check_item, then the duplicate check: (the record to write, or None with the reason and detail it is set
    aside). `seen` holds the digests of the records accepted so far; this adds the record's. A record without an
    id is given one from its content."""
    record, reason, detail = check_item(item, fmt, source)
    if record is None:
        return None, reason, detail
    digest = content_id(record)
    key = int(digest[:16], 16)
    if key in seen:
        return None, "duplicate", f"same content as an earlier record ({digest[:16]})"
    seen.add(key)
    if not record.id:
        record = record.model_copy(update={"id": digest[:32]})
    return record, "", ""


def _rejected_row(fmt: str, source: str, item: Item, reason: str, detail: str) -> dict:
    """The rejected.jsonl line of a unit set aside: where it came from, why, and its raw text (cut to
    MAX_RAW_CHARS, saying so)."""
    raw, cut = _raw_text(item.raw)
    row = {"source_format": fmt, "file": source, "line": item.line, "part": item.part,
           "reason": reason, "detail": detail, "sha256": item.sha256, "raw": raw}
    if cut:
        row["raw_truncated"] = True
    return row


def _sort_units(fmt: str, input_path: Path, out_dir: Path, kwargs: dict) -> tuple[int, Counter[str], Counter[str]]:
    """Reads every unit of `input_path` with reader `fmt`, writing each accepted record to out_dir/accepted.jsonl
    and each unit set aside to out_dir/rejected.jsonl. Returns (units read, records accepted per kind, units
    rejected per reason)."""
    reasons: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    seen: set[int] = set()
    read = 0
    source = str(input_path)
    # written under temporary names and renamed at the end, so an interrupted ingest leaves no partial output
    accepted_tmp, rejected_tmp = out_dir / "accepted.jsonl.tmp", out_dir / "rejected.jsonl.tmp"
    with open(accepted_tmp, "w", encoding="utf-8") as good, open(rejected_tmp, "w", encoding="utf-8") as bad:
        for item in READERS[fmt](input_path, **kwargs):
            read += 1
            record, reason, detail = _accept(item, fmt, source, seen)
            if record is None:
                bad.write(json.dumps(_rejected_row(fmt, source, item, reason, detail), ensure_ascii=False) + "\n")
                reasons[reason] += 1
                continue
            good.write(record.model_dump_json() + "\n")
            kinds[record.kind] += 1
    os.replace(accepted_tmp, out_dir / "accepted.jsonl")
    os.replace(rejected_tmp, out_dir / "rejected.jsonl")
    return read, kinds, reasons


def ingest(fmt: str, input_path: str | os.PathLike, out_dir: str | os.PathLike, *, tasks_path: str | os.PathLike | None = None,
           hh_demonstrations: bool = False) -> dict:
    """Read `input_path` in format `fmt`; write accepted/rejected JSONL and summary.json to `out_dir`.

    `tasks_path` (label-studio only): the tasks.jsonl the export was made from; annotations are
    matched to it by task id. `hh_demonstrations` (hh-rlhf only): also take each chosen transcript
    as a demonstration. Returns the summary dict (also written to out_dir/summary.json).
    Raises InputError (a user error: one line, no traceback at the CLI) when the input cannot be
    read at all or `fmt` is unknown, and NothingAccepted (after writing the outputs) when not one
    record was accepted; bad records next to good ones never raise, they are quarantined."""
    if fmt not in READERS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    input_path, out_dir = Path(input_path), Path(out_dir)
    if not input_path.exists():
        raise InputError(f"{input_path}: no such file")
    if input_path.is_dir():
        raise InputError(f"{input_path} is a directory, not a file")
    kwargs = _reader_options(fmt, tasks_path, hh_demonstrations)
    out_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    read, kinds, reasons = _sort_units(fmt, input_path, out_dir, kwargs)
    accepted, rejected = sum(kinds.values()), sum(reasons.values())
    elapsed = time.perf_counter() - start
    summary = {
        "format": fmt,
        "input": str(input_path),
        "options": {"tasks": str(tasks_path) if tasks_path is not None else None, "hh_demonstrations": hh_demonstrations},
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
    if accepted == 0:
        raise NothingAccepted(nothing_accepted_message(fmt, input_path, summary, out_dir), summary)
    return summary


def ingest_all(sources, out_root: str | os.PathLike) -> list[dict]:
    """Ingest several labeler exports, each into its own directory under `out_root`.

    `sources`: dicts {"format", "path", "tasks"?, "hh_demonstrations"?}, ingested in order into
    out_root/NN-FORMAT-STEM (NN = position). Returns their summaries, each with "dir" added; pass
    the dirs to labeling.build.build, which combines them. Raises on the first source that
    cannot be read or gives nothing (InputError / NothingAccepted): every listed export counts."""
    out_root = Path(out_root)
    summaries = []
    for number, source in enumerate(sources):
        path = Path(source["path"])
        stem = path.name.split(".")[0] or "export"
        directory = out_root / f"{number:02d}-{source['format']}-{stem}"
        summary = ingest(source["format"], path, directory, tasks_path=source.get("tasks"),
                         hh_demonstrations=bool(source.get("hh_demonstrations", False)))
        summaries.append({**summary, "dir": str(directory)})
    return summaries


def read_records(ingest_dir: str | os.PathLike):
    """Yield the accepted records of an ingest directory (or of an accepted.jsonl path)."""
    path = Path(ingest_dir)
    if path.is_dir():
        path = path / "accepted.jsonl"
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield RECORD_ADAPTER.validate_json(line)
