"""Over-optimisation judged on the test prompts: SFT and every saved PPO update of a run, by gold and by each check
that could stand in for gold on real data.

    make demo-overopt                                     # runs this after the run
    .venv/bin/python tests/bench/overopt_updates.py runs/overopt [--reward NAME=DIR ...]

The run must keep its updates (`stages.ppo.keep_updates: true`: `RUN/ppo/updates/update-N/`). SFT (step 0), every
saved update and the stage's output answer the run's held-out prompts greedy with the evaluation's own code
(`pipeline.eval.answers.answer`, the recipe's `eval` settings) and are judged with `judge_answers` by:
- `gold`: the run's data source's gold judge (the demo world's);
- `reward`: the reward model PPO optimised (`RUN/reward`);
- `holdout_reward`: the held-out reward model (`RUN/reward/holdout`: another half of the prompts, another start);
- any `--reward NAME=DIR` (a reward model trained apart, e.g. from another starting point);
- `ensemble_min`: a conservative ensemble (Coste et al., 2023): per reply, the minimum over the reward models above of
  their scores, each standardised with its own `reward_stats.json` mean and std (the scores of its training replies).

Test prompts give every row's figures; the first `stages.ppo.num_eval_prompts` dev prompts (the monitor's) give the
`dev_*` figures each check would select an update by, as `select_best` does. Writes `RUN/ppo/updates.json`, a list
of rows {"step", "checkpoint", "gold_score_greedy", "<judge>_score_greedy", ..., "dev_<judge>_score_greedy"} with
SFT's as step 0, and prints a markdown table and, per check, whether it ranks the last update below SFT on the test
prompts and which update it would select on dev against the best test gold of all saved updates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NEAR_PEAK = 0.03
"""A selection "near the peak" has test gold within this of the best saved update's."""


class ConservativeEnsemble:
    """Per reply, the minimum of the reward models' standardised scores: a reply must fool every one of them."""

    name, version = "ensemble_min", "1"

    def __init__(self, judges: dict, stats: dict):
        self.judges, self.stats = judges, stats

    def __call__(self, rows, replies):
        from pipeline.eval.judges import verdict

        scored = {name: [v["score"] for v in judge(rows, replies)] for name, judge in self.judges.items()}
        z = {name: [(s - self.stats[name]["mean"]) / self.stats[name]["std"] for s in scores] for name, scores in scored.items()}
        return [verdict(min(z[name][i] for name in z), criteria={f"z_{name}": z[name][i] for name in z}) for i in range(len(replies))]


def reward_judges(run_dir: Path, extra: list[str], batch_size: int) -> tuple[dict, dict]:
    """({name: RewardModelJudge}, {name: reward_stats}) for the run's reward models and the extra ones."""
    from pipeline.eval.judges import RewardModelJudge

    dirs = {"reward": run_dir / "reward", "holdout_reward": run_dir / "reward" / "holdout"}
    for item in extra:
        name, _, path = item.partition("=")
        dirs[name] = Path(path)
    missing = [str(d) for d in dirs.values() if not (d / "config.json").exists()]
    if missing:
        raise SystemExit(f"not a reward-model checkpoint: {', '.join(missing)}")
    judges = {name: RewardModelJudge(d, name=name, batch_size=batch_size) for name, d in dirs.items()}
    stats = {name: json.loads((d / "reward_stats.json").read_text()) for name, d in dirs.items()}
    return judges, stats


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir): SFT as step 0, then every saved update in order."""
    updates = sorted((int(p.name.split("-")[1]), p) for p in (run_dir / "ppo" / "updates").glob("update-*"))
    if not updates:
        raise SystemExit(f"{run_dir}/ppo/updates/ has no update-N: run with stages.ppo.keep_updates=true")
    return [(0, run_dir / "sft")] + updates


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    import torch

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def judge_checkpoint(path: Path, splits: dict, judges: dict, settings) -> dict:
    """The evaluation's greedy answers of one checkpoint on each split, judged: `means` keys (test) and `dev_<judge>_score_greedy`."""
    from pipeline.eval.answers import answer, judge_answers, load_chat_checkpoint, means
    from stages.chat_format import stop_token_ids

    model, tokenizer, chat_format = load_chat_checkpoint(path)
    common = dict(stop_ids=stop_token_ids(chat_format), max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                  seed=settings.seed, decodings=("greedy",))
    row = {}
    for split, rows in splits.items():
        records = answer(model, tokenizer, rows, **common)
        judge_answers(records, rows, judges)
        figures = means(records)
        if split == "test":
            row.update(figures)
            row["examples"] = [r["greedy"][0]["reply"] for r in records[:3]]
        else:
            row.update({f"dev_{name}_score_greedy": figures[f"{name}_score_greedy"] for name in judges})
    return row


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else float("nan")


def verdicts(rows: list[dict], checks: list[str]) -> list[dict]:
    """Per check: does it rank the last update below SFT (test); the update it selects on dev and that update's test
    gold against the best test gold of all saved updates; its rank correlation with test gold over the updates."""
    sft, updates = rows[0], [r for r in rows[1:] if r["checkpoint"].startswith("ppo/updates/")]
    last, peak = updates[-1], max(updates, key=lambda r: r["gold_score_greedy"])
    out = []
    for check in checks:
        key = f"{check}_score_greedy"
        chosen = max(updates, key=lambda r: r[f"dev_{key}"])
        out.append({"check": check, "sft": sft[key], "last": last[key], "last_below_sft": last[key] < sft[key],
                    "selects": chosen["step"], "selected_test_gold": chosen["gold_score_greedy"],
                    "peak_step": peak["step"], "peak_test_gold": peak["gold_score_greedy"],
                    "near_peak": chosen["gold_score_greedy"] >= peak["gold_score_greedy"] - NEAR_PEAK,
                    "spearman_with_gold": spearman([r[key] for r in updates], [r["gold_score_greedy"] for r in updates])})
    return out


def render(rows: list[dict], checks: list[str], summary: list[dict]) -> str:
    flags = ["gold_correct_greedy", "gold_confident_wrong_greedy", "gold_abstained_greedy", "reply_length_greedy"]
    flags = [f for f in flags if f in rows[0]]
    lines = ["| update | " + " | ".join(f"{c} (test)" for c in checks) + " | " + " | ".join(flags) + " |",
             "|---|" + "---|" * (len(checks) + len(flags))]
    for r in rows:
        name = "SFT" if r["step"] == 0 else str(r["step"]) + (" (output)" if r.get("output") else "")
        lines.append(f"| {name} | " + " | ".join(f"{r[f'{c}_score_greedy']:.3f}" for c in checks) + " | "
                     + " | ".join(f"{r[f]:.3f}" for f in flags) + " |")
    lines += ["", "| check | SFT (test) | last update (test) | ranks the last below SFT | selects on dev | its test gold "
              f"| best test gold (update) | within {NEAR_PEAK} | Spearman with test gold over updates |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['check']} | {s['sft']:.3f} | {s['last']:.3f} | {'yes' if s['last_below_sft'] else 'no'} | "
                     f"{s['selects']} | {s['selected_test_gold']:.3f} | {s['peak_test_gold']:.3f} ({s['peak_step']}) | "
                     f"{'yes' if s['near_peak'] else 'no'} | {s['spearman_with_gold']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--reward", action="append", default=[], metavar="NAME=DIR",
                        help="another reward model to judge with (and to put in the ensemble)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from pipeline.eval.run import held_out_rows
    from pipeline.recipe import load_recipe
    from pipeline.runner import Run

    run_dir = args.run
    if not (run_dir / "recipe.yaml").exists():
        raise SystemExit(f"{run_dir}: not a run directory (no recipe.yaml); run make demo-overopt first")
    run = Run(load_recipe(run_dir / "recipe.yaml"), run_dir, say=lambda *_: None)
    settings = run.recipe.eval
    dev, test = held_out_rows(run)
    splits = {"test": test, "dev": dev[: run.recipe.stages.ppo.num_eval_prompts]}
    rms, stats = reward_judges(run_dir, args.reward, settings.batch_size)
    judges = {**run.source.judges(), **rms, "ensemble_min": ConservativeEnsemble(rms, stats)}
    checks = list(judges)

    eval_json = json.loads((run_dir / "ppo" / "eval.json").read_text())
    selected = eval_json.get("selected_step")
    rows = []
    for step, path in checkpoints(run_dir):
        print(f"judging {path} ...", file=sys.stderr, flush=True)
        row = {"step": step, "checkpoint": str(path.relative_to(run_dir)), **judge_checkpoint(path, splits, judges, settings)}
        rows.append(row)
    output = next((r for r in rows if r["step"] == selected and same_weights(run_dir / r["checkpoint"], run_dir / "ppo")), None)
    if output is not None:
        output["output"] = True  # the stage's output is this update (select_best's pick)
    else:
        print(f"judging {run_dir / 'ppo'} (the stage's output) ...", file=sys.stderr, flush=True)
        rows.append({"step": selected, "checkpoint": "ppo", "output": True, **judge_checkpoint(run_dir / "ppo", splits, judges, settings)})
    (run_dir / "ppo" / "updates.json").write_text(json.dumps(rows, indent=1) + "\n")
    summary = verdicts(rows, checks)
    print(f"{run_dir}: {len(splits['test'])} test prompts, {len(splits['dev'])} dev prompts (selection), greedy; "
          f"the stage's output is update {selected} (select_best: {run.recipe.stages.ppo.select_best})\n")
    print(render(rows, checks, summary))
    for s in summary:
        print(f"- {s['check']}: {'ranks' if s['last_below_sft'] else 'does not rank'} the last update below SFT "
              f"({s['last']:.3f} vs {s['sft']:.3f}); on dev it selects update {s['selects']}, test gold "
              f"{s['selected_test_gold']:.3f} vs the best {s['peak_test_gold']:.3f} (update {s['peak_step']})")
    print(f"\nwrote {run_dir / 'ppo' / 'updates.json'}")


if __name__ == "__main__":
    main()
