"""The demo's loop back to labelers: K candidate replies per prompt (some sampled from the SFT
checkpoint, the rest written by simulated imperfect models) become comparison tasks, simulated labelers
who follow the guidelines (with the world's pleasantry bias) rank them, and their Label Studio export goes
through `labeling` ingest and build like any labeler export. `gold_agreement` measures how often the
labels agree with the gold judge (the demo's one label–gold agreement, also reported on the reward model's held-out
pairs as `label_gold_agreement`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from pipeline.data import build_source_comparisons
from pipeline.demo.world import TIE_WINDOW, World
from stages.common import read_jsonl, write_json_atomic


def make_comparisons(run, world: World, sft_dir: Path | None) -> dict:
    """The loop back to labelers, on the demo world: tasks -> simulated labelers -> Label Studio
    export -> ingest -> build. K candidates per prompt: `label_with_sft_samples` sampled from the SFT
    checkpoint at the chat default (without one, written by the simulated SFT writers, whom the SFT model imitates), the rest
    by simulated imperfect models. Returns ingest and build summaries and `gold_agreement` (also written to
    DIR/labels/gold_agreement.json)."""
    from labeling.tasks import label_studio_export, write_tasks

    cfg = run.recipe.data
    rng = random.Random(world.seed + 11)
    rows = read_jsonl(run.data_path("prompts.jsonl"))[: cfg.world.comparison_prompts]
    k = cfg.world.candidates_per_prompt
    n_sampled = min(cfg.label_with_sft_samples, k)
    sampled: list[list[str]] = [[] for _ in rows]
    if n_sampled and sft_dir:
        from pipeline.eval.answers import load_chat_checkpoint
        from stages.chat_format import stop_token_ids
        from stages.common import generate_replies, prompt_messages

        model, tokenizer, chat_format = load_chat_checkpoint(sft_dir)
        for j in range(n_sampled):
            # At the chat default (T=0.7, top-p 0.95), as people would meet the model: candidates that carry
            # SFT's habits, not the garbled tail T=1 samples from a tiny model.
            replies = generate_replies(model, tokenizer, [prompt_messages(r) for r in rows],
                                       max_new_tokens=run.recipe.eval.max_new_tokens, batch_size=64,
                                       do_sample=True, temperature=0.7, top_p=0.95, seed=world.seed + 100 + j,
                                       stop_ids=stop_token_ids(chat_format))
            for i, reply in enumerate(replies):
                sampled[i].append(reply["reply"])
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
        task = {"task_id": f"demo-{row['id']}", "prompt": [{"role": "user", "content": row["prompt"]}],
                "candidates": [{"id": "abcdefgh"[n], **candidates[o]} for n, o in enumerate(order)]}
        tasks.append(task)
        by_id[task["task_id"]] = row
    labelers = world.labelers()
    judgments = {}
    for task in tasks:
        row = by_id[task["task_id"]]
        assigned = [rng.choice(labelers)]
        if rng.random() < cfg.world.overlap:
            assigned.append(rng.choice([l for l in labelers if l is not assigned[0]]))
        judgments[task["task_id"]] = [simulated_judgment(world, rng, labeler, row, task) for labeler in assigned]
    labels = run.dir / "labels"
    write_tasks(tasks, labels / "tasks")
    export = label_studio_export(tasks, judgments, labels / "label_studio_export.json")
    result = build_source_comparisons(run, "label-studio", export, tasks=labels / "tasks" / "tasks.jsonl")
    built = [row for name in ("comparisons_train", "comparisons_eval") for row in read_jsonl(labels / "build" / f"{name}.jsonl")]
    agreement = {k: v for k, v in gold_agreement(world, built).items() if k in ("pairs", "agreement")}
    write_json_atomic(labels / "gold_agreement.json", agreement)  # what the demo knows and a real run cannot
    return {**result, "gold_agreement": agreement}


def simulated_judgment(world: World, rng: random.Random, labeler: dict, row: dict, task: dict) -> dict:
    ids = [c["id"] for c in task["candidates"]]
    judged = world.rank(rng, labeler, row, [c["content"] for c in task["candidates"]])
    groups: dict[int, list[str]] = {}
    for cid, rank in zip(ids, judged["ranks"]):
        groups.setdefault(rank, []).append(cid)
    flags = {}
    gold = world.gold
    for cid, cand in zip(ids, task["candidates"]):
        marks = gold.label_flags(gold.verdict(row, cand["content"]))
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
