"""The README's demo figures, generated from runs (never typed by hand).

    chatsmith run recipes/tiny-cpu.yaml --seeds 0,1,2 --out runs/seeds          # `make demo-seeds`
    chatsmith run recipes/tiny-cpu.yaml --out runs/overopt stages.ppo.kl_coef=0 \\
        stages.reward.holdout_fraction=0.5 stages.ppo.select_best=holdout_reward     # `make demo-overopt`
    .venv/bin/python tests/bench/readme_figures.py --seeds-dir runs/seeds [--overopt runs/overopt] --write

reads the runs, writes the figures file `tests/bench/demo_figures.json` (`--write`) and replaces the block
between the README's `<!-- demo-figures:begin -->` and `<!-- demo-figures:end -->` markers with its rendering.
Without `--write` it prints the rendering. `tests/test_readme_figures.py` checks that the README's block is
the rendering of the committed figures file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIGURES = REPO / "tests" / "bench" / "demo_figures.json"
README = REPO / "README.md"
BEGIN, END = "<!-- demo-figures:begin -->", "<!-- demo-figures:end -->"

HEADLINE = [  # (stage, key, what it says)
    ("sft", "gold_score_greedy", "SFT gold score, greedy"),
    ("sft", "gold_score_chat", "SFT gold score, chat default (T=0.7, top-p 0.95)"),
    ("sft", "gold_score_t1", "SFT gold score, T=1"),
    ("sft", "fact_accuracy_seen", "SFT fact accuracy, towns in SFT data"),
    ("sft", "fact_accuracy_pair_unseen", "SFT fact accuracy, SFT towns' unasked facts"),
    ("sft", "fact_accuracy_pretrain_only", "SFT fact accuracy, pretrain-only towns"),
    ("reward", "pairwise_accuracy", "reward model: held-out pairwise accuracy (vs labels)"),
    ("reward", "pairwise_accuracy_gold", "reward model vs gold (pairs gold does not tie)"),
    ("reward", "label_gold_agreement", "labels vs gold (the same pairs)"),
    ("ppo", "gold_score_greedy", "PPO gold score, greedy"),
    ("ppo", "gold_score_chat", "PPO gold score, chat default"),
    ("ppo", "gold_score_t1", "PPO gold score, T=1"),
    ("ppo", "gold_minus_sft_greedy", "PPO − SFT gold, greedy (paired)"),
    ("ppo", "gold_minus_sft_chat", "PPO − SFT gold, chat default (paired)"),
    ("ppo", "gold_minus_sft_t1", "PPO − SFT gold, T=1 (paired)"),
    ("ppo", "kl_to_sft", "KL(PPO ‖ SFT), test prompts"),
    ("ppo", "fact_accuracy_pretrain_only", "PPO fact accuracy, pretrain-only towns"),
]


def collect(seeds_dir: Path, overopt: Path | None, commit: str | None = None, overopt_commit: str | None = None) -> dict:
    sys.path.insert(0, str(REPO))
    from pipeline.bootstrap import across_seeds
    from pipeline.report import over_optimisation_points
    from stages.common import read_jsonl

    summary = json.loads((seeds_dir / "seeds.json").read_text())
    seeds = summary["seeds"]
    rows = []
    for stage, key, label in HEADLINE:
        evals = {s: json.loads((seeds_dir / f"seed-{s}" / stage / "eval.json").read_text()) for s in seeds}
        per_seed = {str(s): {"value": e.get(key), "ci95": e.get(f"{key}_ci95")} for s, e in evals.items()}
        values = [v["value"] for v in per_seed.values() if v["value"] is not None]
        row = {"stage": stage, "key": key, "label": label, "per_seed": per_seed,
               **({k: across_seeds(values)[k] for k in ("mean", "std", "ci95")} if values else {})}
        if "_minus_" in key:
            row["seeds_whose_ci_excludes_0"] = sum(1 for v in per_seed.values() if v["ci95"] and (v["ci95"][0] > 0 or v["ci95"][1] < 0))
        rows.append(row)
    arena = {}
    for s in seeds:
        path = seeds_dir / f"seed-{s}" / "arena" / "ratings.json"
        if path.exists():
            arena[str(s)] = json.loads(path.read_text())
    figures = {"seeds": seeds, "command": f"chatsmith run recipes/tiny-cpu.yaml --seeds {','.join(map(str, seeds))}",
               "commit": commit or _commit(), "rows": rows, "arena": arena}
    if overopt is not None:
        points = over_optimisation_points(read_jsonl(overopt / "ppo" / "metrics.jsonl"))
        final = json.loads((overopt / "ppo" / "eval.json").read_text())
        figures["overopt"] = {
            "command": "make demo-overopt (chatsmith run recipes/tiny-cpu.yaml stages.ppo.kl_coef=0 stages.reward.holdout_fraction=0.5 "
                       "stages.ppo.max_steps=150 stages.ppo.eval_steps=10 stages.ppo.num_eval_prompts=240 stages.ppo.select_best=holdout_reward)",
            "commit": overopt_commit or commit or _commit(), "points": points, "selected_step": final.get("selected_step"),
            "test_gold_score_greedy_selected": final.get("gold_score_greedy"),
        }
        best_gold = overopt.parent / (overopt.name + "-select-gold") / "ppo" / "eval.json"
        if best_gold.exists():
            other = json.loads(best_gold.read_text())
            figures["overopt"].update(selected_step_by_gold=other.get("selected_step"),
                                      test_gold_score_greedy_by_gold=other.get("gold_score_greedy"))
    return figures


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def _num(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render(figures: dict) -> str:
    seeds = figures["seeds"]
    lines = [f"Generated by `tests/bench/readme_figures.py` from `{figures['command']}` (commit {figures['commit']}); "
             "each seed's value with its own 95% bootstrap CI (resampling facts), then the mean over seeds with a "
             "t-based 95% CI of the mean.", "",
             "| figure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean [95% CI over seeds] |",
             "|---|" + "---|" * len(seeds) + "---|"]
    for row in figures["rows"]:
        cells = []
        for s in seeds:
            cell = row["per_seed"][str(s)]
            ci = cell["ci95"]
            cells.append(_num(cell["value"]) + (f" [{_num(ci[0])}, {_num(ci[1])}]" if ci else ""))
        ci = row.get("ci95")
        summary = _num(row.get("mean")) + (f" [{_num(ci[0])}, {_num(ci[1])}]" if ci else "")
        if "seeds_whose_ci_excludes_0" in row:
            summary += f"; CI excludes 0 in {row['seeds_whose_ci_excludes_0']}/{len(seeds)} seeds"
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {summary} |")
    if figures.get("arena"):
        names = [n for n in ("ppo", "sft", "pretrain") if all(n in r for r in figures["arena"].values())]
        lines += ["", "Arena (gold judge, test prompts, chat default; Bradley–Terry rating [95% CI by prompt]):", "",
                  "| seed | " + " | ".join(names) + " | order, CIs apart |", "|---|" + "---|" * (len(names) + 1)]
        for s, ratings in figures["arena"].items():
            ordered = all(ratings[a]["ci95"][0] > ratings[b]["ci95"][1] for a, b in zip(names, names[1:]))
            lines.append(f"| {s} | " + " | ".join(f"{ratings[n]['rating']:.0f} [{ratings[n]['ci95'][0]:.0f}, "
                                                  f"{ratings[n]['ci95'][1]:.0f}]" for n in names)
                         + f" | {' > '.join(names) if ordered else 'no'} |")
    overopt = figures.get("overopt")
    if overopt:
        lines += ["", f"Over-optimisation (`{overopt['command']}`, seed {seeds[0]}, commit {overopt['commit']}): the monitor on the dev prompts "
                  "(greedy) at each evaluated update.", "",
                  "| update | KL to SFT | proxy reward | held-out reward | gold |", "|---|---|---|---|---|"]
        for p in overopt["points"]:
            lines.append(f"| {p['step']} | {_num(p['kl'])} | {_num(p['reward'])} | {_num(p['holdout'])} | {_num(p['gold'])} |")
        lines += ["", f"`select_best: holdout_reward` kept update {overopt['selected_step']}: test gold (greedy) "
                  f"{_num(overopt['test_gold_score_greedy_selected'])}"
                  + (f"; the update the gold judge would pick ({overopt['selected_step_by_gold']}) has "
                     f"{_num(overopt['test_gold_score_greedy_by_gold'])}." if "selected_step_by_gold" in overopt else ".")]
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds-dir", type=Path, required=True)
    parser.add_argument("--overopt", type=Path, default=None)
    parser.add_argument("--commit", default=None, help="the commit the runs were made at (default: HEAD)")
    parser.add_argument("--overopt-commit", default=None, help="the commit of the --overopt runs (default: --commit)")
    parser.add_argument("--write", action="store_true", help="write the figures file and the README block")
    args = parser.parse_args()
    figures = collect(args.seeds_dir, args.overopt, args.commit, args.overopt_commit)
    text = render(figures)
    if not args.write:
        print(text)
        return
    FIGURES.write_text(json.dumps(figures, indent=1) + "\n")
    readme = README.read_text()
    if readme_block(readme) is None:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    head, rest = readme.split(BEGIN, 1)
    README.write_text(head + BEGIN + "\n" + text + END + rest.split(END, 1)[1])
    print(f"wrote {FIGURES} and the README block")


if __name__ == "__main__":
    main()
