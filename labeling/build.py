"""Build training datasets from ingested records.

    chatsmith labels build DIR --out DATA [--eval-fraction 0.1 --seed 0]

In:  DIR/accepted.jsonl from `chatsmith labels ingest` (DIR may also be a list of ingest dirs).
Out: DATA/comparisons_train.jsonl, comparisons_eval.jsonl  TRL conversational preference rows
         {"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [...], "margin"?}
     DATA/sft_train.jsonl, sft_eval.jsonl                   {"messages": [...]}
     DATA/build.json                                        counts and paths (also returned)

A ranking of K replies becomes every pair from different tie groups (K choose 2 minus ties); the
margin is the difference of the two replies' `overall` ratings when both have one and it agrees
with the ranking. Demonstrations and rewrites become SFT conversations. The split is by prompt:
the eval prompts are chosen by a seeded hash, so no prompt has rows on both sides, and the same
prompt lands on the same side for comparisons and SFT.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from itertools import combinations
from pathlib import Path

from labeling.ingest import read_records
from labeling.schema import Comparison, Demonstration, Rewrite, prompt_key

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


def build(ingest_dir, out_dir, *, eval_fraction: float = 0.1, seed: int = 0) -> dict:
    """Write the comparison and SFT datasets from `ingest_dir` (one dir or a list) into `out_dir`.

    Returns {"comparisons_train", "comparisons_eval", "sft_train", "sft_eval" (row counts),
    "tied_pairs_dropped", "records", "prompts", "eval_prompts", "paths": {name: path}}."""
    if not 0 <= eval_fraction < 1 or math.isnan(eval_fraction):
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    dirs = [ingest_dir] if isinstance(ingest_dir, (str, os.PathLike)) else list(ingest_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # pass 1: the prompts (digests only), so the split is decided before any row is written
    keys: set[str] = set()
    for directory in dirs:
        for record in read_records(directory):
            keys.add(prompt_key(record.prompt))
    held_out = eval_prompts(keys, eval_fraction=eval_fraction, seed=seed)

    names = ["comparisons_train", "comparisons_eval", "sft_train", "sft_eval"]
    paths = {name: out_dir / f"{name}.jsonl" for name in names}
    counts = dict.fromkeys(names, 0)
    records = ties = 0
    handles = {name: open(str(path) + ".tmp", "w", encoding="utf-8") for name, path in paths.items()}
    try:
        for directory in dirs:
            for record in read_records(directory):
                records += 1
                split = "eval" if prompt_key(record.prompt) in held_out else "train"
                if isinstance(record, Comparison):
                    rows, dropped = comparison_pairs(record)
                    ties += dropped
                    name = f"comparisons_{split}"
                else:
                    rows, name = [sft_row(record)], f"sft_{split}"
                for row in rows:
                    handles[name].write(json.dumps(row, ensure_ascii=False) + "\n")
                counts[name] += len(rows)
    finally:
        for handle in handles.values():
            handle.close()
    for name, path in paths.items():
        os.replace(str(path) + ".tmp", path)

    summary = {**counts, "tied_pairs_dropped": ties, "records": records, "prompts": len(keys),
               "eval_prompts": len(held_out), "eval_fraction": eval_fraction, "seed": seed,
               "sources": [str(d) for d in dirs], "paths": {name: str(path) for name, path in paths.items()}}
    (out_dir / "build.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
