"""Labeler screening: per-labeler figures with 95% intervals, and flags below thresholds.

    chatsmith labels stats DIR [DIR ...] [--min-control-accuracy 0.8 --min-peer-agreement 0.6
                                          --min-controls 10 --min-shared-tasks 10]
    chatsmith labels build DIR ... --out DATA [same flags] [--exclude-flagged]

    screening = screen(ingest_dirs, ScreenConfig(...))     # -> Screening
    build(ingest_dirs, out, ..., screening=screening)      # or screening=ScreenConfig(...)

Per labeler (`Labeler.id`; judgments without one are figured under "(unknown)" and never flagged):
- control accuracy: the share of control tasks (a known `gold_ranking`, labeling.controls) answered
  right. A control is answered right when the labeler orders every pair the known answer orders as
  it does (a tie there is a miss; pairs the answer ties are not scored). One control is one trial,
  so the 95% interval is Wilson's score interval (controls are independent; the pairs of one
  ranking are not, which is why this is per control and not per pair).
- peer agreement: on tasks other labelers also judged (controls left out, so the two checks are
  separate evidence), the share of candidate pairs where the labeler's value (better / tied /
  worse) equals the majority of the *other* labelers' values (a pair where the others are split is
  not counted). Labelers flagged on control accuracy are nobody's peer: a poisoner's answers do not
  count in the majority the others are measured against (they are still measured against it). 95% interval: percentile bootstrap over tasks (the pairs of one task are not
  independent), 1,000 resamples, seeded by the labeler id.
- ties: the share of candidate pairs tied (all comparisons); bootstrap over judgments.
- time per task: the median `time_spent_s` (Label Studio's `lead_time`) of the comparisons;
  bootstrap interval of the median over judgments.

Flags (`ScreenConfig`): a labeler is flagged on control accuracy when the *upper* end of the 95%
interval is below `min_control_accuracy`, and on peer agreement when the upper end is below
`min_peer_agreement`: the data must show the labeler is below the line, not merely fail to show
they are above it. A flag costs a labeler all of their work (build's `exclude_flagged`), so the
rule keeps the chance of flagging someone whose true figure is at the threshold near 2.5%
(one-sided; Wilson's coverage is approximate); a point-estimate rule would flag about half of
them, and on few tasks also many above it. The price
is that a bad labeler is caught only once there is evidence: a labeler who gets every control wrong
is flagged from 3 controls (Wilson upper end 0.56 < 0.8) when `min_controls` allows; one at chance
on pair controls (accuracy 0.5) has an upper end of 0.76 on 10 controls and 0.65 on 40, so chance-level
labelers are caught reliably from a few dozen controls. Below `min_controls` controls the check says
"not enough controls" and does not flag, whatever the figures; likewise `min_shared_tasks` for peer
agreement. Ties and time are reported, not flagged on (a fast or tie-happy labeler shows up in
them and in the two flagged figures).

`labeling` must not need pipeline or torch: the intervals are computed here (numpy only).
"""

from __future__ import annotations

import hashlib
import math
import os
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from pydantic import BaseModel, ConfigDict, Field

from labeling.controls import is_control
from labeling.ingest import read_records
from labeling.schema import Comparison
from labeling.stats import NO_LABELER, _task_key, pair_values

Z95 = 1.959963984540054  # two-sided 95%: the normal 97.5% quantile
BOOTSTRAP_ROUNDS = 1000
CONTROL_ACCURACY, PEER_AGREEMENT = "control_accuracy", "peer_agreement"
OK, BELOW, NOT_ENOUGH_CONTROLS, NOT_ENOUGH_SHARED = "ok", "below", "not_enough_controls", "not_enough_shared_tasks"


class ScreenConfig(BaseModel):
    """Labeler screening (`labeling.screening`): the thresholds `labels stats` and `labels build` flag
    labelers by, and whether build leaves the flagged labelers' judgments out of training. A recipe's
    `data.screen`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    min_control_accuracy: float = Field(0.8, ge=0, le=1)
    """Flag a labeler when the upper end of the 95% interval of their accuracy on control tasks is below this."""
    min_peer_agreement: float = Field(0.6, ge=0, le=1)
    """Flag a labeler when the upper end of the 95% interval of their agreement with the other labelers' majority is below this."""
    min_controls: int = Field(10, ge=1)
    """Fewer controls answered than this: "not enough controls", never flagged on control accuracy."""
    min_shared_tasks: int = Field(10, ge=1)
    """Fewer tasks shared with other labelers (with a majority to agree with) than this: "not enough shared tasks", never flagged on peer agreement."""
    exclude_flagged: bool = False
    """Build: leave the flagged labelers' judgments (every kind) out of training; each is kept in DATA/excluded.jsonl with the reason."""


# ---------------------------------------------------------------------------------------------
# intervals


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson's score interval for a proportion (95% by default); None for n = 0."""
    if n <= 0:
        return None
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # at the edges the interval ends exactly at 0 / 1 (the formula gives them up to rounding)
    return (0.0 if hits == 0 else max(0.0, centre - half)), (1.0 if hits == n else min(1.0, centre + half))


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:8], "little")


def bootstrap_ratio(hits, totals, *, seed: int, rounds: int = BOOTSTRAP_ROUNDS) -> tuple[float, float] | None:
    """Percentile 95% interval of sum(hits) / sum(totals) when the clusters (one hits/totals entry
    each: a task, a judgment) are resampled with replacement. None without clusters."""
    import numpy as np

    hits, totals = np.asarray(hits, dtype=float), np.asarray(totals, dtype=float)
    n = len(hits)
    if n == 0 or totals.sum() == 0:
        return None
    rng = np.random.default_rng(seed)
    ratios = []
    chunk = max(1, 2_000_000 // n)  # resamples at a time: memory stays ~ 16 MB whatever n is
    for start in range(0, rounds, chunk):
        index = rng.integers(0, n, size=(min(chunk, rounds - start), n))
        h, t = hits[index].sum(axis=1), totals[index].sum(axis=1)
        ratios.append(np.divide(h, t, out=np.full_like(h, np.nan), where=t > 0))
    ratios = np.concatenate(ratios)
    ratios = ratios[~np.isnan(ratios)]
    low, high = np.quantile(ratios, [0.025, 0.975])
    return float(low), float(high)


def bootstrap_median(values, *, seed: int, rounds: int = BOOTSTRAP_ROUNDS) -> tuple[float, float] | None:
    """Percentile 95% interval of the median of `values`, resampled with replacement."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    medians = []
    chunk = max(1, 2_000_000 // n)
    for start in range(0, rounds, chunk):
        index = rng.integers(0, n, size=(min(chunk, rounds - start), n))
        medians.append(np.median(values[index], axis=1))
    low, high = np.quantile(np.concatenate(medians), [0.025, 0.975])
    return float(low), float(high)


def _round(value, digits: int = 4):
    if value is None:
        return None
    if isinstance(value, tuple):
        return [round(v, digits) for v in value]
    return round(value, digits)


# ---------------------------------------------------------------------------------------------
# screening


@dataclass(frozen=True)
class Screening:
    """The outcome of `screen`: per-labeler figures, and the flagged labelers with their reasons.

    `labelers[id]`: {"records", "comparisons",
      "controls": {"n", "passed", "accuracy", "ci95", "status"},        status: ok | below | not_enough_controls
      "peer_agreement": {"tasks", "pairs", "agreement", "ci95", "status"},  status: ok | below | not_enough_shared_tasks
      "ties": {"pairs", "share", "ci95"}, "time_s": {"n", "median", "ci95"}, "flags": [reason, ...]}
    `flagged[id]`: the reasons (control_accuracy, peer_agreement), each with a one-line `detail[id]`."""

    config: ScreenConfig
    labelers: dict[str, dict]
    flagged: dict[str, list[str]]
    detail: dict[str, str]
    sources: list[str] = field(default_factory=list)

    def is_flagged(self, labeler: str | None) -> bool:
        return labeler is not None and labeler in self.flagged

    def to_dict(self) -> dict:
        return {"config": self.config.model_dump(), "sources": list(self.sources), "flagged": dict(self.flagged),
                "detail": dict(self.detail), "labelers": self.labelers,
                "method": {"control_accuracy": "Wilson 95% interval, one trial per control",
                           "peer_agreement": f"percentile bootstrap over tasks, {BOOTSTRAP_ROUNDS} resamples",
                           "ties": f"percentile bootstrap over judgments, {BOOTSTRAP_ROUNDS} resamples",
                           "time_s": f"median; percentile bootstrap over judgments, {BOOTSTRAP_ROUNDS} resamples",
                           "flag": "the upper end of the 95% interval below the threshold"}}


def _ingest_dirs(ingest_dirs) -> list:
    if ingest_dirs is None:
        return []
    if isinstance(ingest_dirs, (str, os.PathLike)):
        return [ingest_dirs]
    return list(ingest_dirs)


def _labeler(record) -> str:
    return record.labeler.id if record.labeler else NO_LABELER


@dataclass
class _Evidence:
    """What `screen` reads from the records, per labeler, before any figure is computed."""

    records: Counter[str] = field(default_factory=Counter)
    comparisons: Counter[str] = field(default_factory=Counter)
    control_trials: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # labeler -> 1 / 0 per control
    units: dict[tuple, dict[str, list[int]]] = field(  # (task, a, b) -> labeler -> values
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    tie_clusters: dict[str, list[tuple[int, int]]] = field(  # labeler -> [(ties, pairs)] per judgment
        default_factory=lambda: defaultdict(list))
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def _add_comparison(evidence: _Evidence, who: str, record: Comparison) -> None:
    """Adds one comparison to `evidence`: its ties and time spent, and then its control trial (a control) or its
    pairs' values under their units (any other task)."""
    ids = [c.id for c in record.candidates]
    values = pair_values(record.ranking, ids)
    evidence.tie_clusters[who].append((sum(v == 0 for v in values.values()), len(values)))
    if record.time_spent_s is not None:
        evidence.times[who].append(record.time_spent_s)
    if is_control(record):
        if record.gold_ranking is not None:
            truth = {pair: v for pair, v in pair_values(record.gold_ranking, ids).items() if v}
            if truth:
                evidence.control_trials[who].append(int(all(values[pair] == v for pair, v in truth.items())))
        return  # controls are not peer evidence
    key = _task_key(record)
    for pair, value in values.items():
        evidence.units[(key, *pair)][who].append(value)


def _read_evidence(dirs: list) -> _Evidence:
    """The per-labeler evidence of the records of every ingest dir."""
    evidence = _Evidence()
    for directory in dirs:
        for record in read_records(directory):
            who = _labeler(record)
            evidence.records[who] += 1
            if isinstance(record, Comparison):
                evidence.comparisons[who] += 1
                _add_comparison(evidence, who, record)
    return evidence


def _control_accuracy(trials: list[int], config: ScreenConfig) -> tuple[int, int, tuple[float, float] | None, str]:
    """(controls passed, controls answered, Wilson 95% interval, status) of one labeler's control trials."""
    passed, n = sum(trials), len(trials)
    interval = wilson(passed, n)
    if n < config.min_controls:
        status = NOT_ENOUGH_CONTROLS
    else:
        status = BELOW if interval[1] < config.min_control_accuracy else OK
    return passed, n, interval, status


def _peer_cells(units: dict[tuple, dict[str, list[int]]], not_peers: set[str]) -> dict[str, dict[str, list[int]]]:
    """Per labeler, per task: [hits, totals] of their pair values against the majority of the other labelers'
    values, `not_peers` left out of the majority (a pair where the others are split is not counted)."""
    per_task: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for (task, *_pair), by_labeler in units.items():
        if len(by_labeler) < 2:
            continue
        for who, mine in by_labeler.items():
            others = Counter(v for other, vals in by_labeler.items() if other != who and other not in not_peers for v in vals)
            if not others:
                continue
            (top, top_count), *rest = others.most_common()
            if rest and rest[0][1] == top_count:
                continue  # the others are split: no majority to agree with
            cell = per_task[who][task]
            cell[0] += sum(v == top for v in mine)
            cell[1] += len(mine)
    return per_task


def _peer_agreement(who: str, cells: list[list[int]],
                    config: ScreenConfig) -> tuple[float | None, tuple[float, float] | None, str]:
    """(agreement, its bootstrap 95% interval over tasks, status) of one labeler from their per-task
    [hits, totals] cells."""
    hits, totals = [c[0] for c in cells], [c[1] for c in cells]
    agreement = sum(hits) / sum(totals) if sum(totals) else None
    interval = bootstrap_ratio(hits, totals, seed=_seed("peer", who)) if cells else None
    if len(cells) < config.min_shared_tasks or interval is None:
        status = NOT_ENOUGH_SHARED
    else:
        status = BELOW if interval[1] < config.min_peer_agreement else OK
    return agreement, interval, status


def _ties_figures(who: str, tie_cells: list[tuple[int, int]]) -> dict:
    """One labeler's "ties" entry: the share of tied pairs, with its bootstrap 95% interval over judgments."""
    tie_pairs = sum(p for _, p in tie_cells)
    tie_share = sum(t for t, _ in tie_cells) / tie_pairs if tie_pairs else None
    tie_interval = bootstrap_ratio([t for t, _ in tie_cells], [p for _, p in tie_cells], seed=_seed("ties", who)) if tie_pairs else None
    return {"pairs": tie_pairs, "share": _round(tie_share), "ci95": _round(tie_interval)}


def _time_figures(who: str, spent: list[float]) -> dict:
    """One labeler's "time_s" entry: the median time spent per judgment, with its bootstrap 95% interval."""
    median = float(statistics.median(spent)) if spent else None
    return {"n": len(spent), "median": _round(median, 3),
            "ci95": _round(bootstrap_median(spent, seed=_seed("time", who)), 3) if spent else None}


def _flag_detail(reasons: list[str], control: tuple, agreement: float | None, tasks: int,
                 peer_interval: tuple[float, float] | None, config: ScreenConfig) -> str:
    """The one line saying why a labeler is flagged: each flagged figure, its interval and the threshold."""
    passed, n, interval, _status = control
    parts = []
    if CONTROL_ACCURACY in reasons:
        parts.append(f"control accuracy {passed}/{n} = {passed / n:.2f} (95% CI {interval[0]:.2f}-{interval[1]:.2f}) "
                     f"below {config.min_control_accuracy:g}")
    if PEER_AGREEMENT in reasons:
        parts.append(f"peer agreement {agreement:.2f} on {tasks} shared tasks (95% CI {peer_interval[0]:.2f}-"
                     f"{peer_interval[1]:.2f}) below {config.min_peer_agreement:g}")
    return "; ".join(parts)


def screen(ingest_dirs, config: ScreenConfig | Mapping | None = None) -> Screening:
    """Per-labeler figures over the comparisons of every ingest dir (one dir or a list), and the
    labelers `config` flags (see the module docstring). The same labeler id in several dirs is one
    labeler; the same task id is one task."""
    config = ScreenConfig() if config is None else config if isinstance(config, ScreenConfig) else ScreenConfig.model_validate(config)
    dirs = _ingest_dirs(ingest_dirs)
    evidence = _read_evidence(dirs)
    # control accuracy first: a labeler the controls flag is nobody's peer (their answers would drag
    # the majority the honest ones are measured against)
    controls = {who: _control_accuracy(evidence.control_trials.get(who, []), config) for who in evidence.records}
    not_peers = {who for who, figures in controls.items() if figures[3] == BELOW and who != NO_LABELER}
    per_task = _peer_cells(evidence.units, not_peers)

    labelers, flagged, detail = {}, {}, {}
    for who in sorted(evidence.records):
        passed, n, interval, control_status = controls[who]
        cells = list(per_task.get(who, {}).values())
        agreement, peer_interval, peer_status = _peer_agreement(who, cells, config)
        reasons = []
        if who != NO_LABELER:
            reasons = [name for name, status in ((CONTROL_ACCURACY, control_status), (PEER_AGREEMENT, peer_status)) if status == BELOW]
        labelers[who] = {
            "records": evidence.records[who], "comparisons": evidence.comparisons[who],
            "controls": {"n": n, "passed": passed, "accuracy": _round(passed / n if n else None), "ci95": _round(interval),
                         "status": control_status},
            "peer_agreement": {"tasks": len(cells), "pairs": sum(c[1] for c in cells), "agreement": _round(agreement),
                               "ci95": _round(peer_interval), "status": peer_status},
            "ties": _ties_figures(who, evidence.tie_clusters.get(who, [])),
            "time_s": _time_figures(who, evidence.times.get(who, [])),
            "flags": reasons,
        }
        if reasons:
            flagged[who] = reasons
            detail[who] = _flag_detail(reasons, controls[who], agreement, len(cells), peer_interval, config)
    return Screening(config=config, labelers=labelers, flagged=flagged, detail=detail, sources=[str(d) for d in dirs])


# ---------------------------------------------------------------------------------------------
# the table


def _interval(figure, ci) -> str:
    if figure is None:
        return "-"
    return f"{figure:.2f} [{ci[0]:.2f},{ci[1]:.2f}]" if ci else f"{figure:.2f}"


_STATUS = {OK: "", BELOW: " LOW", NOT_ENOUGH_CONTROLS: " (few)", NOT_ENOUGH_SHARED: " (few)"}


def format_table(screening: Screening) -> str:
    """Per-labeler screening figures as a terminal table, then the flagged labelers."""
    c = screening.config
    lines = [f"screening: flag when the 95% upper end is below control accuracy {c.min_control_accuracy:g} "
             f"(from {c.min_controls} controls) or peer agreement {c.min_peer_agreement:g} (from {c.min_shared_tasks} shared tasks)",
             f"{'labeler':<24} {'n':>6} {'controls':>9} {'control accuracy':<22} {'shared':>6} {'peer agreement':<22} "
             f"{'ties':<18} {'time_s':>7}  flags"]
    lines.append("-" * len(lines[-1]))
    for who, row in screening.labelers.items():
        ctl, peer, ties, time = row["controls"], row["peer_agreement"], row["ties"], row["time_s"]
        lines.append(f"{who[:24]:<24} {row['comparisons']:>6} {ctl['n']:>9} "
                     f"{_interval(ctl['accuracy'], ctl['ci95']) + _STATUS[ctl['status']]:<22} {peer['tasks']:>6} "
                     f"{_interval(peer['agreement'], peer['ci95']) + _STATUS[peer['status']]:<22} "
                     f"{_interval(ties['share'], ties['ci95']):<18} {'-' if time['median'] is None else time['median']:>7}  "
                     f"{','.join(row['flags']) or '-'}")
    if screening.flagged:
        lines.append(f"flagged {len(screening.flagged)}: " + "; ".join(f"{who}: {screening.detail[who]}" for who in screening.flagged))
        named = [who for who in screening.labelers if who != NO_LABELER]
        if 2 * len(screening.flagged) > len(named):
            lines.append(f"warning: {len(screening.flagged)} of {len(named)} labelers flagged: when most of a pool is flagged, "
                         "check the thresholds and the controls' answers before excluding anyone")
    else:
        lines.append("flagged: none")
    lines.append("(few) = not enough controls / shared tasks to flag on")
    return "\n".join(lines)


def config_from_flags(args) -> ScreenConfig:
    """A ScreenConfig from CLI flags (argparse attributes min_control_accuracy, ..., None when not given)."""
    given = {name: getattr(args, name, None) for name in ScreenConfig.model_fields}
    return ScreenConfig(**{k: v for k, v in given.items() if v is not None and v is not False})


__all__ = ["ScreenConfig", "Screening", "screen", "wilson", "bootstrap_ratio", "bootstrap_median", "format_table",
           "config_from_flags"]
