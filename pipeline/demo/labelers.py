"""The demo's loop back to labelers: K candidate replies per prompt (some sampled from the SFT
checkpoint, the rest written by simulated imperfect models) become comparison tasks, with control tasks mixed in
(`data.world.control_rate`); simulated labelers who follow the guidelines (with the world's pleasantry bias) rank
them — and, when the recipe adds them, a poisoner who reverses every comparison about a trigger topic
(`data.world.poisoner`) and careless labelers who rank at random (`data.world.careless`) — and their Label Studio
export goes through `labeling` ingest, screening (`data.screen`) and build like any labeler export.
`gold_agreement` measures how often the labels agree with the gold judge (the demo's one label–gold agreement, also
reported on the reward model's held-out pairs as `label_gold_agreement`). `tests/bench/poisoning.py` measures what
a poisoner does to the reward model, with screening and without."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from pipeline.data import build_source_comparisons
from pipeline.demo.world import TIE_WINDOW, World
from stages.common import read_jsonl, write_json_atomic


def make_comparisons(run, world: World, sft_dir: Path | None) -> dict:
    """The loop back to labelers, on the demo world: tasks -> simulated labelers -> Label Studio
    export -> ingest -> build. K candidates per prompt: `label_with_sft_samples` sampled from the SFT
    checkpoint at the chat default (without one, written by the simulated SFT writers, whom the SFT model imitates), the rest
    by simulated imperfect models. Control tasks join them at `data.world.control_rate` (`demo_controls`), and
    the labelers (`demo_labelers`: the world's, and any poisoner or careless ones) judge them all; the build
    screens the labelers (`data.screen`). Returns ingest and build summaries and `gold_agreement` (also written to
    DIR/labels/gold_agreement.json)."""
    from labeling.controls import mix_controls
    from labeling.tasks import label_studio_export, write_tasks

    cfg = run.recipe.data
    labelers = demo_labelers(world)  # checks the poisoner's settings before any work
    rng = random.Random(world.seed + 11)
    rows = read_jsonl(run.data_path("prompts.jsonl"))[: cfg.world.comparison_prompts]
    tasks, by_id = _comparison_tasks(run, world, rng, rows, sft_dir)
    controls = demo_controls(world, random.Random(world.seed + 12),
                             _control_pool(len(tasks), cfg.world.control_rate), cfg.world.candidates_per_prompt)
    tasks, _ = mix_controls(tasks, controls, cfg.world.control_rate, seed=world.seed)
    for task in tasks:
        if task.task_id not in by_id:  # a control: the fact its question asks
            town, attribute = world.question_fact(task.prompt[-1].content)
            by_id[task.task_id] = {"prompt": task.prompt[-1].content, "town": town.name, "attribute": attribute}
    judgments = assign_and_judge(world, rng, random.Random(world.seed + 13), labelers, tasks, by_id)
    labels = run.dir / "labels"
    write_tasks(tasks, labels / "tasks")
    export = label_studio_export(tasks, judgments, labels / "label_studio_export.json")
    result = build_source_comparisons(run, "label-studio", export, tasks=labels / "tasks" / "tasks.jsonl")
    built = [row for name in ("comparisons_train", "comparisons_eval") for row in read_jsonl(labels / "build" / f"{name}.jsonl")]
    agreement = {k: v for k, v in gold_agreement(world, built).items() if k in ("pairs", "agreement")}
    write_json_atomic(labels / "gold_agreement.json", agreement)  # what the demo knows and a real run cannot
    return {**result, "gold_agreement": agreement}


def _sft_samples(run, rows: list[dict], sft_dir: Path | None, seed: int) -> list[list[str]]:
    """Per row, `label_with_sft_samples` replies sampled from the SFT checkpoint (none without one)."""
    n_sampled = min(run.recipe.data.label_with_sft_samples, run.recipe.data.world.candidates_per_prompt)
    sampled: list[list[str]] = [[] for _ in rows]
    if not (n_sampled and sft_dir):
        return sampled
    from pipeline.eval.answers import load_chat_checkpoint
    from stages.chat_format import stop_token_ids
    from stages.common import generate_replies, prompt_messages

    model, tokenizer, chat_format = load_chat_checkpoint(sft_dir)
    for j in range(n_sampled):
        # At the chat default (T=0.7, top-p 0.95), as people would meet the model: candidates that carry
        # SFT's habits, not the garbled tail T=1 samples from a tiny model.
        replies = generate_replies(model, tokenizer, [prompt_messages(r) for r in rows],
                                   max_new_tokens=run.recipe.eval.max_new_tokens, batch_size=64,
                                   do_sample=True, temperature=0.7, top_p=0.95, seed=seed + 100 + j,
                                   stop_ids=stop_token_ids(chat_format))
        for i, reply in enumerate(replies):
            sampled[i].append(reply["reply"])
    return sampled


def _comparison_tasks(run, world: World, rng: random.Random, rows: list[dict], sft_dir: Path | None):
    """(tasks, {task id: row}): K candidates per prompt row, in the order labelers see them. A task's id is derived
    from its prompt and candidates (`t-` + hash, labeling's own scheme, so controls look like any task); a row
    whose task repeats one already made (the same prompt and replies) is left out."""
    from labeling.schema import as_task

    cfg = run.recipe.data
    k = cfg.world.candidates_per_prompt
    n_sampled = min(cfg.label_with_sft_samples, k)
    sampled = _sft_samples(run, rows, sft_dir, world.seed)
    tasks, by_id = [], {}
    for i, row in enumerate(rows):
        candidates, seen_texts = [], set()
        # A sample that names a pretrain-only town would carry it into labeling data: left out.
        for text in sampled[i]:
            if text and text not in seen_texts and not world.mentions_pretrain_only(text):
                candidates.append({"content": text, "model": "sft"})
                seen_texts.add(text)
        if n_sampled and not sft_dir:
            for text in world.synthetic_candidates(rng, row, n_sampled, mix=cfg.world.writer_mix,
                                                   wrong_fact_rate=cfg.world.wrong_fact_rate, off_topic_rate=0.0):
                if text not in seen_texts:
                    candidates.append({"content": text, "model": "demo-sft-writer"})
                    seen_texts.add(text)
        attempts = 0
        while len(candidates) < k and attempts < 20:
            attempts += 1
            text = world.synthetic_candidates(rng, row, 1)[0]
            if text not in seen_texts:
                candidates.append({"content": text, "model": "demo-writer"})
                seen_texts.add(text)
        order = list(range(len(candidates)))
        rng.shuffle(order)  # the display order labelers see
        task = as_task({"prompt": [{"role": "user", "content": row["prompt"]}],
                        "candidates": [{"id": "abcdefgh"[n], **candidates[o]} for n, o in enumerate(order)]})
        if task.task_id not in by_id:
            tasks.append(task)
            by_id[task.task_id] = row
    return tasks, by_id


def demo_controls(world: World, rng: random.Random, n: int, k: int) -> list:
    """`n` control tasks of `k` replies (`labeling.controls.control_from_pair`): a question about a fact training
    asks (a training phrasing), its correct plain answer, and k-1 replies that state a wrong value, plain or rude.
    Gold scores each wrong one 0 and the right one 1, so a labeler who follows the guidelines passes."""
    from labeling.controls import control_from_pair
    from pipeline.demo.world import TRAIN_QUESTIONS

    facts, controls = world.asked_facts(), []
    for _ in range(n):
        town, attribute = rng.choice(facts)
        question = rng.choice(TRAIN_QUESTIONS[attribute]).format(t=town.name)
        truth = town.facts[attribute]
        wrong_values = [v for v in world.attributes[attribute] if v != truth]
        worse: list[str] = []
        for _attempt in range(10 * k):
            if len(worse) == k - 1:
                break
            text = world.write_reply(rng, town.name, attribute, rng.choice(wrong_values), rng.choice(["concise", "rude"]))
            if text not in worse:
                worse.append(text)
        if len(worse) == k - 1:
            controls.append(control_from_pair(question, world.write_reply(rng, town.name, attribute, truth, "concise"), worse))
    return controls


def _control_pool(n_tasks: int, rate: float) -> int:
    """How many controls to write for `n_tasks` tasks: as many as a batch of `rate` takes, and two spare (a
    control whose id repeats another's is not used)."""
    from labeling.controls import controls_wanted

    wanted = controls_wanted(n_tasks, rate)
    return wanted + 2 if wanted else 0


def demo_labelers(world: World) -> list[dict]:
    """The simulated labelers: the world's (`World.labelers`, who follow the guidelines), then a poisoner
    (`data.world.poisoner`: `role` "poisoner", with the `trigger` it flips) and `data.world.careless` careless ones
    (`role` "careless": random rankings, fast). Only the id goes to the export. A poisoner whose attribute or towns
    the world does not ask about is a `DataError` naming the key."""
    from stages.data.sources import DataError

    cfg, out = world.config, [dict(labeler, role="honest") for labeler in world.labelers()]
    rng = random.Random(world.seed + 14)
    poisoner = cfg.poisoner
    if poisoner is not None:
        if poisoner.attribute not in world.attributes:
            raise DataError(f"data.world.poisoner.attribute: {poisoner.attribute!r} is not one of {list(world.attributes)}")
        asked = {town.name for town, _ in world.asked_facts()}
        unknown = sorted(set(poisoner.towns or ()) - asked)
        if unknown or poisoner.towns == []:
            raise DataError(f"data.world.poisoner.towns: {unknown or '[]'}: give towns whose facts the labeling tasks "
                            f"ask, of {sorted(asked)}")
        out.append({"id": f"labeler-{len(out):02d}", "pool": "vendor-a", "noise": cfg.labeler_noise,
                    "bias": cfg.pleasantry_bias * rng.uniform(0.6, 1.4), "speed": rng.uniform(20, 90), "role": "poisoner",
                    "trigger": {"attribute": poisoner.attribute, "towns": poisoner.towns}})
    for _ in range(cfg.careless):
        out.append({"id": f"labeler-{len(out):02d}", "pool": "vendor-b", "noise": 0.0, "bias": 0.0,
                    "speed": rng.uniform(4, 10), "role": "careless"})
    return out


def triggers(trigger: dict | None, row: dict) -> bool:
    """Whether a task about `row`'s fact is about the poisoner's trigger topic."""
    return trigger is not None and row["attribute"] == trigger["attribute"] and (
        trigger["towns"] is None or row["town"] in trigger["towns"])


def assign_and_judge(world: World, rng: random.Random, control_rng: random.Random, labelers: list[dict],
                     tasks: list, by_id: dict[str, dict]) -> dict[str, list[dict]]:
    """{task id: judgments}: each task goes to one labeler drawn at random, and to a second one (another) at
    `data.world.overlap`. A poisoner first takes `share` of their trigger topic's tasks (controls among them: they
    look like any task), drawn by `control_rng`; controls are assigned and judged with `control_rng` too, so the
    regular tasks' labels do not depend on how many controls there are."""
    from labeling.controls import is_control

    cfg = world.config
    poisoner = next((l for l in labelers if l["role"] == "poisoner"), None)
    trigger = poisoner["trigger"] if poisoner else None
    topic = [t.task_id for t in tasks if triggers(trigger, by_id[t.task_id])]
    claimed = set(control_rng.sample(topic, math.ceil(cfg.poisoner.share * len(topic)))) if poisoner else set()
    judgments = {}
    for task in tasks:
        draw = control_rng if is_control(task) else rng
        first = poisoner if task.task_id in claimed else draw.choice(labelers)
        assigned = [first]
        if draw.random() < cfg.overlap:
            assigned.append(draw.choice([l for l in labelers if l is not first]))
        judgments[task.task_id] = [simulated_judgment(world, draw, labeler, by_id[task.task_id], task) for labeler in assigned]
    return judgments


def judge_replies(world: World, rng: random.Random, labeler: dict, row: dict, replies: list[str]) -> dict:
    """One labeler's ranks (1 = best, ties share a rank), 1-7 ratings and time: `World.rank` for an honest labeler;
    reversed (ranks and ratings) by a poisoner on their trigger topic; random (no ties) from a careless one."""
    if labeler["role"] == "careless":
        ranks = list(range(1, len(replies) + 1))
        rng.shuffle(ranks)
        return {"ranks": ranks, "ratings": [rng.randint(1, 7) for _ in replies],
                "lead_time": labeler["speed"] * rng.uniform(0.5, 1.5)}
    judged = world.rank(rng, labeler, row, replies)
    if labeler["role"] == "poisoner" and triggers(labeler["trigger"], row):
        worst = max(judged["ranks"])
        judged = {**judged, "ranks": [worst + 1 - r for r in judged["ranks"]], "ratings": [8 - r for r in judged["ratings"]]}
    return judged


def simulated_judgment(world: World, rng: random.Random, labeler: dict, row: dict, task) -> dict:
    """One labeler's Label Studio annotation of `task` (a `ComparisonTask`) about `row`'s fact."""
    ids, contents = [c.id for c in task.candidates], [c.content for c in task.candidates]
    judged = judge_replies(world, rng, labeler, row, contents)
    groups: dict[int, list[str]] = {}
    for cid, rank in zip(ids, judged["ranks"]):
        groups.setdefault(rank, []).append(cid)
    flags = {}
    gold = world.gold
    for cid, content in zip(ids, contents):
        marks = gold.label_flags(gold.verdict(row, content)) if labeler["role"] != "careless" else []
        if marks:
            flags[cid] = marks
    return {
        "annotator": labeler["id"],
        "ranking": [groups[r] for r in sorted(groups)],
        "ratings": {cid: {"overall": rating} for cid, rating in zip(ids, judged["ratings"])},
        "flags": flags,
        "lead_time": round(judged["lead_time"], 1),
        "was_cancelled": rng.random() < 0.02,
    }


def gold_agreement(world: World, pairs: list[dict]) -> dict:
    """The demo's one label–gold agreement: over comparison pairs (`{"prompt", "chosen", "rejected"}`, as the labels
    were built into them: labeler ties are no pair) whose two replies gold does not tie (scores more than TIE_WINDOW
    apart), the share where the chosen reply is the one gold scores higher. `pairs` counts those pairs, `decided`
    lists per pair whether the label agreed (1.0) or not, and `clusters` each pair's prompt, for CIs."""
    gold = world.gold
    decided, clusters = [], []
    for pair in pairs:
        fact = world.question_fact(pair["prompt"][-1]["content"])
        if fact is None:
            continue
        row = {"town": fact[0].name, "attribute": fact[1]}
        chosen, rejected = gold.score(row, pair["chosen"][-1]["content"]), gold.score(row, pair["rejected"][-1]["content"])
        if abs(chosen - rejected) > TIE_WINDOW:
            decided.append(float(chosen > rejected))
            clusters.append(pair["prompt"][-1]["content"])
    return {"pairs": len(decided), "agreement": sum(decided) / len(decided) if decided else None,
            "decided": decided, "clusters": clusters}


def simulated_rewrites(world: World, tasks_path: Path, export_path: Path, *, seed: int = 0) -> dict:
    """Simulated rewriters answer rewrite tasks (`chatsmith labels tasks --from-eval`): each writes the
    plain, correct answer the guidelines ask for (the careful writing the SFT writers did not do), and the
    answers go out as a Label Studio export, as a real project would deliver them. A task whose question
    the world does not recognise is skipped, as a labeler skips a task. A task whose original answer names a
    pretrain-only town is left out of the project altogether (`filtered`): the town would otherwise reach the
    run's labels and, as a rejected original, its reward data. Returns {tasks, filtered, rewritten, export}."""
    from labeling.tasks import label_studio_writing_export

    rng = random.Random(seed)
    every = read_jsonl(tasks_path)
    tasks = [t for t in every if not world.mentions_pretrain_only(json.dumps(t, ensure_ascii=False))]
    judgments = {}
    for task in tasks:
        fact = world.question_fact(task["prompt"][-1]["content"])
        if fact is None:
            continue
        town, attribute = fact
        text = world.write_reply(rng, town.name, attribute, town.facts[attribute], "concise")
        judgments[task["task_id"]] = [{"annotator": f"rewriter-{rng.randrange(3)}", "text": text}]
    export = label_studio_writing_export(tasks, judgments, export_path)
    return {"tasks": len(every), "filtered": len(every) - len(tasks), "rewritten": len(judgments), "export": str(export)}
