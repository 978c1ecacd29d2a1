"""The arena's human judges: every battle as a Label Studio pairwise task (A, B or Tie), and the labelers'
verdicts back as battles, through `labeling`'s ingest (validation, quarantine)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.eval.arena import ArenaError
from pipeline.eval.arena.battles import pairings
from pipeline.eval.arena.fit import Battle, as_battle
from stages.common import prompt_messages, read_jsonl, write_jsonl


PAIRWISE_CONFIG = """<View>
  <Header value="The conversation so far"/>
  <Paragraphs name="prompt" value="$prompt" layout="dialogue" nameKey="role" textKey="content"/>
  <Header value="Which reply is better? Choose Tie when you cannot tell them apart."/>
  <List name="replies" value="$candidates" title="Replies"/>
  <Choices name="preference" toName="replies" choice="single" required="true" showInline="true">
    <Choice value="A"/>
    <Choice value="B"/>
    <Choice value="Tie"/>
  </Choices>
  <TextArea name="rationale" toName="replies" placeholder="Why? (optional)" rows="2"/>
</View>
"""


def _auto_verdict(answer_a: str, answer_b: str) -> str | None:
    """The verdict no labeler is asked for: identical answers tie, an empty answer loses
    (labeling's ingest would set such tasks aside as identical or empty replies)."""
    a, b = answer_a.strip(), answer_b.strip()
    if a == b:
        return "tie"
    if not a or not b:
        return "a" if a else "b"
    return None


def export_human_tasks(answers: Mapping[str, Mapping[str, Sequence[str] | str]], prompt_rows: Sequence[Mapping],
                       out_dir: str | Path) -> dict:
    """Every battle (both orders) as a Label Studio pairwise task: reply A, reply B, a choice of
    A / B / Tie. Writes under `out_dir/arena/human/`: tasks/ (tasks.jsonl, label_studio_import.json,
    label_studio_config.xml), plan.jsonl (task id -> prompt, sample, checkpoints) and
    auto_battles.jsonl (verdicts no labeler is asked for: identical or empty answers)."""
    from labeling.tasks import write_tasks

    human = Path(out_dir) / "arena" / "human"
    tasks, plan, auto = [], [], []
    for pid, row, sample, model_a, model_b, a, b in pairings(answers, prompt_rows):
        verdict = _auto_verdict(a, b)
        if verdict is not None:
            auto.append(asdict(Battle(pid, model_a, model_b, verdict, sample)))
            continue
        task_id = "arena-" + hashlib.sha256(json.dumps([pid, sample, model_a, model_b]).encode()).hexdigest()[:16]
        tasks.append({"task_id": task_id, "prompt": prompt_messages(dict(row)),
                      "candidates": [{"id": "a", "content": a, "model": model_a}, {"id": "b", "content": b, "model": model_b}]})
        plan.append({"task_id": task_id, "prompt_id": pid, "sample": sample, "model_a": model_a, "model_b": model_b})
    summary = write_tasks(tasks, human / "tasks") if tasks else {"tasks": 0, "paths": {}}
    if tasks:
        (human / "tasks" / "label_studio_config.xml").write_text(PAIRWISE_CONFIG, encoding="utf-8")
    write_jsonl(human / "plan.jsonl", plan)
    write_jsonl(human / "auto_battles.jsonl", auto)
    return {"tasks": len(tasks), "auto_battles": len(auto), "dir": str(human), "paths": summary["paths"]}


def ingest_human(export: str | Path, out_dir: str | Path) -> tuple[list[Battle], dict]:
    """The labelers' Label Studio export of `export_human_tasks`' tasks -> battles, through
    `labeling` ingest (validation, quarantine; into out_dir/arena/human/ingest). Every annotation is
    a verdict (several labelers on one task are several battles of that prompt); the automatic
    verdicts are added back. Returns (battles, the ingest summary)."""
    from labeling.ingest import ingest, read_records
    from labeling.readers import InputError

    human = Path(out_dir) / "arena" / "human"
    if not (human / "plan.jsonl").exists():
        raise ArenaError(f"{human}/plan.jsonl not found: export the tasks first (--judge human --out {out_dir})")
    plan = {row["task_id"]: row for row in read_jsonl(human / "plan.jsonl")}
    try:
        summary = ingest("label-studio", export, human / "ingest", tasks_path=human / "tasks" / "tasks.jsonl")
    except InputError as error:
        raise ArenaError(str(error)) from None
    battles = [as_battle(b) for b in read_jsonl(human / "auto_battles.jsonl")]
    for record in read_records(human / "ingest"):
        task = plan.get(record.task_id or "")
        if record.kind != "comparison" or task is None:
            continue
        model_of = {c.id: c.model for c in record.candidates}
        best = record.ranking[0]
        winner = "tie" if len(best) > 1 else ("a" if model_of[best[0]] == task["model_a"] else "b")
        battles.append(Battle(task["prompt_id"], task["model_a"], task["model_b"], winner, task["sample"]))
    return battles, summary
