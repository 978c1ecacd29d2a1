"""The README's demo figures, generated from runs (never typed by hand).

    chatsmith run recipes/tiny-cpu.yaml --seeds 0,1,2,3,4 --out runs/seeds      # `make demo-seeds`
    make demo-overopt                                                           # runs/overopt*
    .venv/bin/python tests/bench/readme_figures.py --seeds-dir runs/seeds [--overopt runs/overopt] --write

reads the runs, writes the figures file `tests/bench/demo_figures.json` (`--write`) and replaces the block between
the README's `<!-- demo-figures:begin -->` and `<!-- demo-figures:end -->` markers with its rendering; without
`--write` it prints the rendering. It records by itself the commit it runs at (and refuses a working tree whose code
differs from that commit) and the gold judge's version; `tests/test_readme_figures.py` checks that the README's block
is the rendering of the committed figures file, that its commit is an ancestor of HEAD and its judge the current one.

Headline figures are means over seeds with a t-based 95% CI of the mean (between seeds), clipped to the figure's
range; each seed's own value and bootstrap CI (resampling facts: the test prompts of one fact together) are in the
detail table. The judge's baselines are measured by the evaluation's own code (`pipeline.eval.answers`) on each seed's
test prompts.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIGURES = REPO / "tests" / "bench" / "demo_figures.json"
README = REPO / "README.md"
BEGIN, END = "<!-- demo-figures:begin -->", "<!-- demo-figures:end -->"
CODE = ("pipeline", "stages", "labeling", "recipes")
"""What must be as committed for the figures to be the commit's."""
DECODINGS = {"greedy": "greedy", "chat": "chat default (T=0.7, top-p 0.95)", "t1": "T=1"}
RATES = [("fact_accuracy", "fact accuracy"), ("confident_wrong_rate", "confident-wrong rate"),
         ("abstain_rate", "abstention rate"), ("hedge_rate_correct", "hedge rate on correct answers"),
         ("style_deduction", "mean style deduction")]

SHARE, DIFFERENCE, POSITIVE = (0.0, 1.0), (-1.0, 1.0), (0.0, None)


def headline() -> list[tuple[str, str, str, tuple]]:
    """(stage, eval.json key, label, the figure's range)."""
    rows = [("sft", f"gold_score_{d}", f"SFT gold score, {label}", SHARE) for d, label in DECODINGS.items()]
    rows += [("ppo", f"gold_score_{d}", f"PPO gold score, {label}", SHARE) for d, label in DECODINGS.items()]
    rows += [("ppo", f"gold_minus_sft_{d}", f"PPO − SFT gold, {label} (paired)", DIFFERENCE) for d, label in DECODINGS.items()]
    rows += [("sft", "fact_accuracy_seen", "SFT fact accuracy, towns in SFT data (greedy)", SHARE),
             ("ppo", "fact_accuracy_seen", "PPO fact accuracy, towns in SFT data (greedy)", SHARE),
             ("sft", "fact_accuracy_pretrain_only", "SFT fact accuracy, pretrain-only towns (greedy)", SHARE),
             ("ppo", "fact_accuracy_pretrain_only", "PPO fact accuracy, pretrain-only towns (greedy)", SHARE),
             ("sft", "fact_accuracy_pair_unseen", "SFT fact accuracy, SFT towns' unasked facts (greedy)", SHARE),
             ("reward", "pairwise_accuracy", "reward model: held-out pairwise accuracy (vs labels; pairs split by fact)", SHARE),
             ("reward", "pairwise_accuracy_gold", "reward model vs gold (held-out pairs gold does not tie)", SHARE),
             ("reward", "label_gold_agreement", "label–gold agreement (the same pairs)", SHARE),
             ("ppo", "kl_to_sft", "KL(PPO ‖ SFT), test prompts", POSITIVE)]
    return rows


def decomposition() -> list[tuple[str, str, str, tuple]]:
    """Where PPO's gain comes from, per decoding: SFT's and PPO's rates and their paired difference."""
    rows = []
    for d, label in DECODINGS.items():
        for name, what in RATES:
            short = name.replace("_rate", "")
            span = POSITIVE if name == "style_deduction" else SHARE
            rows += [("sft", f"{name}_{d}", f"SFT {what}, {label}", span),
                     ("ppo", f"{name}_{d}", f"PPO {what}, {label}", span),
                     ("ppo", f"{short}_minus_sft_{d}", f"PPO − SFT {what}, {label} (paired)", DIFFERENCE)]
    return rows


def clipped(interval, span) -> list | None:
    if interval is None:
        return None
    low, high = span
    return [max(low, interval[0]) if low is not None else interval[0], min(high, interval[1]) if high is not None else interval[1]]


def across(rows_spec, evals: dict) -> list[dict]:
    from pipeline.eval.stats import across_seeds

    rows = []
    for stage, key, label, span in rows_spec:
        per_seed = {s: {"value": e[stage].get(key), "ci95": e[stage].get(f"{key}_ci95")} for s, e in evals.items()}
        values = [v["value"] for v in per_seed.values() if v["value"] is not None]
        row = {"stage": stage, "key": key, "label": label, "per_seed": per_seed}
        if len(values) == len(per_seed) and values:
            summary = across_seeds(values)
            row.update(mean=summary["mean"], std=summary["std"], ci95=clipped(summary["ci95"], span))
        rows.append(row)
    return rows


def baselines(run: Path) -> dict:
    """The gold judge's baselines on a run's test prompts, scored by the evaluation's own code: a random confident value,
    always abstaining, gibberish."""
    from pipeline.demo.world import World
    from pipeline.eval.answers import judge_answers, means
    from pipeline.eval.stats import split_rows
    from pipeline.recipe import load_recipe
    from stages.common import read_jsonl

    world = World.build(load_recipe(run / "recipe.yaml").data.world)
    _, test = split_rows(read_jsonl(run / "data" / "eval_prompts.jsonl"))
    rng = random.Random(0)
    replies = {
        "random confident value": [f"The {rng.choice(world.attributes[row['attribute']])}." for row in test],
        "always abstaining (\"I don't know.\")": ["I don't know." for _ in test],
        "gibberish": ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(30)).strip() for _ in test],
    }
    out = {}
    for name, texts in replies.items():
        records = [{"id": i, "prompt": row["prompt"], "greedy": [{"reply": t, "ended": True, "length": len(t.split())}]}
                   for i, (row, t) in enumerate(zip(test, texts))]
        judge_answers(records, test, {"gold": world.gold})
        out[name] = means(records)["gold_score_greedy"]
    return out


def collect(seeds_dir: Path, overopt: Path | None) -> dict:
    sys.path.insert(0, str(REPO))
    from pipeline.demo.judge import VERSION

    seeds = json.loads((seeds_dir / "seeds.json").read_text())["seeds"]
    runs = {str(s): seeds_dir / f"seed-{s}" for s in seeds}
    evals = {s: {stage: json.loads((run / stage / "eval.json").read_text()) for stage in ("sft", "reward", "ppo")}
             for s, run in runs.items()}
    versions = {e["sft"].get("judge_version", {}).get("gold") for e in evals.values()}
    if versions != {VERSION}:
        raise SystemExit(f"the runs were judged by gold judge versions {sorted(map(str, versions))}, not the current {VERSION}")
    entries = []
    for s, run in runs.items():
        arena = run / "arena" / "ratings.json"
        entries.append({"seed": int(s), "run": str(run), "baselines": baselines(run),
                        "arena": json.loads(arena.read_text()) if arena.exists() else None})
    figures = {"judge_version": VERSION, "commit": _commit(),
               "command": f"chatsmith run recipes/tiny-cpu.yaml --seeds {','.join(map(str, seeds))}",
               "seeds": entries, "headline": across(headline(), evals), "decomposition": across(decomposition(), evals)}
    figures["baselines"] = {name: {"per_seed": {str(e["seed"]): e["baselines"][name] for e in entries}}
                            for name in entries[0]["baselines"]}
    if overopt is not None:
        figures["overopt"] = overopt_figures(overopt)
    return figures


def overopt_figures(overopt: Path) -> dict:
    """`make demo-overopt`: the monitor's curve, every saved update's test scores (`RUN/ppo/updates.json`, written by
    `tests/bench/overopt_updates.py`: gold, the reward models, the conservative ensemble), and per check the update it
    selects on dev, that update's test gold, and its test scores of SFT and of the last update."""
    from pipeline.report import over_optimisation_points
    from stages.common import read_jsonl

    final = json.loads((overopt / "ppo" / "eval.json").read_text())
    out = {"command": "make demo-overopt", "points": over_optimisation_points(read_jsonl(overopt / "ppo" / "metrics.jsonl")),
           "selected_step": final.get("selected_step"), "test_gold_score_greedy_selected": final.get("gold_score_greedy"),
           "updates": None, "checks": None}
    path = overopt / "ppo" / "updates.json"
    if not path.exists():
        return out
    rows = json.loads(path.read_text())
    checks = [k[: -len("_score_greedy")] for k in rows[0] if k.endswith("_score_greedy") and not k.startswith("dev_")
              and f"dev_{k}" in rows[0]]
    out["updates"] = [{"step": r["step"], **{f"{c}_score_greedy": r[f"{c}_score_greedy"] for c in checks}} for r in rows
                      if r["checkpoint"] != "ppo"]
    sft, updates = rows[0], [r for r in rows[1:] if r["checkpoint"] != "ppo"]
    out["checks"] = {}
    for c in checks:
        chosen = max(updates, key=lambda r: r[f"dev_{c}_score_greedy"])
        out["checks"][c] = {"selects": chosen["step"], "selected_test_gold": chosen["gold_score_greedy"],
                            "sft": sft[f"{c}_score_greedy"], "last": updates[-1][f"{c}_score_greedy"]}
    return out


def _commit() -> str:
    """HEAD, refusing a working tree whose code differs from it (the figures would not be that commit's)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    changed = git("status", "--porcelain", "--", *CODE)
    if changed:
        raise SystemExit(f"the code differs from HEAD; commit it first:\n{changed}")
    return git("rev-parse", "HEAD")


def _num(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _interval(ci) -> str:
    return f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "[—]"


def _summary_table(rows: list[dict], title: str) -> list[str]:
    lines = [f"| {title} | mean over seeds [95% CI between seeds] | min – max |", "|---|---|---|"]
    for row in rows:
        values = [v["value"] for v in row["per_seed"].values() if v["value"] is not None]
        spread = f"{_num(min(values))} – {_num(max(values))}" if values else "—"
        lines.append(f"| {row['label']} | {_num(row.get('mean'))} {_interval(row.get('ci95'))} | {spread} |")
    return lines


def _detail_table(rows: list[dict], seeds: list[str]) -> list[str]:
    lines = ["| figure | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for row in rows:
        cells = [f"{_num(row['per_seed'][s]['value'])} {_interval(row['per_seed'][s]['ci95'])}" for s in seeds]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def render(figures: dict) -> str:
    seeds = [str(e["seed"]) for e in figures["seeds"]]
    lines = [f"Generated by `tests/bench/readme_figures.py` from `{figures['command']}` at commit {figures['commit'][:12]}, "
             f"gold judge v{figures['judge_version']}. Headline: the mean over the {len(seeds)} seeds with a t-based 95% CI "
             "between seeds (clipped to the figure's range) and the smallest and largest seed; each seed's own value and "
             "bootstrap CI (resampling facts) are in the detail tables below.", ""]
    lines += _summary_table(figures["headline"], "figure (test prompts)")
    lines += ["", "The judge's baselines on the same test prompts (gold score, greedy; the evaluation's own code):", "",
              "| reply | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for name, row in figures["baselines"].items():
        lines.append(f"| {name} | " + " | ".join(_num(row["per_seed"][s]) for s in seeds) + " |")
    sft = next(r for r in figures["headline"] if (r["stage"], r["key"]) == ("sft", "gold_score_greedy"))
    lines.append("| the SFT model | " + " | ".join(_num(sft["per_seed"][s]["value"]) for s in seeds) + " |")
    lines += ["", "Where PPO's gain comes from (rates over the test prompts' replies; hedge rate among correct replies):", ""]
    lines += _summary_table(figures["decomposition"], "figure")
    arenas = [e for e in figures["seeds"] if e["arena"]]
    if arenas:
        names = [n for n in ("ppo", "sft", "pretrain") if all(n in e["arena"] for e in arenas)]
        lines += ["", "Arena (gold judge, test prompts, chat default; Bradley–Terry rating [95% CI, bootstrap by fact, 1,000 rounds]):", "",
                  "| seed | " + " | ".join(names) + " | order, CIs apart |", "|---|" + "---|" * (len(names) + 1)]
        apart = 0
        for e in arenas:
            ratings = e["arena"]
            ordered = all(ratings[a]["ci95"][0] > ratings[b]["ci95"][1] for a, b in zip(names, names[1:]))
            apart += ordered
            lines.append(f"| {e['seed']} | " + " | ".join(f"{ratings[n]['rating']:.0f} [{ratings[n]['ci95'][0]:.0f}, "
                                                         f"{ratings[n]['ci95'][1]:.0f}]" for n in names)
                         + f" | {' > '.join(names) if ordered else 'no'} |")
        lines += ["", f"{' > '.join(names)} with CIs apart in {apart} of {len(arenas)} seeds."]
    lines += ["", "<details><summary>Per seed, with each seed's bootstrap 95% CI</summary>", ""]
    lines += _detail_table(figures["headline"] + figures["decomposition"], seeds)
    lines += ["", "</details>"]
    overopt = figures.get("overopt")
    if overopt:
        test = {u["step"]: u for u in (overopt.get("updates") or [])}
        checks = [c for c in (overopt.get("checks") or {}) if c != "gold"]
        lines += ["", "Over-optimisation (`make demo-overopt`, seed 0): the monitor on the dev prompts (greedy) at each "
                  "evaluated update, and each saved update on the test prompts (greedy) by gold and by the checks that could "
                  "stand in for it (`tests/bench/overopt_updates.py`; `ensemble_min`: per reply, the lower of the two reward "
                  "models' standardised scores).", "",
                  "| update | KL to SFT | proxy reward | held-out reward | gold (dev) | gold (test) | "
                  + " | ".join(f"{c} (test)" for c in checks) + " |", "|---|---|---|---|---|---|" + "---|" * len(checks)]
        for p in overopt["points"]:
            u = test.get(p["step"], {})
            lines.append(f"| {p['step']} | {_num(p['kl'])} | {_num(p['reward'])} | {_num(p['holdout'])} | {_num(p['gold'])} | "
                         f"{_num(u.get('gold_score_greedy'))} |" + "".join(f" {_num(u.get(f'{c}_score_greedy'))} |" for c in checks))
        if test:
            best = max((u for u in test.values() if u["step"] > 0), key=lambda u: u["gold_score_greedy"])
            lines += ["", f"`select_best: holdout_reward` kept update {overopt['selected_step']}: test gold (greedy) "
                      f"{_num(overopt['test_gold_score_greedy_selected'])}; the best test gold over all saved updates is "
                      f"{_num(best['gold_score_greedy'])} (update {best['step']}).", "",
                      "| check | selects on dev | its test gold | SFT (test) | last update (test) | last below SFT |",
                      "|---|---|---|---|---|---|"]
            for c, v in overopt["checks"].items():
                lines.append(f"| {c} | {v['selects']} | {_num(v['selected_test_gold'])} | {_num(v['sft'])} | {_num(v['last'])} | "
                             f"{'yes' if v['last'] < v['sft'] else 'no'} |")
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds-dir", type=Path, required=True)
    parser.add_argument("--overopt", type=Path, default=None)
    parser.add_argument("--write", action="store_true", help="write the figures file and the README block")
    args = parser.parse_args()
    figures = collect(args.seeds_dir, args.overopt)
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
