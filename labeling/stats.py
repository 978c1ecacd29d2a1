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
from dataclasses import dataclass, field
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


@dataclass
class _Tally:
    """What `stats` gathers in one pass over the records; the figures are computed from it afterwards."""

    kinds: Counter[str] = field(default_factory=Counter)
    preference: dict[tuple, list[int]] = field(default_factory=lambda: defaultdict(list))  # unit -> values
    by_labeler_unit: dict[tuple, dict[str, list[int]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    ratings: dict[str, dict[tuple, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    per: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # labeler -> counters
    times: list[tuple[float, str, str]] = field(default_factory=list)
    tasks_labelers: dict[str, set] = field(default_factory=lambda: defaultdict(set))
    totals: Counter[str] = field(default_factory=Counter)  # ties, pairs, position/length/gold hits and totals


def _tally_pairs(tally: _Tally, key: str, who: str, values: dict[tuple[str, str], int]) -> None:
    """Counts the pairs of one judgment: each pair's value under its unit (overall and per labeler), and the ties."""
    for pair, value in values.items():
        tally.preference[(key, *pair)].append(value)
        tally.by_labeler_unit[(key, *pair)][who].append(value)
        tally.totals["pairs"] += 1
        tally.per[who]["pairs"] += 1
        if value == 0:
            tally.totals["ties"] += 1
            tally.per[who]["ties"] += 1


def _tally_position(totals: Counter, display_order: list[str], values: dict[tuple[str, str], int]) -> None:
    """Counts the untied pairs of one judgment, and those the earlier-shown reply wins."""
    shown = {cid: i for i, cid in enumerate(display_order)}
    for (a, b), value in values.items():
        if value:
            earlier = a if shown[a] < shown[b] else b
            winner = a if value > 0 else b
            totals["position_hits"] += winner == earlier
            totals["position_total"] += 1


def _tally_length(totals: Counter, record: Comparison, values: dict[tuple[str, str], int]) -> None:
    """Counts the untied pairs of unequal length of one judgment, and those the longer reply wins."""
    lengths = {c.id: len(c.content) for c in record.candidates}
    for (a, b), value in values.items():
        if value and lengths[a] != lengths[b]:
            winner = a if value > 0 else b
            totals["length_hits"] += lengths[winner] == max(lengths[a], lengths[b])
            totals["length_total"] += 1


def _tally_gold(tally: _Tally, who: str, truth: dict[tuple[str, str], int], values: dict[tuple[str, str], int]) -> None:
    """Counts the pairs the known answer orders, and those the judgment orders the same way (overall and per labeler)."""
    for pair, expected in truth.items():
        if expected:
            hit = values[pair] == expected
            tally.totals["gold_hits"] += hit
            tally.totals["gold_total"] += 1
            tally.per[who]["gold_hits"] += hit
            tally.per[who]["gold_total"] += 1


def _tally_comparison(tally: _Tally, record: Comparison) -> None:
    """Counts one comparison into `tally`: its labeler and task, its pairs, position, length and gold hits,
    its ratings and its time spent."""
    who = record.labeler.id if record.labeler else NO_LABELER
    key = _task_key(record)
    tally.tasks_labelers[key].add(who)
    ids = [c.id for c in record.candidates]
    values = pair_values(record.ranking, ids)
    tally.per[who]["judgments"] += 1
    _tally_pairs(tally, key, who, values)
    if record.display_order:
        _tally_position(tally.totals, record.display_order, values)
    _tally_length(tally.totals, record, values)
    if record.gold_ranking is not None:
        _tally_gold(tally, who, pair_values(record.gold_ranking, ids), values)
    for cid, scales in record.ratings.items():
        for scale, value in scales.items():
            tally.ratings[scale][(key, cid)].append(value)
    if record.time_spent_s is not None:
        tally.times.append((record.time_spent_s, who, record.id))


def _tally_consensus(tally: _Tally) -> None:
    """Counts each labeler's agreement with the leave-one-out consensus: the majority value of the other
    labelers of the same unit."""
    for labelers in tally.by_labeler_unit.values():
        if len(labelers) < 2:
            continue
        for who, mine in labelers.items():
            others = Counter(v for other, vals in labelers.items() if other != who for v in vals)
            (top, top_count), *rest = others.most_common()
            if rest and rest[0][1] == top_count:
                continue  # the others are split: no consensus to agree with
            for v in mine:
                tally.per[who]["consensus_hits"] += v == top
                tally.per[who]["consensus_total"] += 1


def _time_figures(tally: _Tally) -> dict:
    """The median and MAD of the time spent, and the outliers (robust z > ROBUST_Z), each also counted on its
    labeler; {} when no judgment has a time."""
    if not tally.times:
        return {}
    outliers = []
    values = [t for t, _, _ in tally.times]
    mid = median(values)
    mad = median(abs(t - mid) for t in values) * 1.4826
    for t, who, rid in tally.times:
        if mad > 0 and abs(t - mid) / mad > ROBUST_Z:
            outliers.append({"record": rid, "labeler": who, "time_spent_s": t})
            tally.per[who]["time_outliers"] += 1
    return {"median_s": round(mid, 3), "mad_s": round(mad, 3), "outliers": len(outliers),
            "outlier_examples": outliers[:20]}


def _labeler_figures(tally: _Tally) -> dict[str, dict]:
    """Per labeler, sorted by id: judgments, agreement with the consensus, gold accuracy, tie rate, median time
    and time outliers."""
    labeler_times = defaultdict(list)
    for t, who, _ in tally.times:
        labeler_times[who].append(t)
    labelers = {}
    for who, c in sorted(tally.per.items()):
        labelers[who] = {
            "judgments": c["judgments"],
            "agreement_with_consensus": _share(c["consensus_hits"], c["consensus_total"]),
            "gold_accuracy": _share(c["gold_hits"], c["gold_total"]),
            "tie_rate": _share(c["ties"], c["pairs"]),
            "median_time_s": round(median(labeler_times[who]), 3) if labeler_times[who] else None,
            "time_outliers": c["time_outliers"],
        }
    return labelers


def stats(ingest_dir) -> dict:
    """The figures described in the module docstring, as a JSON-able dict, over one ingest dir or a
    list of them. (Per-labeler screening with intervals and flags: labeling.screening.)"""
    tally = _Tally()
    for record in _records(ingest_dir):
        tally.kinds[record.kind] += 1
        if isinstance(record, Comparison):
            _tally_comparison(tally, record)
    _tally_consensus(tally)
    time_figures = _time_figures(tally)  # before the labelers' figures: it counts their time outliers
    labelers = _labeler_figures(tally)
    alpha = _alpha(tally.preference, "ordinal")
    totals = tally.totals
    return {
        "records": dict(sorted(tally.kinds.items())),
        "comparisons": tally.kinds["comparison"],
        "tasks": len(tally.tasks_labelers),
        "tasks_with_2plus_labelers": sum(len(v) >= 2 for v in tally.tasks_labelers.values()),
        "labelers": labelers,
        "agreement": {
            "preference_alpha_ordinal": None if alpha is None else round(alpha, 4),
            "rating_alpha_ordinal": {scale: (None if (a := _alpha(units, "ordinal")) is None else round(a, 4))
                                     for scale, units in sorted(tally.ratings.items())},
        },
        "gold_accuracy": _share(totals["gold_hits"], totals["gold_total"]),
        "tie_rate": _share(totals["ties"], totals["pairs"]),
        "position_bias_first_shown_wins": _share(totals["position_hits"], totals["position_total"]),
        "length_bias_longer_wins": _share(totals["length_hits"], totals["length_total"]),
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
