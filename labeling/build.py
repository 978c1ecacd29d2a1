"""Build training datasets from ingested records (and plain training files), combined.

    chatsmith labels build [DIR ...] --out DATA [--sft FILE ...] [--comparisons FILE ...]
                           [--sft-eval FILE ...] [--comparisons-eval FILE ...] [--eval-fraction 0.1 --seed 0]
                           [--min-control-accuracy X ...] [--exclude-flagged]

In:  ingest directories (DIR/accepted.jsonl from `chatsmith labels ingest`), and optionally plain
     files already in training format: SFT conversations {"messages": [...]} and comparisons
     {"prompt", "chosen", "rejected", "margin"?} (`*_eval` files: rows that are always held out).
Out: DATA/comparisons_train.jsonl, comparisons_eval.jsonl  TRL conversational preference rows
         {"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [...], "margin"?}
     DATA/sft_train.jsonl, sft_eval.jsonl                   {"messages": [...]}
     DATA/build.json                                        counts (per source and kind) and paths
     DATA/excluded.jsonl                                    judgments of flagged labelers left out, with the reason
     DATA/screening.json                                    per-labeler screening figures (when screened)

Every source is combined with the others, none replaces another. A ranking of K replies becomes
every pair from different tie groups; the margin is the difference of the two replies' `overall`
ratings when both have one and it agrees with the ranking. Demonstrations become SFT
conversations; a rewrite becomes an SFT conversation (the corrected reply) and a comparison
(corrected reply > the original). A record that appears in two ingest directories (same content,
same labeler) is kept once and counted as a duplicate. Judgments on control tasks never become rows;
with screening (`screening=`, labeling.screening) flagged labelers' judgments can be left out, each
kept in excluded.jsonl: read = kept + duplicates + controls + excluded.

The split is by conversation (labeling.schema.split_key: the opening user turn): eval prompts are
chosen by a seeded hash, plus every prompt of an `*_eval` file, so no eval prompt has a row in
train — not even inside a longer conversation — and a prompt lands on the same side for
comparisons and SFT.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TextIO

from labeling.controls import is_control
from labeling.ingest import read_records
from labeling.readers import json_objects
from labeling.schema import Comparison, Demonstration, Rewrite, content_id, split_key

if TYPE_CHECKING:
    from labeling.screening import Screening

MARGIN_SCALE = "overall"


def comparison_pairs(record: Comparison) -> tuple[list[dict], int]:
    """(TRL preference rows, number of tied pairs dropped) for one comparison."""
    position = {cid: group_index for group_index, group in enumerate(record.ranking) for cid in group}
    by_id = {c.id: c for c in record.candidates}
    prompt = [m.model_dump() for m in record.prompt]
    rows, ties = [], 0
    for a, b in combinations([c.id for c in record.candidates], 2):
        if position[a] == position[b]:
            ties += 1
            continue
        chosen, rejected = (a, b) if position[a] < position[b] else (b, a)
        row = {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": by_id[chosen].content}],
            "rejected": [{"role": "assistant", "content": by_id[rejected].content}],
        }
        chosen_rating = record.ratings.get(chosen, {}).get(MARGIN_SCALE)
        rejected_rating = record.ratings.get(rejected, {}).get(MARGIN_SCALE)
        if chosen_rating is not None and rejected_rating is not None and chosen_rating > rejected_rating:
            row["margin"] = float(chosen_rating - rejected_rating)
        rows.append(row)
    return rows, ties


def sft_row(record: Demonstration | Rewrite) -> dict:
    return {"messages": [m.model_dump() for m in record.prompt] + [{"role": "assistant", "content": record.reply}]}


def rewrite_pair(record: Rewrite) -> dict:
    """The comparison a rewrite implies: the labeler's corrected reply over the original."""
    return {"prompt": [m.model_dump() for m in record.prompt],
            "chosen": [{"role": "assistant", "content": record.reply}],
            "rejected": [{"role": "assistant", "content": record.original}]}


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def eval_prompts(keys: set[str], *, eval_fraction: float, seed: int) -> set[str]:
    """The prompt keys that go to eval: the round(fraction * n) smallest seeded hashes
    (at least one when the fraction is positive and there are two prompts or more)."""
    if eval_fraction <= 0 or not keys:
        return set()
    count = round(eval_fraction * len(keys))
    if count == 0 and len(keys) >= 2:
        count = 1
    count = min(count, len(keys) - 1) if len(keys) >= 2 else count
    return set(sorted(keys, key=lambda k: _rank(seed, k))[:count])


# ---------------------------------------------------------------------------------------------
# Sources: what build reads, one at a time


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # "ingest" (a labeling ingest dir), "sft" or "comparisons" (a plain training file)
    held_out: bool = False  # a `*_eval` file: every row goes to eval
    kept_in_train: bool = False  # a train file split before (the demo world's): its prompts are not drawn for eval

    @property
    def name(self) -> str:
        return str(self.path)

    def describe(self) -> str:
        if self.kind != "ingest":
            return f"{self.kind}{'-eval' if self.held_out else '-train' if self.kept_in_train else ''} file"
        summary = self.path / "summary.json"
        try:
            return json.loads(summary.read_text(encoding="utf-8")).get("format") or "ingest"
        except (OSError, ValueError):
            return "ingest"


@dataclass
class Unit:
    """One record (or plain row) of a source and the rows it gives."""

    kind: str  # demonstration / rewrite / comparison, or conversation / pair for plain rows
    key: str  # split key
    digest: str  # duplicate detection
    sft: list[dict]
    comparisons: list[dict]
    ties: int = 0
    control: bool = False  # a judgment on a control task: never training data
    labeler: str | None = None  # who made it (records of ingest dirs)
    record: object = None  # the record itself (ingest dirs), for excluded.jsonl
    prompt: list | None = None  # the prompt messages, for `split_group`


def _as_messages(value, role: str, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise ValueError(f"{where}: expected a string or a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _plain_units(source: Source) -> Iterator[Unit]:
    """Rows of a plain training file, checked (a bad row is the user's own file: an error naming it)."""
    for where, row in json_objects(source.path):
        if source.kind == "sft":
            messages = _as_messages(row.get("messages"), "user", where)
            if messages[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in messages):
                raise ValueError(f"{where}: a conversation needs `messages` with a user turn, ending with an assistant turn")
            out = {"messages": messages}
            yield Unit("conversation", split_key(messages[:-1]), _digest(out), [out], [], prompt=messages[:-1])
        else:
            missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
            if missing:
                raise ValueError(f"{where}: a comparison needs {', '.join(missing)}")
            out = {"prompt": _as_messages(row["prompt"], "user", where),
                   "chosen": _as_messages(row["chosen"], "assistant", where),
                   "rejected": _as_messages(row["rejected"], "assistant", where)}
            if "margin" in row:
                out["margin"] = float(row["margin"])
            yield Unit("pair", split_key(out["prompt"]), _digest(out), [], [out], prompt=out["prompt"])


def _digest(row: dict) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _units(source: Source) -> Iterator[Unit]:
    if source.kind != "ingest":
        yield from _plain_units(source)
        return
    for record in read_records(source.path):
        key, digest = split_key(record.prompt), content_id(record)
        who = {"labeler": record.labeler.id if record.labeler else None, "record": record, "prompt": record.prompt}
        if isinstance(record, Comparison):
            rows, ties = comparison_pairs(record)
            yield Unit("comparison", key, digest, [], rows, ties, control=is_control(record), **who)
        elif isinstance(record, Rewrite):
            yield Unit("rewrite", key, digest, [sft_row(record)], [rewrite_pair(record)], **who)
        else:
            yield Unit("demonstration", key, digest, [sft_row(record)], [], **who)


def _sources(ingest_dirs, sft_files, comparison_files, sft_eval_files, comparison_eval_files,
             sft_train_files=()) -> list[Source]:
    if ingest_dirs is None:
        ingest_dirs = []
    elif isinstance(ingest_dirs, (str, os.PathLike)):
        ingest_dirs = [ingest_dirs]
    sources = [Source(Path(d), "ingest") for d in ingest_dirs]
    sources += [Source(Path(f), "sft", kept_in_train=True) for f in sft_train_files]
    for files, kind, held_out in ((sft_files, "sft", False), (comparison_files, "comparisons", False),
                                  (sft_eval_files, "sft", True), (comparison_eval_files, "comparisons", True)):
        sources += [Source(Path(f), kind, held_out) for f in files]
    for source in sources:
        if source.kind == "ingest" and not (source.path / "accepted.jsonl").exists() and not source.path.is_file():
            raise FileNotFoundError(f"{source.path}: not an ingest directory (no accepted.jsonl); run `chatsmith labels ingest` first")
        if source.kind != "ingest" and not source.path.is_file():
            raise FileNotFoundError(f"{source.path}: no such file")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"a source is listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    if not sources:
        raise ValueError("nothing to build: give ingest directories or training files")
    return sources


def _screening(screening, sources: list[Source]):
    """A Screening from what build was given: a Screening, a ScreenConfig (or its dict: the ingest
    sources are screened now), or None."""
    if screening is None:
        return None
    from labeling.screening import ScreenConfig, Screening, screen

    if isinstance(screening, Screening):
        return screening
    if isinstance(screening, (ScreenConfig, dict)):
        return screen([s.path for s in sources if s.kind == "ingest"], screening)
    raise TypeError(f"screening: expected a Screening or a ScreenConfig, got {type(screening).__name__}")


_DATASETS = ("comparisons_train", "comparisons_eval", "sft_train", "sft_eval")


def _split_prompts(sources: list[Source], eval_fraction: float, seed: int,
                   split_group: Callable[[str], str | None] | None = None) -> tuple[set[str], set[str]]:
    """The first pass, over the prompts only (digests, no rows): (every prompt key, the keys that go to eval).
    A control's prompt is none of them (it never trains); an excluded judgment's is, so screening moves no prompt.
    With `split_group` (the opening user turn's text -> a group, or None for its own), the drawn prompts go to eval
    a whole group at a time: `eval_fraction` of the groups."""
    keys: set[str] = set()
    fixed: set[str] = set()  # prompts of `*_eval` files: always eval
    kept: set[str] = set()  # prompts of train files split before: never drawn for eval
    group_of: dict[str, str] = {}
    for source in sources:
        for unit in _units(source):
            if not unit.control:
                (fixed if source.held_out else kept if source.kept_in_train else keys).add(unit.key)
                if split_group is not None and unit.key not in group_of:
                    group_of[unit.key] = split_group(_opening(unit.prompt)) or unit.key
    drawn = keys - fixed - kept
    if split_group is None:
        return keys | fixed | kept, fixed | eval_prompts(drawn, eval_fraction=eval_fraction, seed=seed)
    groups = eval_prompts({group_of[k] for k in drawn}, eval_fraction=eval_fraction, seed=seed)
    return keys | fixed | kept, fixed | {k for k in drawn if group_of[k] in groups}


def _opening(prompt) -> str:
    """The text of a prompt's opening user turn (what `split_key` keys on)."""
    for message in prompt or []:
        role, content = (message["role"], message["content"]) if isinstance(message, dict) else (message.role, message.content)
        if role == "user":
            return content
    return ""


@dataclass
class _Pass:
    """The writing pass of `build`: its open files, what it places units by, and what it counts."""

    files: dict[str, TextIO]  # each dataset and "excluded" -> its file, open under a temporary name
    held_out: set[str]  # the prompt keys that go to eval
    exclude: Screening | None  # whose flagged labelers' judgments are left out (None: nobody's)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_DATASETS, 0))  # rows per dataset
    # duplicates are told apart among records (by content id) and among plain rows, not across the two
    seen: dict[bool, set[int]] = field(default_factory=lambda: {True: set(), False: set()})
    by_source: dict[str, dict] = field(default_factory=dict)
    read: int = 0
    records: int = 0
    ties: int = 0
    duplicates: int = 0
    controls: int = 0
    excluded_by_reason: Counter[str] = field(default_factory=Counter)
    excluded_by_labeler: dict[str, Counter] = field(default_factory=dict)


def _write_excluded(run: _Pass, source: Source, unit: Unit) -> None:
    """Writes a flagged labeler's judgment to excluded.jsonl with the reasons they were flagged, and counts it."""
    reasons = run.exclude.flagged[unit.labeler]
    reason = "+".join(reasons)
    run.files["excluded"].write(json.dumps({
        "source": source.name, "labeler": unit.labeler, "reasons": reasons,
        "detail": run.exclude.detail.get(unit.labeler, ""),
        "record": json.loads(unit.record.model_dump_json())}, ensure_ascii=False) + "\n")
    run.excluded_by_reason[reason] += 1
    run.excluded_by_labeler.setdefault(unit.labeler, Counter())[reason] += 1


def _write_rows(run: _Pass, source: Source, unit: Unit) -> None:
    """Writes the SFT and comparison rows of a kept unit to train, or to eval for an `*_eval` source or a
    held-out prompt, and counts them."""
    run.records += 1
    run.ties += unit.ties
    split = "eval" if source.held_out or unit.key in run.held_out else "train"
    for dataset, rows in (("sft", unit.sft), ("comparisons", unit.comparisons)):
        for row in rows:
            run.files[f"{dataset}_{split}"].write(json.dumps(row, ensure_ascii=False) + "\n")
        run.counts[f"{dataset}_{split}"] += len(rows)


def _write_source(run: _Pass, source: Source) -> None:
    """Places every unit of `source` (a duplicate is dropped, a control counted, a flagged labeler's judgment
    excluded, any other written), and adds the source's entry to `run.by_source`."""
    kinds: dict[str, Counter] = {}
    here: Counter[str] = Counter()  # this source's read, duplicates, controls and excluded
    already = run.seen[source.kind == "ingest"]
    for unit in _units(source):
        run.read += 1
        here["read"] += 1
        marker = int(unit.digest[:16], 16)
        if marker in already:
            here["duplicates"] += 1
            continue
        already.add(marker)
        if unit.control:
            run.controls += 1
            here["controls"] += 1
            continue
        if run.exclude is not None and run.exclude.is_flagged(unit.labeler):
            _write_excluded(run, source, unit)
            here["excluded"] += 1
            continue
        _write_rows(run, source, unit)
        tally = kinds.setdefault(unit.kind, Counter())
        tally.update(records=1, sft_rows=len(unit.sft), comparison_rows=len(unit.comparisons))
    run.duplicates += here["duplicates"]
    run.by_source[source.name] = {"format": source.describe(), "duplicates": here["duplicates"]}
    if source.kind == "ingest":
        run.by_source[source.name].update(read=here["read"], controls=here["controls"], excluded=here["excluded"])
    run.by_source[source.name]["kinds"] = {k: dict(v) for k, v in sorted(kinds.items())}


def _write_datasets(sources: list[Source], out_dir: Path, held_out: set[str],
                    exclude: Screening | None) -> tuple[_Pass, dict[str, Path]]:
    """The second pass: writes the four datasets and excluded.jsonl from every source. Returns the pass (its
    counts) and the paths written."""
    paths = {name: out_dir / f"{name}.jsonl" for name in (*_DATASETS, "excluded")}
    # written under temporary names and renamed once all are done, so an interrupted build leaves no partial dataset
    files = {name: open(str(path) + ".tmp", "w", encoding="utf-8") for name, path in paths.items()}
    run = _Pass(files, held_out, exclude)
    try:
        for source in sources:
            _write_source(run, source)
    finally:
        for handle in files.values():
            handle.close()
    for path in paths.values():
        os.replace(str(path) + ".tmp", path)
    return run, paths


def _write_screening(screening: Screening | None, excluding: bool, out_dir: Path, paths: dict[str, Path]) -> dict | None:
    """Writes the screening figures to out_dir/screening.json (added to `paths`); returns the summary's
    "screening" entry, None without screening."""
    if screening is None:
        return None
    paths["screening"] = out_dir / "screening.json"
    paths["screening"].write_text(json.dumps(screening.to_dict(), indent=2) + "\n", encoding="utf-8")
    return {"exclude_flagged": excluding, "flagged": screening.flagged, "detail": screening.detail,
            "config": screening.config.model_dump()}


def build(ingest_dir=None, out_dir=None, *, eval_fraction: float = 0.1, seed: int = 0, sft_files=(), comparison_files=(),
          sft_eval_files=(), comparison_eval_files=(), sft_train_files=(), screening=None,
          split_group: Callable[[str], str | None] | None = None) -> dict:
    """Write the comparison and SFT datasets from every source into `out_dir`.

    `ingest_dir`: one ingest dir or a list; `sft_files`, `comparison_files`: plain training files
    split like the records; `sft_eval_files`, `comparison_eval_files`: rows always held out (their
    prompts are then kept out of train); `sft_train_files`: rows split before (the demo world's), whose
    prompts stay in train unless an `*_eval` file holds them. `split_group`: the opening user turn's text -> a group
    whose prompts are held out together (the demo: the fact a question asks, so the held-out comparisons are about
    facts no training comparison asks in another phrasing); None: each prompt its own.

    Judgments on control tasks never become rows (counted under `controls`). `screening`: a
    `labeling.screening.Screening` (from `screen`), or a `ScreenConfig` (the ingest dirs are screened
    here); with its `exclude_flagged`, every judgment of a flagged labeler is left out of train and
    eval and written to out_dir/excluded.jsonl ({"source", "labeler", "reasons", "detail", "record"});
    the figures go to out_dir/screening.json. The split does not depend on screening: the prompts of
    excluded judgments still take part in it, so a prompt is on the same side with or without.

    Returns {"comparisons_train", "comparisons_eval", "sft_train", "sft_eval" (row counts),
    "tied_pairs_dropped", "read", "records" (kept), "duplicates", "controls", "excluded": {"records",
    "by_reason", "by_labeler"}, "screening" (None, or {"exclude_flagged", "flagged", "detail", "config"}),
    "prompts", "eval_prompts", "sources", "by_source": {source: {"format", "duplicates", ["read",
    "controls", "excluded": ingest dirs], "kinds": {kind: {"records", "sft_rows", "comparison_rows"}}}},
    "paths": {name: path}}, with read == records + duplicates + controls + excluded["records"]."""
    if out_dir is None:
        raise TypeError("build() needs out_dir")
    if not 0 <= eval_fraction < 1 or math.isnan(eval_fraction):
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    sources = _sources(ingest_dir, sft_files, comparison_files, sft_eval_files, comparison_eval_files, sft_train_files)
    screening = _screening(screening, sources)
    excluding = screening is not None and screening.config.exclude_flagged
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    prompts, held_out = _split_prompts(sources, eval_fraction, seed, split_group)
    run, paths = _write_datasets(sources, out_dir, held_out, screening if excluding else None)
    excluded = sum(run.excluded_by_reason.values())
    assert run.read == run.records + run.duplicates + run.controls + excluded, "build lost count of a record"  # an invariant
    screened = _write_screening(screening, excluding, out_dir, paths)
    summary = {**run.counts, "tied_pairs_dropped": run.ties, "read": run.read, "records": run.records,
               "duplicates": run.duplicates, "controls": run.controls,
               "excluded": {"records": excluded, "by_reason": dict(sorted(run.excluded_by_reason.items())),
                            "by_labeler": {who: dict(c) for who, c in sorted(run.excluded_by_labeler.items())}},
               "screening": screened,
               "prompts": len(prompts), "eval_prompts": len(held_out), "eval_fraction": eval_fraction, "seed": seed,
               "sources": [s.name for s in sources], "by_source": run.by_source,
               "paths": {name: str(path) for name, path in paths.items()}}
    (out_dir / "build.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def format_table(summary: dict) -> str:
    """The build summary as a table: rows per source and kind, then the split."""
    lines = [f"{'source':<40} {'format':<14} {'kind':<14} {'records':>8} {'sft':>7} {'pairs':>7}"]
    for name, info in summary["by_source"].items():
        shown = name if len(name) <= 40 else "..." + name[-37:]
        for kind, tally in info["kinds"].items():
            lines.append(f"{shown:<40} {info['format']:<14} {kind:<14} {tally.get('records', 0):>8} "
                         f"{tally.get('sft_rows', 0):>7} {tally.get('comparison_rows', 0):>7}")
        if info["duplicates"]:
            lines.append(f"{shown:<40} {info['format']:<14} {'(duplicates)':<14} {info['duplicates']:>8}")
    lines.append(" ".join(f"{k} {summary[k]}" for k in ("comparisons_train", "comparisons_eval", "sft_train", "sft_eval",
                                                       "tied_pairs_dropped")))
    excluded = summary["excluded"]
    lines.append(f"read {summary['read']} = kept {summary['records']} + duplicates {summary['duplicates']} + "
                 f"controls {summary['controls']} (never trained on) + excluded {excluded['records']}")
    screened = summary.get("screening")
    if screened is not None:
        if screened["flagged"]:
            action = "excluded" if screened["exclude_flagged"] else "kept (no --exclude-flagged)"
            for who, reasons in screened["flagged"].items():
                n = sum(excluded["by_labeler"].get(who, {}).values())
                lines.append(f"flagged {who}: {screened['detail'].get(who) or ', '.join(reasons)}: {action}"
                             + (f" {n} judgments" if screened["exclude_flagged"] else ""))
        else:
            lines.append("screening: no labeler flagged")
    if excluded["records"]:
        lines.append(f"excluded judgments are kept in {summary['paths']['excluded']}")
    return "\n".join(lines)
