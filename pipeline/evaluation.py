"""The run's evaluation of its chat checkpoints (SFT, PPO / GRPO / RLOO / DPO), demo or real, with 95% CIs.

Held-out prompts (`DIR/data/eval_prompts.jsonl`) carry a `split`: `dev` rows feed PPO's monitor,
best-checkpoint selection and the rewrite loop; `test` rows give the headline figures only (rows without
a split count as test). Per checkpoint:
- test prompts, answered greedy, at the chat default (T=0.7, top-p 0.95, 2 samples) and at T=1
  (`stages.evaluation.DECODINGS`), judged by every judge the run has: the reward model of the run (or of
  `stages.ppo.reward_model`) as `reward`, and on the demo the world's gold judge as `gold`;
- dev prompts, greedy, with the reward model's score (what `chatsmith labels tasks --from-eval` ranks);
- an RL checkpoint also gets `kl_to_sft` along its own T=1 samples of the same test prompts, and every
  judge's score as a paired difference to SFT's (`<judge>_minus_sft_<decoding>`, with its CI).
CIs are bootstrap percentiles that resample clusters (`cluster` of a row: the demo's (town, attribute)
fact; otherwise the prompt), per `pipeline.bootstrap`.

Writes `DIR/<stage>/eval_answers.jsonl` (one line per prompt: id, split, prompt, replies, verdicts,
`greedy` and `reward` for the rewrite loop) and returns the figures merged into `eval.json`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.bootstrap import mean_ci, paired_difference_ci
from stages.common import read_jsonl, write_jsonl
from stages.evaluation import DECODINGS, RewardModelJudge, answer, judge_answers, kl_to_reference, means, per_prompt


def split_rows(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(dev, test) held-out rows; rows without a `split` are test rows."""
    return [r for r in rows if r.get("split") == "dev"], [r for r in rows if r.get("split", "test") != "dev"]


def cluster_of(row: dict, index: int):
    """What the bootstrap resamples: the same fact asked twice is one draw."""
    if "town" in row and "attribute" in row:
        return f"{row['town']}/{row['attribute']}"
    return row.get("id", index)


def evaluate_stage(run, name: str, checkpoint: Path, *, reference: Path | None = None) -> dict:
    """Figures (with CIs) of a chat checkpoint of the run; writes its eval_answers.jsonl. `reference`: the
    policy an RL stage started from (the run's SFT checkpoint, or `stages.ppo.policy`)."""
    from pipeline.evaluate import load_chat_checkpoint
    from stages.chat_format import stop_token_ids

    rows_path = run.data_path("eval_prompts.jsonl")
    if not rows_path.exists():
        return {}
    dev, test = split_rows(read_jsonl(rows_path))
    settings = run.recipe.eval
    model, tokenizer, chat_format = load_chat_checkpoint(checkpoint)
    stop_ids = stop_token_ids(chat_format)
    common = dict(stop_ids=stop_ids, max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size, seed=settings.seed)
    judges = run_judges(run)
    records = answer(model, tokenizer, test, **common)
    judge_answers(records, test, judges)
    figures = {**means(records), "eval_prompts_test": len(test), "eval_prompts_dev": len(dev)}
    clusters = [cluster_of(r, i) for i, r in enumerate(test)]
    for key, values in score_lists(records).items():
        figures[f"{key}_ci95"] = list(mean_ci(values, clusters=clusters, seed=settings.seed)[1:])
    if reference is not None:
        figures.update(against_sft(run, Path(reference), model, tokenizer, records, test, clusters, common))
    dev_records = answer(model, tokenizer, dev, decodings=("greedy",), **common) if dev else []
    if dev_records and "reward" in judges:
        judge_answers(dev_records, dev, {"reward": judges["reward"]})
    if run.demo:
        figures.update(run.demo.stage_figures(records, test))
    write_jsonl(checkpoint / "eval_answers.jsonl", [answer_line(r, row, "test") for r, row in zip(records, test)]
                + [answer_line(r, row, "dev") for r, row in zip(dev_records, dev)])
    return figures


def run_judges(run) -> dict:
    judges = {}
    reward_dir = reward_model_dir(run)
    if reward_dir is not None:
        judges["reward"] = RewardModelJudge(reward_dir, batch_size=run.recipe.eval.batch_size)
    if run.demo:
        judges["gold"] = run.demo.gold_judge()
    return judges


def reward_model_dir(run) -> Path | None:
    """The run's reward model once it exists (so SFT, evaluated before it is trained, has no reward score)."""
    stages = run.recipe.stages
    explicit = getattr(stages.ppo, "reward_model", None) if stages.ppo else None
    candidate = Path(explicit) if explicit else run.stage_dir("reward")
    return candidate if (candidate / "config.json").exists() else None


def score_lists(records: list[dict]) -> dict[str, list[float]]:
    """`<judge>_score_<decoding>` -> one value per prompt."""
    if not records:
        return {}
    out = {}
    for decoding in (k for k in records[0] if k in DECODINGS):
        for judge in records[0][decoding][0].get("verdicts", {}):
            out[f"{judge}_score_{decoding}"] = per_prompt(records, decoding, judge)
    return out


def against_sft(run, sft_dir: Path, model, tokenizer, records, test, clusters, common) -> dict:
    """KL to the SFT policy on the same test prompts, SFT's figures by the judges the run has now, and paired
    differences (the same prompts, seeds and decodings)."""
    from pipeline.evaluate import load_chat_checkpoint

    reference, reference_tokenizer, _ = load_chat_checkpoint(sft_dir)
    kl = kl_to_reference(model, reference, tokenizer, test, stop_ids=common["stop_ids"],
                         max_new_tokens=common["max_new_tokens"], batch_size=common["batch_size"], seed=common["seed"] + 17)
    figures = {"kl_to_sft": sum(kl) / len(kl), "kl_to_sft_ci95": list(mean_ci(kl, clusters=clusters)[1:])}
    sft_records = sft_test_records(sft_dir, len(test))
    if sft_records is None:  # a policy from outside the run: answer with it now
        sft_records = answer(reference, reference_tokenizer, test, **common)
    judge_answers(sft_records, test, run_judges(run))
    ours, theirs = score_lists(records), score_lists(sft_records)
    for key in sorted(ours.keys() & theirs.keys()):  # sorted: a set's order changes with PYTHONHASHSEED
        figures[f"{key}_sft"] = sum(theirs[key]) / len(theirs[key])
        judge, _, decoding = key.partition("_score_")
        diff, low, high = paired_difference_ci(ours[key], theirs[key], clusters=clusters)
        figures[f"{judge}_minus_sft_{decoding}"] = diff
        figures[f"{judge}_minus_sft_{decoding}_ci95"] = [low, high]
    return figures


def sft_test_records(sft_dir: Path, count: int) -> list[dict] | None:
    """SFT's test answers as records (replies only: verdicts are recomputed)."""
    path = sft_dir / "eval_answers.jsonl"
    if not path.exists():
        return None
    lines = [line for line in read_jsonl(path) if line.get("split") == "test"]
    if len(lines) != count:
        return None
    return [{"id": line["id"], **{d: [{k: v for k, v in s.items() if k != "verdicts"} for s in line["replies"][d]]
                                  for d in line["replies"]}} for line in lines]


def answer_line(record: dict, row: dict, split: str) -> dict:
    """One line of eval_answers.jsonl."""
    replies = {d: record[d] for d in record if d in DECODINGS}
    greedy = replies["greedy"][0]
    line = {"id": record["id"], "split": split, "prompt": record["prompt"], "greedy": greedy["reply"], "replies": replies}
    if "reward" in greedy.get("verdicts", {}):
        line["reward"] = greedy["verdicts"]["reward"]["score"]
    for key in ("town", "attribute", "seen"):
        if key in row:
            line[key] = row[key]
    return line


# ------------------------------------------------------------------------------------------ the run's arena

ARENA_SAMPLES = "chat"
"""The decoding the arena's battles use: the chat default, 2 samples per prompt (the evaluation's own answers)."""


def run_arena(run) -> dict | None:
    """`chatsmith run`'s last step: every checkpoint of the run that can answer (pretrain, SFT, the RL stage)
    meets every other on the test prompts, judged by the gold judge on the demo, else by the run's reward
    model (none: no arena). The chat stages' answers are the ones their evaluation generated at the chat
    default; a checkpoint without them (pretrain) answers now with the same seeds. Writes DIR/arena/ (see
    `pipeline.arena`) and returns the ratings; skipped (returning the last ratings) when the checkpoints
    and the judge are those the last arena rated."""
    import json

    from pipeline.arena import RewardModelJudge as ArenaRewardJudge
    from pipeline.arena import ScoreJudge, arena_from_answers
    from pipeline.evaluate import load_chat_checkpoint
    from stages.chat_format import stop_token_ids
    from stages.common import write_json_atomic

    rows_path = run.data_path("eval_prompts.jsonl")
    if not rows_path.exists():
        return None
    _, test = split_rows(read_jsonl(rows_path))
    manifest = run.manifest.data["stages"]
    names = [n for n in ("pretrain", "sft", "ppo") if manifest.get(n, {}).get("status") == "done"
             and (run.stage_dir(n) / "config.json").exists()]
    reward_dir = reward_model_dir(run)
    judge_name = "gold" if run.demo else (f"reward:{reward_dir}" if reward_dir else None)
    if len(names) < 2 or judge_name is None or not test:
        return None
    stamp = {"judge": judge_name, "checkpoints": {n: manifest[n].get("output_sha256") for n in names},
             "judge_sha256": None if run.demo else run.manifest.sha256(reward_dir),
             "eval": run.recipe.eval.model_dump(mode="json")}
    arena = run.dir / "arena"
    if (arena / "ratings.json").exists() and (arena / "made_from.json").exists() \
            and json.loads((arena / "made_from.json").read_text()) == stamp:
        return json.loads((arena / "ratings.json").read_text())
    settings = run.recipe.eval
    ids = [str(r.get("id", i)) for i, r in enumerate(test)]
    answers = {}
    for name in names:
        lines = {str(l["id"]): l for l in read_jsonl(run.stage_dir(name) / "eval_answers.jsonl")
                 if l.get("split") == "test"} if (run.stage_dir(name) / "eval_answers.jsonl").exists() else {}
        if set(ids) <= set(lines):
            answers[name] = {i: [s["reply"] for s in lines[i]["replies"][ARENA_SAMPLES]] for i in ids}
            continue
        run.say(f"arena: {name}: answering the {len(test)} test prompts at the chat default")
        model, tokenizer, chat_format = load_chat_checkpoint(run.stage_dir(name))
        offset = list(DECODINGS).index(ARENA_SAMPLES)  # the seeds the evaluation's chat answers used
        records = answer(model, tokenizer, test, decodings=(ARENA_SAMPLES,), stop_ids=stop_token_ids(chat_format),
                         max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                         seed=settings.seed + 1000 * offset)
        answers[name] = {i: [s["reply"] for s in r[ARENA_SAMPLES]] for i, r in zip(ids, records)}
        del model
    prompt_rows = [{**r, "id": i} for i, r in zip(ids, test)]
    judge = (ScoreJudge(run.demo.world.gold_scorer(), name="gold") if run.demo
             else ArenaRewardJudge(reward_dir, batch_size=settings.batch_size))
    ratings = arena_from_answers(answers, prompt_rows, judge, run.dir, seed=settings.seed, judge_name=judge_name)
    write_json_atomic(arena / "made_from.json", stamp)
    run.say("arena: " + ", ".join(f"{n} {r['rating']:.0f} [{r['ci95'][0]:.0f}, {r['ci95'][1]:.0f}]" for n, r in ratings.items()))
    return ratings


# ------------------------------------------------------------------------------------------ the reward model

def evaluate_reward(run, reward_dir: Path) -> dict:
    """The reward model's held-out pairwise accuracy with a 95% CI (bootstrap by prompt), from the pairs the
    stage scored (`reward_dir/eval_pairs.jsonl`: those within `max_length`, as training keeps them); on the
    demo also against the gold judge (`Demo.reward_figures`)."""
    import json

    from stages.rlhf.reward import EVAL_PAIRS

    path = reward_dir / EVAL_PAIRS
    pairs = read_jsonl(path) if path.exists() else []
    if not pairs:
        return {}
    chosen, rejected = [p["chosen_score"] for p in pairs], [p["rejected_score"] for p in pairs]
    wins = [float(c > r) for c, r in zip(chosen, rejected)]
    clusters = [json.dumps(p["prompt"], sort_keys=True) for p in pairs]
    figures = {"pairwise_accuracy_ci95": list(mean_ci(wins, clusters=clusters, seed=run.recipe.eval.seed)[1:])}
    if run.demo:
        figures.update(run.demo.reward_figures(pairs, chosen, rejected, clusters))
    return figures
