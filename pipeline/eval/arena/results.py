"""What an arena writes: DIR/arena/{ratings.json, battles.jsonl, summary.json, answers.jsonl, ratings.png}."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable, Mapping, Sequence

from pipeline.eval.arena.battles import play_battles, samples_of
from pipeline.eval.arena.fit import ANCHOR, BASE, SCALE, Battle, battle_stats, bootstrap_ratings
from pipeline.eval.arena.plot import plot_ratings
from stages.common import write_json_atomic, write_jsonl


ROUNDS = 1000
"""Bootstrap rounds of the ratings' intervals."""


def write_results(battles: list[Battle], out_dir: str | Path, *, rounds: int = ROUNDS, seed: int = 0,
                  clusters: Mapping[str, str] | None = None, meta: Mapping | None = None, plot: bool = True) -> dict[str, dict]:
    """Fit and write DIR/arena/{ratings.json, battles.jsonl, summary.json, ratings.png}; return the ratings. The
    bootstrap resamples `clusters` ({prompt id: cluster}: the demo's facts, so the phrasings of one fact are one draw),
    else prompts."""
    arena = Path(out_dir) / "arena"
    by = (lambda battle: clusters.get(battle.prompt_id, battle.prompt_id)) if clusters else "prompt"
    ratings = bootstrap_ratings(battles, by=by, rounds=rounds, seed=seed)
    ratings = {name: {"rating": round(r["rating"], 2), "ci95": [round(x, 2) for x in r["ci95"]]} for name, r in ratings.items()}
    write_jsonl(arena / "battles.jsonl", (asdict(b) for b in battles))
    write_json_atomic(arena / "ratings.json", ratings)
    write_json_atomic(arena / "summary.json", {**(meta or {}), "rounds": rounds, "seed": seed,
                                               "bootstrap": "by cluster (the prompt rows' `cluster`)" if clusters else "by prompt",
                                               "scale": SCALE, "base": BASE, "anchor": f"mean {ANCHOR:g}",
                                               **battle_stats(battles)})
    if plot:
        plot_ratings(ratings, arena / "ratings.png")
    return ratings


def arena_from_answers(answers: Mapping[str, Mapping[str, Sequence[str] | str]], prompt_rows: Sequence[Mapping],
                       judge: Callable[[Mapping, str, str], str], out_dir: str | Path, *, rounds: int = ROUNDS,
                       seed: int = 0, judge_name: str | None = None, plot: bool = True) -> dict[str, dict]:
    """The arena on answers already generated (the runner's evaluation answers): battles, ratings,
    files under `out_dir/arena/`. The bootstrap resamples the rows' clusters (`pipeline.eval.stats.cluster_of`: the
    demo's facts; the prompt otherwise). Returns {checkpoint: {"rating", "ci95"}} as written to ratings.json."""
    from pipeline.eval.arena.battles import prompt_id
    from pipeline.eval.stats import cluster_of

    battles = play_battles(answers, prompt_rows, judge)
    write_jsonl(Path(out_dir) / "arena" / "answers.jsonl",
                ({"checkpoint": name, "prompt_id": pid, "samples": samples_of(texts)}
                 for name, per_prompt in answers.items() for pid, texts in per_prompt.items()))
    name = judge_name or getattr(judge, "name", None) or type(judge).__name__
    clusters = {prompt_id(row, i): cluster_of(row) for i, row in enumerate(prompt_rows)}
    return write_results(battles, out_dir, rounds=rounds, seed=seed, plot=plot, clusters=clusters,
                         meta={"judge": name, "checkpoints": list(answers)})


def ratings_markdown(ratings: Mapping[str, Mapping]) -> str:
    """The ratings as a markdown table (report.md)."""
    lines = ["| checkpoint | rating | 95% CI |", "|---|---|---|"]
    for name, r in ratings.items():
        lo, hi = r["ci95"]
        lines.append(f"| {name} | {r['rating']:.0f} | {lo:.0f} – {hi:.0f} |")
    return "\n".join(lines)
