"""`chatsmith run RECIPE --seeds 0,1,2`: the recipe once per seed, then a table of means and spreads.

Each seed is a whole run in `OUT/seed-N` (the top-level `seed` drives the demo world, every stage and
the evaluation). `OUT/seeds.json` has, per stage and figure, the value of each seed and their mean,
standard deviation, min, max and t-based 95% CI of the mean (the between-seed interval: the evidence that a
figure holds beyond one trained model). `OUT/seeds.md` is the same as a Markdown table (the README's figures
are generated from the runs: `tests/bench/readme_figures.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.eval.stats import across_seeds
from pipeline.registry import STAGE_ORDER


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: a comma-separated list of integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: give distinct seeds, e.g. 0,1,2")
    return seeds


def seed_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


def summarise(out: Path, seeds: list[int]) -> dict:
    """Per stage: {figure: {"per_seed": {seed: value}, "mean", "std", "min", "max", "ci95", "n"}}."""
    table: dict = {}
    for stage in STAGE_ORDER:
        evals = {}
        for seed in seeds:
            path = seed_dir(out, seed) / stage / "eval.json"
            if path.exists():
                evals[seed] = json.loads(path.read_text())
        if not evals:
            continue
        keys = [k for k, v in next(iter(evals.values())).items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        rows = {}
        for key in keys:
            values = {seed: e[key] for seed, e in evals.items() if isinstance(e.get(key), (int, float))}
            rows[key] = {"per_seed": values, **across_seeds(list(values.values()))}
        table[stage] = rows
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps({"seeds": seeds, "stages": table}, indent=2) + "\n")
    (out / "seeds.md").write_text(markdown(table, seeds))
    return table


def markdown(table: dict, seeds: list[int]) -> str:
    lines = [f"Seeds {', '.join(map(str, seeds))}: mean ± std over seeds [t-based 95% CI of the mean, between seeds].", "",
             "| stage | figure | mean ± std | 95% CI (seeds) | per seed |", "|---|---|---|---|---|"]
    for stage, rows in table.items():
        for key, row in rows.items():
            if key.endswith(("_ci95",)) or key in ("steps", "epochs", "selected_step"):
                continue
            ci = row.get("ci95")
            per_seed = ", ".join(f"{v:.3f}" for v in row["per_seed"].values())
            ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "—"
            lines.append(f"| {stage} | {key} | {row['mean']:.3f} ± {row['std']:.3f} | {ci_text} | {per_seed} |")
    return "\n".join(lines) + "\n"
