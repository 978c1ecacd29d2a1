"""The loop back to labelers: comparison tasks out, Label Studio files in both directions.

    chatsmith labels tasks CHECKPOINT PROMPTS --k 4 --out DIR [--max-new-tokens --temperature --seed]

Samples K replies per prompt from CHECKPOINT and writes
    DIR/tasks.jsonl                  native ComparisonTask records (stable task ids);
    DIR/label_studio_import.json     tasks to import into a Label Studio project;
    DIR/label_studio_config.xml      that project's labeling config: a ranker with one bucket per
                                     rank (a bucket holds tied replies), a 1-7 overall rating and
                                     flags per reply, a rationale box.
The labelers' Label Studio JSON export comes back through `chatsmith labels ingest --format
label-studio` (optionally `--tasks DIR/tasks.jsonl`), matched by the task id kept in each task's
data. `label_studio_export` writes such an export from judgments: the demo world's simulated
labelers use it, so demo reward data takes the same path as real data.

Only `sample_tasks` touches torch/transformers, and imports them inside the function.
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path
from typing import Iterable, Mapping, Sequence
from xml.sax.saxutils import quoteattr

from labeling.readers import LS_EMAIL_DOMAIN
from labeling.schema import FLAGS, ComparisonTask, guideline_version

RANKER_NAME, LIST_NAME = "rank", "replies"
RATING_SCALE, RATING_MAX = "overall", 7
CONFIG_FLAGS = ("fails_to_follow_instruction", "hallucination", "harmful", "inappropriate_for_assistant", "gives_harmful_advice")
_EPOCH = "2026-01-01T00:00:00.000000Z"


def candidate_ids(count: int) -> list[str]:
    """a, b, c, ... (then a1, b1, ... past 26): short, stable ids that read well in a UI."""
    letters = string.ascii_lowercase
    return [letters[i % 26] + (str(i // 26) if i >= 26 else "") for i in range(count)]


def as_task(task: ComparisonTask | Mapping) -> ComparisonTask:
    """A ComparisonTask from a task or a dict ({"prompt", "candidates": [{"content", "model"?, "id"?}]})."""
    if isinstance(task, ComparisonTask):
        return task
    task = dict(task)
    ids = candidate_ids(len(task.get("candidates") or []))
    task["candidates"] = [{"id": c.get("id", ids[i]), **{k: v for k, v in c.items() if k != "id"}}
                          for i, c in enumerate(task.get("candidates") or [])]
    task.setdefault("guideline_version", guideline_version())
    return ComparisonTask.model_validate(task)


def _ls_data(task: ComparisonTask) -> dict:
    return {
        "task_id": task.task_id,
        "prompt": [m.model_dump() for m in task.prompt],
        "candidates": [{"id": c.id, "title": f"Reply {c.id.upper()}", "body": c.content} for c in task.candidates],
        # not shown to labelers (the config does not reference it); kept so the export names the models
        "candidate_models": {c.id: c.model for c in task.candidates},
        "guideline_version": task.guideline_version,
        **({"gold_ranking": task.gold_ranking} if task.gold_ranking is not None else {}),
    }


def label_studio_config(max_candidates: int) -> str:
    """The labeling config XML for tasks of up to `max_candidates` replies."""
    ids = candidate_ids(max_candidates)
    buckets = "\n".join(
        f'    <Bucket name="rank_{i + 1}" title={quoteattr(f"Rank {i + 1}" + (" (best)" if i == 0 else ""))}/>'
        for i in range(max_candidates))
    per_reply = "\n".join(
        f'  <View style="display: flex; gap: 1em;">\n'
        f'    <Header value="Reply {cid.upper()}" size="5"/>\n'
        f'    <Rating name="{RATING_SCALE}_{cid}" toName="{LIST_NAME}" maxRating="{RATING_MAX}"/>\n'
        f'    <Choices name="flags_{cid}" toName="{LIST_NAME}" choice="multiple" showInline="true">\n'
        + "".join(f'      <Choice value="{flag}"/>\n' for flag in CONFIG_FLAGS)
        + "    </Choices>\n  </View>"
        for cid in ids)
    return f"""<View>
  <Header value="The conversation so far"/>
  <Paragraphs name="prompt" value="$prompt" layout="dialogue" nameKey="role" textKey="content"/>
  <Header value="Rank the replies, best first. Put replies you cannot tell apart in the same rank (a tie)."/>
  <List name="{LIST_NAME}" value="$candidates" title="Replies"/>
  <Ranker name="{RANKER_NAME}" toName="{LIST_NAME}">
{buckets}
  </Ranker>
{per_reply}
  <TextArea name="rationale" toName="{LIST_NAME}" placeholder="Why this order? (optional)" rows="2"/>
</View>
"""


def write_tasks(tasks: Iterable[ComparisonTask | Mapping], out_dir) -> dict:
    """Write tasks.jsonl, label_studio_import.json and label_studio_config.xml into `out_dir`.

    Each task: a prompt conversation plus K candidate replies (with the model that wrote each);
    its task id is stable (derived from prompt + candidates unless given). Returns
    {"tasks": n, "task_ids": [...], "paths": {...}}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = [as_task(t) for t in tasks]
    ids = [t.task_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ValueError("two tasks have the same task id (the same prompt and candidates twice?)")
    paths = {"tasks": out_dir / "tasks.jsonl", "label_studio_import": out_dir / "label_studio_import.json",
             "label_studio_config": out_dir / "label_studio_config.xml"}
    with open(paths["tasks"], "w", encoding="utf-8") as handle:
        for task in tasks:
            handle.write(task.model_dump_json() + "\n")
    paths["label_studio_import"].write_text(
        json.dumps([{"data": _ls_data(t)} for t in tasks], ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    paths["label_studio_config"].write_text(
        label_studio_config(max((len(t.candidates) for t in tasks), default=2)), encoding="utf-8")
    return {"tasks": len(tasks), "task_ids": ids, "paths": {k: str(v) for k, v in paths.items()}}


def _result_id(*parts) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:10]


def _ls_results(task: ComparisonTask, judgment: Mapping) -> list[dict]:
    ranking = [list(group) for group in judgment["ranking"]]
    common = {"to_name": LIST_NAME, "origin": "manual"}
    results = [{
        "id": _result_id(task.task_id, judgment.get("annotator"), "rank"),
        "from_name": RANKER_NAME, "type": "ranker",
        "value": {"ranker": {f"rank_{i + 1}": group for i, group in enumerate(ranking)}},
        **common,
    }]
    for cid, scales in (judgment.get("ratings") or {}).items():
        for scale, value in scales.items():
            results.append({"id": _result_id(task.task_id, judgment.get("annotator"), scale, cid),
                            "from_name": f"{scale}_{cid}", "type": "rating", "value": {"rating": value}, **common})
    for cid, flags in (judgment.get("flags") or {}).items():
        if flags:
            results.append({"id": _result_id(task.task_id, judgment.get("annotator"), "flags", cid),
                            "from_name": f"flags_{cid}", "type": "choices", "value": {"choices": list(flags)}, **common})
    if judgment.get("rationale"):
        results.append({"id": _result_id(task.task_id, judgment.get("annotator"), "rationale"),
                        "from_name": "rationale", "type": "textarea", "value": {"text": [judgment["rationale"]]}, **common})
    return results


def label_studio_export(tasks: Sequence[ComparisonTask | Mapping], judgments, path) -> Path:
    """Write a Label Studio JSON export of `tasks` as annotated by labelers.

    `judgments`: {task_id: [annotation, ...]} or a list parallel to `tasks`. An annotation is
    {"annotator": str, "ranking": [[candidate ids], ...] (best first, ties grouped),
     "ratings": {cid: {"overall": 1..7, ...}}?, "flags": {cid: [flag, ...]}?, "rationale": str?,
     "lead_time": seconds?, "was_cancelled": bool?}.
    The file has the shape of Label Studio's "JSON" export: a list of tasks, each with `id`,
    `data`, `annotations` (with `completed_by`, `result`, `was_cancelled`, `lead_time`, ...)."""
    tasks = [as_task(t) for t in tasks]
    if not isinstance(judgments, Mapping):
        judgments = {t.task_id: list(j or []) for t, j in zip(tasks, judgments, strict=True)}
    users: dict[str, int] = {}
    annotation_id = 0
    out = []
    for index, task in enumerate(tasks, start=1):
        annotations = []
        for judgment in judgments.get(task.task_id, []):
            annotation_id += 1
            annotator = str(judgment["annotator"])
            user = users.setdefault(annotator, len(users) + 1)
            cancelled = bool(judgment.get("was_cancelled", False))
            annotations.append({
                "id": annotation_id,
                "completed_by": {"id": user, "email": annotator if "@" in annotator else annotator + LS_EMAIL_DOMAIN,
                                 "first_name": "", "last_name": ""},
                "result": [] if cancelled else _ls_results(task, judgment),
                "was_cancelled": cancelled,
                "ground_truth": False,
                "created_at": _EPOCH, "updated_at": _EPOCH,
                "draft_created_at": None,
                "lead_time": float(judgment.get("lead_time", 0.0)),
                "prediction": {}, "result_count": 0, "unique_id": _result_id("annotation", annotation_id),
                "import_id": None, "last_action": None, "bulk_created": False,
                "task": index, "project": 1, "updated_by": user, "parent_prediction": None,
                "parent_annotation": None, "last_created_by": None,
            })
        out.append({
            "id": index,
            "annotations": annotations,
            "file_upload": "label_studio_import.json",
            "drafts": [], "predictions": [],
            "data": _ls_data(task),
            "meta": {},
            "created_at": _EPOCH, "updated_at": _EPOCH,
            "inner_id": index,
            "total_annotations": sum(not a["was_cancelled"] for a in annotations),
            "cancelled_annotations": sum(a["was_cancelled"] for a in annotations),
            "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0,
            "last_comment_updated_at": None, "project": 1, "updated_by": None, "comment_authors": [],
        })
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def read_prompts(path) -> list[list[dict]]:
    """Prompt conversations from JSONL ({"prompt": str | [messages]} or {"messages": [...]},
    a trailing assistant turn dropped) or from a text file (one user prompt per line)."""
    path = Path(path)
    prompts = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if path.suffix not in (".jsonl", ".json"):
                prompts.append([{"role": "user", "content": line.rstrip("\n")}])
                continue
            row = json.loads(line)
            conversation = row.get("prompt", row.get("messages"))
            if isinstance(conversation, str):
                conversation = [{"role": "user", "content": conversation}]
            if not isinstance(conversation, list) or not conversation:
                raise ValueError(f"{path}:{number}: expected `prompt` or `messages`")
            conversation = [{"role": m["role"], "content": m["content"]} for m in conversation]
            if conversation[-1]["role"] == "assistant":
                conversation = conversation[:-1]
            prompts.append(conversation)
    return prompts


def sample_tasks(checkpoint, prompts_path, out_dir, *, k: int = 4, max_new_tokens: int = 128,
                 temperature: float = 1.0, seed: int = 0) -> dict:
    """Sample `k` replies per prompt from `checkpoint` and write them as comparison tasks.

    Prompts whose samples are not at least two distinct non-empty replies are skipped (counted)."""
    if k < 2:
        raise ValueError("k must be at least 2: a comparison needs two replies")
    from transformers import AutoModelForCausalLM

    from stages.common import generate_replies, load_tokenizer

    prompts = read_prompts(prompts_path)
    tokenizer = load_tokenizer(checkpoint, where="labels tasks")
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint))
    model_name = Path(checkpoint).resolve().name
    samples = [generate_replies(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                                temperature=temperature, seed=seed + draw) for draw in range(k)]
    tasks, skipped = [], 0
    for index, prompt in enumerate(prompts):
        replies = []
        for draw in samples:
            text = draw[index]["reply"].strip()
            if text and text not in replies:
                replies.append(text)
        if len(replies) < 2:
            skipped += 1
            continue
        tasks.append({"prompt": prompt, "candidates": [{"content": r, "model": model_name} for r in replies]})
    summary = write_tasks(tasks, out_dir)
    summary.update({"prompts": len(prompts), "skipped_prompts": skipped, "k": k, "checkpoint": str(checkpoint)})
    (Path(out_dir) / "tasks_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


__all__ = ["write_tasks", "label_studio_export", "label_studio_config", "sample_tasks", "read_prompts", "as_task",
           "candidate_ids", "FLAGS"]
