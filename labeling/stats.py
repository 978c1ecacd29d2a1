"""Quality figures of ingested comparisons.

    chatsmith labels stats DIR [DIR ...] [--json OUT] [--min-control-accuracy X --min-peer-agreement X
                                                       --min-controls N --min-shared-tasks N]

In:  DIR/accepted.jsonl (ingest output directories, figured together).
Out: a table on the terminal and, with --json, the same figures as JSON:
- agreement: Krippendorff's alpha (the `krippendorff` library) on preferences — each unit is a
  pair of candidates of one task, the value is -1 / 0 (tie) / +1, *ordinal* level — and on each
  rating scale (per task and candidate, ordinal: Likert scales are ordered, not interval);
- each labeler's agreement with the consensus of the *other* labelers (leave-one-out majority);
- gold accuracy: share of a gold item's untied pairs the labeler ordered as the known answer;
- tie rate; position bias (share of untied pairs the earlier-shown reply wins, 0.5 = none);
  length bias (share of untied pairs of unequal length the longer reply wins);
- time outliers: judgments whose time spent is far from the median (robust z > 3.5 by MAD).
The CLI adds labeling.screening's per-labeler table (control accuracy, peer agreement, ties, time,
with 95% intervals, and the labelers flagged); `--json` has it under "screening".
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from itertools import combinations
from statistics import median

from labeling.ingest import read_records
from labeling.schema import Comparison

ROBUST_Z = 3.5
NO_LABELER = "(unknown)"


def _task_key(record: Comparison) -> str:
    if record.task_id:
        return record.task_id
    body = json.dumps([[m.role, m.content] for m in record.prompt] + sorted(c.content for c in record.candidates))
    return "h-" + hashlib.sha256(body.encode()).hexdigest()[:16]


def pair_values(ranking: list[list[str]], ids: list[str]) -> dict[tuple[str, str], int]:
    """(a, b) with a < b -> +1 if a ranks above b, -1 if below, 0 if tied."""
    position = {cid: i for i, group in enumerate(ranking) for cid in group}
    out = {}
    for a, b in combinations(sorted(ids), 2):
        out[(a, b)] = (position[a] < position[b]) - (position[a] > position[b])
    return out


def _alpha(unit_values: dict, level: str) -> float | None:
    """Krippendorff's alpha from {unit: [values...]}; None when no unit has two values or
    every value is the same (alpha is undefined then)."""
    import numpy as np
    import krippendorff

    units = [values for values in unit_values.values() if len(values) >= 2]
    domain = sorted({v for values in units for v in values})
    if not units or len(domain) < 2:
        return None
    index = {v: i for i, v in enumerate(domain)}
    counts = np.zeros((len(units), len(domain)))
    for row, values in enumerate(units):
        for v in values:
            counts[row, index[v]] += 1
    return float(krippendorff.alpha(value_counts=counts, value_domain=domain, level_of_measurement=level))


def _share(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _records(ingest_dirs):
    for directory in [ingest_dirs] if isinstance(ingest_dirs, (str, os.PathLike)) else ingest_dirs:
        yield from read_records(directory)


def stats(ingest_dir) -> dict:
    """The figures described in the module docstring, as a JSON-able dict, over one ingest dir or a
    list of them. (Per-labeler screening with intervals and flags: labeling.screening.)"""
    kinds: Counter[str] = Counter()
    preference: dict[tuple, list[int]] = defaultdict(list)  # unit -> values
    by_labeler_unit: dict[tuple, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    ratings: dict[str, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    per = defaultdict(lambda: Counter())  # labeler -> counters
    times: list[tuple[float, str, str]] = []
    ties = pairs = position_hits = position_total = length_hits = length_total = 0
    gold_hits = gold_total = 0
    tasks_labelers: dict[str, set] = defaultdict(set)

    for record in _records(ingest_dir):
        kinds[record.kind] += 1
        if not isinstance(record, Comparison):
            continue
        who = record.labeler.id if record.labeler else NO_LABELER
        key = _task_key(record)
        tasks_labelers[key].add(who)
        ids = [c.id for c in record.candidates]
        values = pair_values(record.ranking, ids)
        per[who]["judgments"] += 1
        for pair, value in values.items():
            preference[(key, *pair)].append(value)
            by_labeler_unit[(key, *pair)][who].append(value)
            pairs += 1
            per[who]["pairs"] += 1
            if value == 0:
                ties += 1
                per[who]["ties"] += 1
        if record.display_order:
            shown = {cid: i for i, cid in enumerate(record.display_order)}
            for (a, b), value in values.items():
                if value:
                    earlier = a if shown[a] < shown[b] else b
                    winner = a if value > 0 else b
                    position_hits += winner == earlier
                    position_total += 1
        lengths = {c.id: len(c.content) for c in record.candidates}
        for (a, b), value in values.items():
            if value and lengths[a] != lengths[b]:
                winner = a if value > 0 else b
                length_hits += lengths[winner] == max(lengths[a], lengths[b])
                length_total += 1
        if record.gold_ranking is not None:
            truth = pair_values(record.gold_ranking, ids)
            for pair, expected in truth.items():
                if expected:
                    hit = values[pair] == expected
                    gold_hits += hit
                    gold_total += 1
                    per[who]["gold_hits"] += hit
                    per[who]["gold_total"] += 1
        for cid, scales in record.ratings.items():
            for scale, value in scales.items():
                ratings[scale][(key, cid)].append(value)
        if record.time_spent_s is not None:
            times.append((record.time_spent_s, who, record.id))

    # leave-one-out consensus: the majority value of the other labelers of the same unit
    for unit, labelers in by_labeler_unit.items():
        if len(labelers) < 2:
            continue
        for who, mine in labelers.items():
            others = Counter(v for other, vals in labelers.items() if other != who for v in vals)
            (top, top_count), *rest = others.most_common()
            if rest and rest[0][1] == top_count:
                continue  # the others are split: no consensus to agree with
            for v in mine:
                per[who]["consensus_hits"] += v == top
                per[who]["consensus_total"] += 1

    time_figures, outliers = {}, []
    if times:
        values = [t for t, _, _ in times]
        mid = median(values)
        mad = median(abs(t - mid) for t in values) * 1.4826
        for t, who, rid in times:
            if mad > 0 and abs(t - mid) / mad > ROBUST_Z:
                outliers.append({"record": rid, "labeler": who, "time_spent_s": t})
                per[who]["time_outliers"] += 1
        time_figures = {"median_s": round(mid, 3), "mad_s": round(mad, 3), "outliers": len(outliers),
                        "outlier_examples": outliers[:20]}
    labeler_times = defaultdict(list)
    for t, who, _ in times:
        labeler_times[who].append(t)

    labelers = {}
    for who, c in sorted(per.items()):
        labelers[who] = {
            "judgments": c["judgments"],
            "agreement_with_consensus": _share(c["consensus_hits"], c["consensus_total"]),
            "gold_accuracy": _share(c["gold_hits"], c["gold_total"]),
            "tie_rate": _share(c["ties"], c["pairs"]),
            "median_time_s": round(median(labeler_times[who]), 3) if labeler_times[who] else None,
            "time_outliers": c["time_outliers"],
        }
    alpha = _alpha(preference, "ordinal")
    return {
        "records": dict(sorted(kinds.items())),
        "comparisons": kinds["comparison"],
        "tasks": len(tasks_labelers),
        "tasks_with_2plus_labelers": sum(len(v) >= 2 for v in tasks_labelers.values()),
        "labelers": labelers,
        "agreement": {
            "preference_alpha_ordinal": None if alpha is None else round(alpha, 4),
            "rating_alpha_ordinal": {scale: (None if (a := _alpha(units, "ordinal")) is None else round(a, 4))
                                     for scale, units in sorted(ratings.items())},
        },
        "gold_accuracy": _share(gold_hits, gold_total),
        "tie_rate": _share(ties, pairs),
        "position_bias_first_shown_wins": _share(position_hits, position_total),
        "length_bias_longer_wins": _share(length_hits, length_total),
        "time": time_figures,
    }


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(figures: dict) -> str:
    """The figures as a terminal table."""
    agreement = figures["agreement"]
    lines = [
        f"comparisons {figures['comparisons']}  tasks {figures['tasks']}  "
        f"(with 2+ labelers {figures['tasks_with_2plus_labelers']})  records {figures['records']}",
        f"preference alpha (ordinal)       {_fmt(agreement['preference_alpha_ordinal'])}",
        *[f"rating alpha {scale:<19} {_fmt(a)}" for scale, a in agreement["rating_alpha_ordinal"].items()],
        f"gold accuracy                    {_fmt(figures['gold_accuracy'])}",
        f"tie rate                         {_fmt(figures['tie_rate'])}",
        f"position bias (first-shown wins) {_fmt(figures['position_bias_first_shown_wins'])}   (0.5 = none)",
        f"length bias (longer wins)        {_fmt(figures['length_bias_longer_wins'])}   (0.5 = none)",
    ]
    if figures["time"]:
        t = figures["time"]
        lines.append(f"time spent median {t['median_s']}s  MAD {t['mad_s']}s  outliers {t['outliers']}")
    header = f"{'labeler':<24} {'n':>6} {'consensus':>9} {'gold':>6} {'ties':>6} {'time_s':>7} {'slow/fast':>9}"
    lines += ["", header, "-" * len(header)]
    for who, row in figures["labelers"].items():
        lines.append(f"{who[:24]:<24} {row['judgments']:>6} {_fmt(row['agreement_with_consensus']):>9} "
                     f"{_fmt(row['gold_accuracy']):>6} {_fmt(row['tie_rate']):>6} {_fmt(row['median_time_s']):>7} "
                     f"{row['time_outliers']:>9}")
    return "\n".join(lines)
