"""The demo's loop back to labelers: K candidate replies per prompt (some sampled from the SFT
checkpoint, the rest written by simulated imperfect models) become comparison tasks, simulated labelers
who follow the guidelines rank them, and their Label Studio export goes through `labeling` ingest and
build like any labeler export."""

from __future__ import annotations

import random
from pathlib import Path

from pipeline.data import ingest_labels
from pipeline.demo.world import World
from stages.common import read_jsonl


def make_comparisons(run, world: World, sft_dir: Path | None) -> dict:
    """The loop back to labelers, on the demo world: tasks -> simulated labelers -> Label Studio
    export -> ingest -> build. K candidates per prompt: some sampled from the SFT checkpoint,
    the rest written by simulated imperfect models."""
    from labeling.tasks import label_studio_export, write_tasks

    cfg = run.recipe.data
    rng = random.Random(cfg.world.seed + 11)
    rows = read_jsonl(run.data_path("prompts.jsonl"))[: cfg.world.comparison_prompts]
    k = cfg.world.candidates_per_prompt
    n_sampled = min(cfg.label_with_sft_samples, k) if sft_dir else 0
    sampled: list[list[str]] = [[] for _ in rows]
    if n_sampled:
        from pipeline.evaluate import load_chat_model
        from stages.common import generate_replies, prompt_messages

        model, tokenizer = load_chat_model(sft_dir)
        for j in range(n_sampled):
            replies = generate_replies(model, tokenizer, [prompt_messages(r) for r in rows],
                                       max_new_tokens=run.recipe.eval.max_new_tokens, batch_size=64,
                                       do_sample=True, temperature=1.0, seed=cfg.world.seed + 100 + j)
            for i, reply in enumerate(replies):
                sampled[i].append(reply["reply"])
    tasks, by_id = [], {}
    for i, row in enumerate(rows):
        candidates, seen_texts = [], set()
        for text in sampled[i]:
            if text and text not in seen_texts:
                candidates.append({"content": text, "model": "sft"})
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
    return ingest_labels(run, "label-studio", export, eval_fraction=0.1, tasks=labels / "tasks" / "tasks.jsonl")

def simulated_judgment(world: World, rng: random.Random, labeler: dict, row: dict, task: dict) -> dict:
    ids = [c["id"] for c in task["candidates"]]
    judged = world.rank(rng, labeler, row, [c["content"] for c in task["candidates"]])
    groups: dict[int, list[str]] = {}
    for cid, rank in zip(ids, judged["ranks"]):
        groups.setdefault(rank, []).append(cid)
    flags = {}
    for cid, cand in zip(ids, task["candidates"]):
        verdict = world.judge(row, cand["content"])
        marks = [f for f, hit in (("harmful", verdict["harmless"] == 0), ("hallucination", verdict["truthful"] == 0 and verdict["helpful"] == 1)) if hit]
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
