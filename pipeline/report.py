"""`DIR/report.md`: what each stage achieved, its curves, and the checkpoints' answers side by side.

Also the per-stage table `chatsmith run` prints at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

from stages.common import read_jsonl
from pipeline.registry import STAGE_ORDER

# The figures that say what each stage achieved (issue-defined keys first).
HEADLINE = {
    "pretrain": ["eval_loss", "bits_per_byte"],
    "sft": ["gold_score_greedy", "gold_score_chat", "gold_score_t1", "fact_accuracy_seen", "fact_accuracy_pretrain_only",
            "end_of_turn_rate_greedy"],
    "reward": ["pairwise_accuracy", "train_pairwise_accuracy"],
    "ppo": ["gold_score_greedy", "gold_score_greedy_sft", "gold_minus_sft_greedy", "gold_score_chat", "gold_score_chat_sft",
            "gold_minus_sft_chat", "gold_score_t1", "gold_score_t1_sft", "reward_score_greedy", "reward_minus_sft_greedy",
            "kl_to_sft", "fact_accuracy_seen", "fact_accuracy_pretrain_only", "end_of_turn_rate_greedy"],
}
CURVES = {
    "pretrain": [("loss", "train loss")],
    "sft": [("loss", "train loss"), ("mean_token_accuracy", "token accuracy")],
    "reward": [("loss", "train loss"), ("accuracy", "pairwise accuracy (train batches)")],
    "ppo": [("reward_raw", "reward (raw, training rollouts)"), ("kl", "KL to reference"),
            ("eval_reward_score", "dev prompts: reward-model score (greedy)"), ("eval_gold_score", "dev prompts: gold score (greedy)")],
}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "—" if value is None else str(value)


def _ci(interval) -> str:
    return f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""


def stage_table(run_dir: Path) -> str:
    rows = []
    manifest = run_dir / "manifest.json"
    stages = json.loads(manifest.read_text()).get("stages", {}) if manifest.exists() else {}
    for name in STAGE_ORDER:
        eval_path = run_dir / name / "eval.json"
        if not eval_path.exists():
            continue
        metrics = json.loads(eval_path.read_text())
        figures = ", ".join(f"{k}={_fmt(metrics[k])}{_ci(metrics.get(k + '_ci95'))}" for k in HEADLINE[name] if k in metrics)
        seconds = stages.get(name, {}).get("seconds")
        rows.append(f"| {name} | {figures} | {'—' if seconds is None else f'{seconds:.0f}'} |")
    return "| stage | figures | seconds |\n|---|---|---|\n" + "\n".join(rows)


def _plot(run_dir: Path, name: str) -> str | None:
    path = run_dir / name / "metrics.jsonl"
    if not path.exists():
        return None
    rows = read_jsonl(path)
    curves = [(key, label) for key, label in CURVES[name] if any(key in r for r in rows)]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3), squeeze=False)
    for ax, (key, label) in zip(axes[0], curves):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None)
        ax.set_title(label)
        ax.set_xlabel("update" if name == "ppo" else "step")
        ax.grid(alpha=0.3)
    fig.suptitle(name)
    fig.tight_layout()
    out = run_dir / "plots" / f"{name}.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return str(out.relative_to(run_dir))


def over_optimisation_points(rows: list[dict]) -> list[dict]:
    """The RL stage's monitor evaluations against the KL the policy had reached: {kl, gold, reward, holdout}
    per evaluated update (KL: the mean sequence KL of that update's rollouts to the reference; update 0 is the
    SFT policy, KL 0). The monitor's scores are of greedy answers to the dev prompts."""
    kl_at = {r["step"]: r["kl"] for r in rows if r.get("kl") is not None}
    points = []
    for r in rows:
        if r.get("eval_reward_score") is None:
            continue
        kl = 0.0 if r["step"] == 0 else kl_at.get(r["step"])
        if kl is not None:
            points.append({"step": r["step"], "kl": kl, "gold": r.get("eval_gold_score"), "reward": r["eval_reward_score"],
                           "holdout": r.get("eval_holdout_reward_score")})
    return points


def _over_optimisation_plot(run_dir: Path) -> str | None:
    """Gold score and proxy reward (and the held-out reward model's) against KL to SFT: the over-optimisation
    curve (Gao et al., 2022). Reward keeps rising with KL; gold, where there is one, peaks and falls."""
    path = run_dir / "ppo" / "metrics.jsonl"
    points = over_optimisation_points(read_jsonl(path)) if path.exists() else []
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(6, 3.5))
    kl = [p["kl"] for p in points]
    left.plot(kl, [p["reward"] for p in points], marker=".", color="tab:blue", label="reward model (proxy)")
    if any(p["holdout"] is not None for p in points):
        left.plot(kl, [p["holdout"] for p in points], marker=".", color="tab:green", label="held-out reward model")
    left.set_xlabel("KL(policy || SFT) of the update's rollouts")
    left.set_ylabel("reward model score")
    left.grid(alpha=0.3)
    handles = left.get_legend_handles_labels()
    if any(p["gold"] is not None for p in points):
        right = left.twinx()
        right.plot(kl, [p["gold"] for p in points], marker=".", color="tab:red", label="gold")
        right.set_ylabel("gold score")
        more = right.get_legend_handles_labels()
        handles = (handles[0] + more[0], handles[1] + more[1])
    left.legend(*handles, loc="lower right", fontsize=8)
    fig.suptitle("over-optimisation: monitor (dev prompts, greedy) vs KL")
    fig.tight_layout()
    out = run_dir / "plots" / "over_optimisation.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return str(out.relative_to(run_dir))


def _samples(run_dir: Path, count: int) -> str:
    answers = {}
    for name in ("sft", "ppo"):
        path = run_dir / name / "eval_answers.jsonl"
        if path.exists():
            answers[name] = {a["id"]: a for a in read_jsonl(path) if a.get("split", "test") == "test"}
    if "sft" not in answers or count == 0:
        return ""
    ids = list(answers["sft"])[:count]
    prompts = [answers["sft"][i]["prompt"] for i in ids]
    base = []
    if (run_dir / "pretrain" / "config.json").exists():
        from pipeline.eval.answers import base_continuations

        base = base_continuations(run_dir / "pretrain", prompts, max_new_tokens=32)
    lines = ["## Answers side by side", "",
             "Greedy answers to held-out test prompts (and one sample at the chat default, T=0.7 top-p 0.95). "
             "The base model has not learned the chat format; it continues the text.", ""]
    for n, (i, prompt) in enumerate(zip(ids, prompts)):
        lines += [f"**{prompt}**", ""]
        if base:
            lines.append(f"- base: {base[n]!r}")
        for name in ("sft", "ppo"):
            if name in answers and i in answers[name]:
                chat = answers[name][i].get("replies", {}).get("chat", [{}])[0].get("reply")
                lines.append(f"- {name}: {answers[name][i]['greedy']!r} (chat sample: {chat!r})")
        lines.append("")
    return "\n".join(lines)


def _arena(run_dir: Path) -> list[str]:
    """The arena of the run's checkpoints (`pipeline.eval.run.run_arena`): ratings table and plot."""
    from pipeline.eval.arena.results import ratings_markdown

    ratings, summary = run_dir / "arena" / "ratings.json", run_dir / "arena" / "summary.json"
    if not ratings.exists():
        return []
    info = json.loads(summary.read_text()) if summary.exists() else {}
    parts = ["## Arena", "",
             f"Every checkpoint against every other on the test prompts, 2 answers each at the chat default "
             f"(T=0.7, top-p 0.95), judged by `{info.get('judge', '?')}` in both orders (ties count half); "
             f"Bradley–Terry ratings (400 points = 10:1 odds, mean 1000) with 95% bootstrap CIs by prompt "
             f"({info.get('battles', '?')} verdicts; `arena/`).", "",
             ratings_markdown(json.loads(ratings.read_text())), ""]
    if (run_dir / "arena" / "ratings.png").exists():
        parts += ["![arena](arena/ratings.png)", ""]
    return parts


def write_report(run_dir: str | Path, *, recipe_name: str, samples: int = 4) -> Path:
    run_dir = Path(run_dir)
    parts = [f"# chatsmith run: {recipe_name}", "", f"Run directory: `{run_dir}`", "", "## Stages", "", stage_table(run_dir), ""]
    labels = run_dir / "labels" / "made_from.json"
    if labels.exists():
        made = json.loads(labels.read_text())
        ingest = made.get("ingest", {})
        build = made.get("build", {})
        reasons = ", ".join(f"{k} {v}" for k, v in (ingest.get("reasons") or {}).items()) or "none"
        parts += ["## Labels", "",
                  "Comparison tasks (K replies per prompt, some sampled from the SFT checkpoint) ranked by simulated "
                  "labelers, exported as Label Studio JSON and ingested like any labeler export "
                  "(`labels/ingest/summary.json`, `labels/ingest/rejected.jsonl`):", "",
                  f"- read {ingest.get('read')}, accepted {ingest.get('accepted')}, rejected {ingest.get('rejected')} ({reasons})",
                  f"- built {build.get('comparisons_train')} training and {build.get('comparisons_eval')} held-out "
                  f"comparisons from {build.get('prompts')} prompts ({build.get('eval_prompts')} held out); "
                  f"{build.get('tied_pairs_dropped')} tied pairs dropped",
                  "- agreement and labeler figures: `chatsmith labels stats labels/ingest`", ""]
    parts += _arena(run_dir)
    parts += ["## Curves", ""]
    for name in STAGE_ORDER:
        plot = _plot(run_dir, name)
        if plot:
            parts += [f"![{name}]({plot})", ""]
    curve = _over_optimisation_plot(run_dir)
    if curve:
        parts += ["## Over-optimisation", "",
                  "The RL stage's monitor (greedy answers to the dev prompts) against the KL its policy had reached: the "
                  "proxy reward it optimises, the held-out reward model's score when the reward stage trained one, "
                  "and the gold score on the demo. Reward rising while gold (or the held-out score) falls is reward "
                  "hacking; `stages.ppo.select_best` picks the update kept.", "", f"![over-optimisation]({curve})", ""]
    parts.append(_samples(run_dir, samples))
    out = run_dir / "report.md"
    out.write_text("\n".join(parts) + "\n")
    return out
