"""The run's evaluation of its checkpoints, demo or real, with 95% CIs: the chat stages (SFT, PPO / GRPO / RLOO /
DPO), the reward model, and the arena of every checkpoint at the end.

Held-out prompts (`DIR/data/eval_prompts.jsonl`) are dev or test (`pipeline.eval.stats.split_of`). Per chat
checkpoint:
- test prompts, answered greedy, at the chat default (T=0.7, top-p 0.95, 2 samples) and at T=1
  (`pipeline.eval.answers.DECODINGS`), judged by every judge the run has: the reward model of the run (or of
  `stages.ppo.reward_model`) as `reward`, and whatever judges the run's data source adds (the demo's gold judge);
- dev prompts, greedy, with the reward model's verdict (what `chatsmith labels tasks --from-eval` ranks);
- an RL checkpoint also gets `kl_to_sft` along its own T=1 samples of the same test prompts, and every judge's score
  as a paired difference to SFT's (`<judge>_minus_sft_<decoding>`, with its CI), SFT's answers paired by prompt id;
- a judge with `rates` ({name: verdict -> value, or None where the reply does not count}) gets each rate per decoding
  with its CI (`<name>_<decoding>`), and for an RL checkpoint SFT's (`_sft`) and the paired difference
  (`<name without _rate>_minus_sft_<decoding>`): the demo's gold judge reports fact accuracy, confident-wrong,
  abstention and hedging rates this way;
- `judge_version`: {judge: version} of every judge.
CIs are bootstrap percentiles that resample clusters (`pipeline.eval.stats.cluster_of`).

Writes `DIR/<stage>/eval_answers.jsonl` (one line per prompt: id, split, prompt, replies with verdicts, `greedy`,
and the row's own fields) and returns the figures merged into `eval.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.eval.answers import DECODINGS, answer, decodings_of, judge_answers, kl_to_reference, load_chat_checkpoint, means, per_prompt
from pipeline.eval.judges import RewardModelJudge
from pipeline.eval.stats import cluster_of, mean_ci, paired_difference_ci, paired_ratio_difference_ci, ratio_ci, split_rows
from stages.common import read_jsonl, write_json_atomic, write_jsonl

ANSWERS = "eval_answers.jsonl"
ROW_FIELDS_SKIPPED = ("id", "split", "prompt", "messages")
"""A row's own fields (the demo's town, attribute, seen, ...) are copied into its eval_answers line, except these."""


def held_out_rows(run) -> tuple[list[dict], list[dict]] | None:
    path = run.data_path("eval_prompts.jsonl")
    return split_rows(read_jsonl(path)) if path.exists() else None


def evaluate_chat_stage(run, name: str, checkpoint: Path, *, reference: Path | None = None) -> dict:
    """Figures (with CIs) of a chat checkpoint of the run; writes its eval_answers.jsonl. `reference`: the policy an RL
    stage started from (the run's SFT checkpoint, or `stages.ppo.policy`)."""
    from stages.chat_format import stop_token_ids

    held_out = held_out_rows(run)
    if held_out is None:
        return {}
    dev, test = held_out
    settings = run.recipe.eval
    model, tokenizer, chat_format = load_chat_checkpoint(checkpoint)
    common = dict(stop_ids=stop_token_ids(chat_format), max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                  seed=settings.seed)
    judges = run_judges(run)
    records = answer(model, tokenizer, test, **common)
    judge_answers(records, test, judges)
    figures = {**means(records), "eval_prompts_test": len(test), "eval_prompts_dev": len(dev)}
    clusters = [cluster_of(r) for r in test]
    for key, values in score_lists(records).items():
        figures[f"{key}_ci95"] = list(mean_ci(values, clusters=clusters, seed=settings.seed)[1:])
    figures.update(rate_figures(records, judges, clusters, seed=settings.seed))
    figures["judge_version"] = {name: str(judge.version) for name, judge in judges.items()}
    if reference is not None:
        figures.update(against_sft(run, Path(reference), model, tokenizer, records, test, clusters, common))
    dev_records = answer(model, tokenizer, dev, decodings=("greedy",), **common) if dev else []
    if dev_records and "reward" in judges:
        judge_answers(dev_records, dev, {"reward": judges["reward"]})
    figures.update(run.source.stage_figures(records, test))
    write_jsonl(checkpoint / ANSWERS, [answer_line(r, row, "test") for r, row in zip(records, test)]
                + [answer_line(r, row, "dev") for r, row in zip(dev_records, dev)])
    return figures


def run_judges(run) -> dict:
    """The run's reward model (once it exists) as `reward`, and the judges its data source adds (demo: `gold`)."""
    judges = {}
    reward_dir = reward_model_dir(run)
    if reward_dir is not None:
        judges["reward"] = RewardModelJudge(reward_dir, batch_size=run.recipe.eval.batch_size)
    judges.update(run.source.judges())
    return judges


def reward_model_dir(run) -> Path | None:
    """The run's reward model once it exists (so SFT, evaluated before it is trained, has no reward score)."""
    stages = run.recipe.stages
    explicit = getattr(stages.ppo, "reward_model", None) if stages.ppo else None
    candidate = Path(explicit) if explicit else run.stage_dir("reward")
    return candidate if (candidate / "config.json").exists() else None


def score_lists(records: list[dict]) -> dict[str, list[float]]:
    """`<judge>_score_<decoding>` -> one value per prompt."""
    out = {}
    for decoding in decodings_of(records):
        for judge in records[0][decoding][0].get("verdicts", {}):
            out[f"{judge}_score_{decoding}"] = per_prompt(records, decoding, judge)
    return out


def against_sft(run, sft_dir: Path, model, tokenizer, records, test, clusters, common) -> dict:
    """KL to the SFT policy on the same test prompts, SFT's figures by the judges the run has now, and paired
    differences (the same prompts, seeds and decodings)."""
    reference, reference_tokenizer, _ = load_chat_checkpoint(sft_dir)
    kl = kl_to_reference(model, reference, tokenizer, test, stop_ids=common["stop_ids"],
                         max_new_tokens=common["max_new_tokens"], batch_size=common["batch_size"], seed=common["seed"] + 17)
    seed = run.recipe.eval.seed
    figures = {"kl_to_sft": sum(kl) / len(kl), "kl_to_sft_ci95": list(mean_ci(kl, clusters=clusters, seed=seed)[1:])}
    sft_records = sft_test_records(sft_dir, [str(r.get("id", i)) for i, r in enumerate(test)])
    if sft_records is None:  # a policy from outside the run: answer with it now
        sft_records = answer(reference, reference_tokenizer, test, **common)
    judges = run_judges(run)
    judge_answers(sft_records, test, judges)
    ours, theirs = score_lists(records), score_lists(sft_records)
    for key in sorted(ours.keys() & theirs.keys()):  # sorted: a set's order changes with PYTHONHASHSEED
        figures[f"{key}_sft"] = sum(theirs[key]) / len(theirs[key])
        judge, _, decoding = key.partition("_score_")
        diff, low, high = paired_difference_ci(ours[key], theirs[key], clusters=clusters, seed=seed)
        figures[f"{judge}_minus_sft_{decoding}"] = diff
        figures[f"{judge}_minus_sft_{decoding}_ci95"] = [low, high]
    ours, theirs = rate_parts(records, judges), rate_parts(sft_records, judges)
    for (name, decoding), (num, den) in ours.items():
        sft_num, sft_den = theirs[name, decoding]
        sft_rate = ratio_ci(sft_num, sft_den, clusters=clusters, seed=seed)
        paired = paired_ratio_difference_ci(num, den, sft_num, sft_den, clusters=clusters, seed=seed)
        short = name.replace("_rate", "")
        figures[f"{name}_{decoding}_sft"] = sft_rate[0] if sft_rate else None
        figures[f"{short}_minus_sft_{decoding}"] = paired[0] if paired else None
        figures[f"{short}_minus_sft_{decoding}_ci95"] = list(paired[1:]) if paired else None
    return figures


def rate_parts(records: list[dict], judges: dict) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """(rate name, decoding) -> per prompt, (the sum of the rate's values over the decoding's samples, how many samples
    count), for every `rates` of every judge."""
    parts = {}
    for judge_name, judge in judges.items():
        for name, rate in getattr(judge, "rates", {}).items():
            for decoding in decodings_of(records):
                values = [[rate(s["verdicts"][judge_name]) for s in r[decoding]] for r in records]
                parts[name, decoding] = ([float(sum(v for v in vs if v is not None)) for vs in values],
                                         [float(sum(v is not None for v in vs)) for vs in values])
    return parts


def rate_figures(records: list[dict], judges: dict, clusters: list, *, seed: int) -> dict:
    """`<rate>_<decoding>` and its `_ci95` (cluster bootstrap of the ratio) for every rate of every judge."""
    figures = {}
    for (name, decoding), (num, den) in rate_parts(records, judges).items():
        rate = ratio_ci(num, den, clusters=clusters, seed=seed)
        figures[f"{name}_{decoding}"] = rate[0] if rate else None
        figures[f"{name}_{decoding}_ci95"] = list(rate[1:]) if rate else None
    return figures


def sft_test_records(sft_dir: Path, ids: list[str]) -> list[dict] | None:
    """SFT's test answers as records in the order of `ids` (paired by prompt id; replies only: verdicts are
    recomputed), or None when SFT did not answer every one of them."""
    path = sft_dir / ANSWERS
    if not path.exists():
        return None
    lines = {str(line["id"]): line for line in read_jsonl(path) if line.get("split") == "test"}
    if not set(ids) <= set(lines):
        return None
    return [{"id": lines[i]["id"], **{d: [{k: v for k, v in s.items() if k != "verdicts"} for s in lines[i]["replies"][d]]
                                     for d in lines[i]["replies"]}} for i in ids]


def answer_line(record: dict, row: dict, split: str) -> dict:
    """One line of eval_answers.jsonl."""
    replies = {d: record[d] for d in record if d in DECODINGS}
    line = {"id": record["id"], "split": split, "prompt": record["prompt"], "greedy": replies["greedy"][0]["reply"], "replies": replies}
    line.update({k: v for k, v in row.items() if k not in ROW_FIELDS_SKIPPED and k not in line})
    return line


# ------------------------------------------------------------------------------------------ the reward model

def evaluate_reward(run, reward_dir: Path) -> dict:
    """The reward model's held-out pairwise accuracy with a 95% CI (bootstrap by prompt), from the pairs the stage
    scored (`reward_dir/eval_pairs.jsonl`: those within `max_length`, as training keeps them); the data source adds
    its own figures (the demo: against the gold judge)."""
    from stages.rlhf.reward import EVAL_PAIRS

    path = reward_dir / EVAL_PAIRS
    pairs = read_jsonl(path) if path.exists() else []
    if not pairs:
        return {}
    chosen, rejected = [p["chosen_score"] for p in pairs], [p["rejected_score"] for p in pairs]
    wins = [float(c > r) for c, r in zip(chosen, rejected)]
    clusters = [json.dumps(p["prompt"], sort_keys=True) for p in pairs]
    figures = {"pairwise_accuracy_ci95": list(mean_ci(wins, clusters=clusters, seed=run.recipe.eval.seed)[1:])}
    figures.update(run.source.reward_figures(pairs, chosen, rejected, clusters))
    return figures


# ------------------------------------------------------------------------------------------ the run's arena

ARENA_SAMPLES = "chat"
"""The decoding the arena's battles use: the chat default, 2 samples per prompt (the evaluation's own answers)."""
ARENA_STAGES = ("pretrain", "sft", "ppo")


def run_arena(run) -> dict | None:
    """`chatsmith run`'s last step: every checkpoint of the run that can answer (pretrain, SFT, the RL stage) meets
    every other on the test prompts, judged by the run's data source's judge (the demo: gold), else by the run's
    reward model (none: no arena). The chat stages' answers are the ones their evaluation generated at the chat
    default; a checkpoint without them (pretrain) answers now with the same seeds. Writes DIR/arena/
    (`pipeline.eval.arena`) and returns the ratings; skipped (returning the last ratings) when the checkpoints and
    the judge are those the last arena rated."""
    from pipeline.eval.arena.results import arena_from_answers
    from pipeline.eval.judges import PairwiseJudge

    held_out = held_out_rows(run)
    manifest = run.manifest.data["stages"]
    names = [n for n in ARENA_STAGES if manifest.get(n, {}).get("status") == "done" and (run.stage_dir(n) / "config.json").exists()]
    judge, reward_dir = run.source.arena_judge(), reward_model_dir(run)
    judge_name = judge.name if judge is not None else (f"reward:{reward_dir}" if reward_dir else None)
    if held_out is None or len(names) < 2 or judge_name is None or not held_out[1]:
        return None
    test = held_out[1]
    stamp = {"judge": judge_name, "checkpoints": {n: manifest[n].get("output_sha256") for n in names},
             "judge_sha256": None if judge is not None else run.manifest.sha256(reward_dir),
             "eval": run.recipe.eval.model_dump(mode="json")}
    arena = run.dir / "arena"
    if (arena / "ratings.json").exists() and (arena / "made_from.json").exists() \
            and json.loads((arena / "made_from.json").read_text()) == stamp:
        return json.loads((arena / "ratings.json").read_text())
    ids = [str(r.get("id", i)) for i, r in enumerate(test)]
    answers = {name: arena_answers(run, name, test, ids) for name in names}
    prompt_rows = [{**r, "id": i} for i, r in zip(ids, test)]
    if judge is None:
        judge = RewardModelJudge(reward_dir, batch_size=run.recipe.eval.batch_size)
    ratings = arena_from_answers(answers, prompt_rows, PairwiseJudge(judge, name=judge_name), run.dir,
                                 seed=run.recipe.eval.seed, judge_name=judge_name)
    write_json_atomic(arena / "made_from.json", stamp)
    run.say("arena: " + ", ".join(f"{n} {r['rating']:.0f} [{r['ci95'][0]:.0f}, {r['ci95'][1]:.0f}]" for n, r in ratings.items()))
    return ratings


def arena_answers(run, name: str, test: list[dict], ids: list[str]) -> dict[str, list[str]]:
    """{prompt id: chat-default replies} of a stage: its evaluation's, else answered now with the same seeds."""
    from stages.chat_format import stop_token_ids

    path = run.stage_dir(name) / ANSWERS
    lines = {str(l["id"]): l for l in read_jsonl(path) if l.get("split") == "test"} if path.exists() else {}
    if set(ids) <= set(lines):
        return {i: [s["reply"] for s in lines[i]["replies"][ARENA_SAMPLES]] for i in ids}
    run.say(f"arena: {name}: answering the {len(test)} test prompts at the chat default")
    settings = run.recipe.eval
    model, tokenizer, chat_format = load_chat_checkpoint(run.stage_dir(name))
    records = answer(model, tokenizer, test, decodings=(ARENA_SAMPLES,), stop_ids=stop_token_ids(chat_format),
                     max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size, seed=settings.seed)
    return {i: [s["reply"] for s in r[ARENA_SAMPLES]] for i, r in zip(ids, records)}
