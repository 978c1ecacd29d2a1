"""The loop back to labelers: comparison and writing tasks out, Label Studio files both ways.

    chatsmith labels tasks CHECKPOINT PROMPTS --k 4 --out DIR [--max-new-tokens --temperature --seed]
    chatsmith labels tasks --kind demonstration PROMPTS --out DIR
    chatsmith labels tasks --kind rewrite ANSWERS --out DIR [--worst N]
    chatsmith labels tasks --from-eval RUN [--stage sft|ppo] --worst N --out DIR

Samples K replies per prompt from CHECKPOINT and writes
    DIR/tasks.jsonl                  native ComparisonTask records (stable task ids), with the known
                                     answer of each control task (`--controls`, labeling.controls);
    DIR/label_studio_import.json     tasks to import into a Label Studio project: the same fields for
                                     every task, no known answer, no model names (annotators see it);
    DIR/label_studio_config.xml      that project's labeling config: a ranker with one bucket per
                                     rank (a bucket holds tied replies), a 1-7 overall rating and
                                     flags per reply, a rationale box.
The labelers' Label Studio JSON export comes back through `chatsmith labels ingest --format
label-studio` (optionally `--tasks DIR/tasks.jsonl`), matched by the task id kept in each task's
data. `label_studio_export` writes such an export from judgments: the demo world's simulated
labelers use it, so demo reward data takes the same path as real data.

Writing tasks (`WritingTask`) ask for free text: `demonstration` (write the reply to a prompt) or
`rewrite` (correct a reply that misbehaved; the original is shown). They are written the same
way (tasks.jsonl, label_studio_import.json, label_studio_config.xml with a TextArea), and their
export comes back as demonstrations and rewrites through the same ingest. `rewrite_tasks` picks the
N worst-scored answers of an evaluation (`--from-eval`): whoever ran the evaluation supplies the
scores (a reward model's `reward`, or a `score`, and/or `flags`); this module never scores.

Only `sample_tasks` touches torch/transformers, and imports them inside the function.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from xml.sax.saxutils import quoteattr

from labeling.readers import LS_EMAIL_DOMAIN, json_objects
from labeling.schema import FLAGS, ComparisonTask, WritingTask, as_task, candidate_ids, guideline_version

RANKER_NAME, LIST_NAME = "rank", "replies"
RATING_SCALE, RATING_MAX = "overall", 7
CONFIG_FLAGS = ("fails_to_follow_instruction", "hallucination", "harmful", "inappropriate_for_assistant", "gives_harmful_advice")
_EPOCH = "2026-01-01T00:00:00.000000Z"


def _ls_data(task: ComparisonTask) -> dict:
    """What Label Studio holds of a task, the same fields in the same order for every task. Everything in
    it is visible to annotators (the Data Manager's columns, the API), so it carries neither a control's
    known answer (`gold_ranking`) nor which model wrote a reply: both stay in tasks.jsonl, and
    `labels ingest --tasks` takes them from there."""
    return {
        "task_id": task.task_id,
        "prompt": [m.model_dump() for m in task.prompt],
        "candidates": [{"id": c.id, "title": f"Reply {c.id.upper()}", "body": c.content} for c in task.candidates],
        "guideline_version": task.guideline_version,
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


def write_tasks(tasks: Iterable[ComparisonTask | Mapping], out_dir, *, controls: Sequence[ComparisonTask | Mapping] = (),
                control_rate: float | None = None, seed: int = 0) -> dict:
    """Write tasks.jsonl, label_studio_import.json and label_studio_config.xml into `out_dir`.

    Each task: a prompt conversation plus K candidate replies (with the model that wrote each);
    its task id is stable (derived from prompt + candidates unless given). `controls` (tasks with a
    known `gold_ranking`, see labeling.controls) are mixed in at `control_rate` of the batch (default
    0.05 when there are controls), at random positions (`seed`). Known answers and models are written
    to tasks.jsonl only, never to the Label Studio import. Returns {"tasks": n (controls included),
    "controls": m, "task_ids": [...], "control_counts": {...} (labeling.controls.mix_controls),
    "paths": {...}}."""
    from labeling.controls import DEFAULT_CONTROL_RATE, mix_controls

    if control_rate is None:
        control_rate = DEFAULT_CONTROL_RATE if controls else 0.0
    tasks, control_counts = mix_controls(tasks, controls, control_rate, seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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
    return {"tasks": len(tasks), "controls": sum(t.gold_ranking is not None for t in tasks), "task_ids": ids,
            "control_counts": control_counts, "paths": {k: str(v) for k, v in paths.items()}}


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


def _ls_annotation(annotation_id: int, task_index: int, annotator: str, user: int, judgment: Mapping,
                   result: list[dict]) -> dict:
    """One annotation of a Label Studio JSON export, by `annotator` (user number `user`).

    Shaped as Label Studio 1.23 exports it (tests/fixtures/labeling/real/): `completed_by` expanded to
    {id, email, first_name, last_name}, as a snapshot export with `annotations__completed_by.only_id`
    false gives it (the plain `/export` gives the user id alone; ingest reads both)."""
    unique = hashlib.sha1(f"annotation/{annotation_id}".encode()).hexdigest()
    return {
        "id": annotation_id,
        "completed_by": {"id": user, "email": annotator if "@" in annotator else annotator + LS_EMAIL_DOMAIN,
                         "first_name": "", "last_name": ""},
        "result": result,
        "was_cancelled": bool(judgment.get("was_cancelled", False)),
        "ground_truth": False,
        "created_at": _EPOCH, "updated_at": _EPOCH,
        "draft_created_at": None,
        "lead_time": float(judgment.get("lead_time", 0.0)),
        "prediction": {}, "result_count": len(result),
        "unique_id": f"{unique[:8]}-{unique[8:12]}-{unique[12:16]}-{unique[16:20]}-{unique[20:32]}",
        "import_id": None, "last_action": None, "bulk_created": False,
        "task": task_index, "project": 1, "updated_by": user, "parent_prediction": None,
        "parent_annotation": None, "last_created_by": None,
    }


def _ls_task(index: int, annotations: list[dict], data: dict) -> dict:
    """One task of a Label Studio JSON export, with its annotations."""
    return {
        "id": index,
        "annotations": annotations,
        "file_upload": "label_studio_import.json", "allow_skip": True,
        "drafts": [], "predictions": [],
        "data": data,
        "meta": {},
        "created_at": _EPOCH, "updated_at": _EPOCH,
        "inner_id": index,
        "total_annotations": sum(not a["was_cancelled"] for a in annotations),
        "cancelled_annotations": sum(a["was_cancelled"] for a in annotations),
        "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0,
        "last_comment_updated_at": None, "project": 1, "updated_by": None, "comment_authors": [],
    }


def _write_ls_export(tasks: Sequence, judgments, path, data: Callable[[Any], dict],
                     results: Callable[[Any, Mapping], list[dict]]) -> Path:
    """Write `tasks` (ComparisonTask or WritingTask) as a Label Studio JSON export: `data(task)` is a
    task's data, `results(task, judgment)` an annotation's results (not asked of a cancelled one)."""
    if not isinstance(judgments, Mapping):
        judgments = {t.task_id: list(j or []) for t, j in zip(tasks, judgments, strict=True)}
    out, users, annotation_id = [], {}, 0
    for index, task in enumerate(tasks, start=1):
        annotations = []
        for judgment in judgments.get(task.task_id, []):
            annotation_id += 1
            annotator = str(judgment["annotator"])
            user = users.setdefault(annotator, len(users) + 1)
            result = [] if judgment.get("was_cancelled", False) else results(task, judgment)
            annotations.append(_ls_annotation(annotation_id, index, annotator, user, judgment, result))
        out.append(_ls_task(index, annotations, data(task)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def label_studio_export(tasks: Sequence[ComparisonTask | Mapping], judgments, path) -> Path:
    """Write a Label Studio JSON export of `tasks` as annotated by labelers.

    `judgments`: {task_id: [annotation, ...]} or a list parallel to `tasks`. An annotation is
    {"annotator": str, "ranking": [[candidate ids], ...] (best first, ties grouped),
     "ratings": {cid: {"overall": 1..7, ...}}?, "flags": {cid: [flag, ...]}?, "rationale": str?,
     "lead_time": seconds?, "was_cancelled": bool?}.
    The file has the shape of Label Studio's "JSON" export: a list of tasks, each with `id`,
    `data`, `annotations` (with `completed_by`, `result`, `was_cancelled`, `lead_time`, ...)."""
    return _write_ls_export([as_task(t) for t in tasks], judgments, path, _ls_data, _ls_results)


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
                 temperature: float = 1.0, seed: int = 0, controls=None, control_rate: float | None = None) -> dict:
    """Sample `k` replies per prompt from `checkpoint` and write them as comparison tasks.

    Prompts whose samples are not at least two distinct non-empty replies are skipped (counted).
    `controls`: a controls file (labeling.controls) or control tasks, mixed in at `control_rate`
    (default 0.05) of the batch."""
    if k < 2:
        raise ValueError("k must be at least 2: a comparison needs two replies")
    from labeling.controls import ControlsError, read_controls

    if isinstance(controls, (str, os.PathLike)):
        controls = read_controls(controls)  # a bad controls file fails before any sampling
    if control_rate and not controls:
        raise ControlsError("--control-rate needs --controls FILE")
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
    summary = write_tasks(tasks, out_dir, controls=controls or (), control_rate=control_rate, seed=seed)
    summary.update({"prompts": len(prompts), "skipped_prompts": skipped, "k": k, "checkpoint": str(checkpoint)})
    (Path(out_dir) / "tasks_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


# ---------------------------------------------------------------------------------------------
# Writing tasks: demonstrations and rewrites

REPLY_BOX, REWRITE_BOX, ORIGINAL_NAME, FLAGS_NAME = "reply", "rewrite", "original", "flags"
EVAL_ANSWERS = "eval_answers.jsonl"
EVAL_STAGES = ("ppo", "sft")  # where `--from-eval RUN` looks, latest stage first
SCORE_FIELDS = ("reward", "score")
ANSWER_FIELDS = ("answer", "greedy", "reply")


def as_writing_task(task: WritingTask | Mapping, mode: str | None = None) -> WritingTask:
    """A WritingTask from a task or a dict ({"prompt", "original"?, "original_model"?, ...})."""
    if isinstance(task, WritingTask):
        return task
    task = dict(task)
    if mode is not None:
        task.setdefault("mode", mode)
    task.setdefault("guideline_version", guideline_version())
    return WritingTask.model_validate(task)


def writing_config(mode: str) -> str:
    """The Label Studio labeling config for writing tasks of `mode` (demonstration or rewrite)."""
    head = """<View>
  <Header value="The conversation so far"/>
  <Paragraphs name="prompt" value="$prompt" layout="dialogue" nameKey="role" textKey="content"/>
"""
    if mode == "demonstration":
        return head + f"""  <Header value="Write the assistant's next reply, as the labeling guidelines ask."/>
  <TextArea name="{REPLY_BOX}" toName="prompt" rows="8" maxSubmissions="1" editable="true" required="true"
            placeholder="The assistant's reply"/>
</View>
"""
    if mode != "rewrite":
        raise ValueError(f"unknown writing task mode {mode!r}: demonstration or rewrite")
    choices = "".join(f'    <Choice value="{flag}"/>\n' for flag in FLAGS)
    return head + f"""  <Header value="The assistant's reply, which misbehaved"/>
  <Text name="{ORIGINAL_NAME}" value="${ORIGINAL_NAME}"/>
  <Header value="What is wrong with it?"/>
  <Choices name="{FLAGS_NAME}" toName="{ORIGINAL_NAME}" choice="multiple" showInline="true">
{choices}  </Choices>
  <Header value="Rewrite it: the reply the assistant should have given."/>
  <TextArea name="{REWRITE_BOX}" toName="{ORIGINAL_NAME}" rows="8" maxSubmissions="1" editable="true" required="true"
            placeholder="The corrected reply"/>
</View>
"""


def _writing_data(task: WritingTask) -> dict:
    data = {"task_id": task.task_id, "task_kind": task.mode, "prompt": [m.model_dump() for m in task.prompt],
            "guideline_version": task.guideline_version}
    if task.mode == "rewrite":
        data.update({"original": task.original, "original_model": task.original_model,
                     "original_flags": list(task.original_flags), "score": task.score})
    return data


def write_writing_tasks(tasks: Iterable[WritingTask | Mapping], out_dir, *, mode: str) -> dict:
    """Write tasks.jsonl, label_studio_import.json and label_studio_config.xml for writing tasks.

    All tasks have `mode` (demonstration or rewrite); a task repeated (same prompt and original)
    is written once. Returns {"tasks": n, "task_ids": [...], "paths": {...}}."""
    writing_config(mode)  # an unknown mode fails before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unique: dict[str, WritingTask] = {}
    for task in tasks:
        task = as_writing_task(task, mode)
        if task.mode != mode:
            raise ValueError(f"task {task.task_id} is a {task.mode} task, not {mode}")
        unique.setdefault(task.task_id, task)
    paths = {"tasks": out_dir / "tasks.jsonl", "label_studio_import": out_dir / "label_studio_import.json",
             "label_studio_config": out_dir / "label_studio_config.xml"}
    with open(paths["tasks"], "w", encoding="utf-8") as handle:
        for task in unique.values():
            handle.write(task.model_dump_json() + "\n")
    paths["label_studio_import"].write_text(
        json.dumps([{"data": _writing_data(t)} for t in unique.values()], ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    paths["label_studio_config"].write_text(writing_config(mode), encoding="utf-8")
    return {"tasks": len(unique), "task_ids": list(unique), "mode": mode, "paths": {k: str(v) for k, v in paths.items()}}


def demonstration_tasks(prompts_path, out_dir) -> dict:
    """Demonstration tasks (labelers write the reply) for every prompt of `prompts_path`
    (the same files `sample_tasks` reads)."""
    return write_writing_tasks([{"prompt": p} for p in read_prompts(prompts_path)], out_dir, mode="demonstration")


def eval_answers_path(run, stage: str | None = None) -> Path:
    """The eval answers file of RUN: RUN itself when it is a file, RUN/eval_answers.jsonl for a
    stage dir, else RUN/STAGE/eval_answers.jsonl (STAGE: `stage`, or the latest of ppo, sft)."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory or file")
    if stage is not None:
        candidates = [run / stage / EVAL_ANSWERS]
    else:
        candidates = [run / EVAL_ANSWERS] + [run / name / EVAL_ANSWERS for name in EVAL_STAGES]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{run}: no {EVAL_ANSWERS} in {', '.join(str(p.parent) for p in candidates)}")


def _verdict_score(row: dict, judge: str):
    """The score of `judge`'s verdict on the greedy reply of an eval_answers.jsonl line (`pipeline.eval`'s judges:
    `replies.greedy[0].verdicts[judge].score`), or None."""
    replies = row.get("replies")
    greedy = replies.get("greedy") if isinstance(replies, dict) else None
    first = greedy[0] if isinstance(greedy, list) and greedy and isinstance(greedy[0], dict) else {}
    verdict = (first.get("verdicts") or {}).get(judge)
    score = verdict.get("score") if isinstance(verdict, dict) else None
    return score if isinstance(score, (int, float)) and not isinstance(score, bool) else None


def _answer_row(row: dict, where: str, judge: str = "reward") -> dict:
    """{prompt messages, answer, score, flags, model, split} from one answers line; the score is the line's own
    (`reward`, `score`), else the `judge`'s verdict on its greedy reply."""
    conversation = row.get("prompt", row.get("messages"))
    if isinstance(conversation, str):
        conversation = [{"role": "user", "content": conversation}]
    if not isinstance(conversation, list) or not conversation or not all(isinstance(m, dict) for m in conversation):
        raise ValueError(f"{where}: expected `prompt` (a string or messages) or `messages`")
    conversation = [{"role": m.get("role"), "content": m.get("content")} for m in conversation]
    if conversation[-1]["role"] == "assistant":
        conversation = conversation[:-1]
    answer = next((row[f] for f in ANSWER_FIELDS if isinstance(row.get(f), str)), None)
    score = next((row[f] for f in SCORE_FIELDS if isinstance(row.get(f), (int, float)) and not isinstance(row.get(f), bool)), None)
    score = _verdict_score(row, judge) if score is None else score
    flags = row.get("flags") if isinstance(row.get("flags"), list) else []
    return {"prompt": conversation, "answer": answer, "score": None if score is None else float(score),
            "flags": [f for f in flags if f in FLAGS], "model": row.get("model"), "split": row.get("split"), "id": row.get("id")}


def read_answers(path, *, judge: str = "reward") -> list[dict]:
    """Answer rows from JSONL: {"prompt" | "messages", "answer" | "greedy" | "reply", "reward" | "score"?,
    "flags"?, "model"?, "split"?}, or RUN/STAGE/eval_answers.jsonl lines scored by `judge`'s verdicts."""
    return [_answer_row(row, where, judge) for where, row in json_objects(Path(path))]


def worst_answers(rows: Sequence[Mapping], n: int | None, *, where: str = "the answers") -> tuple[list[dict], dict]:
    """The `n` worst answers (all when n is None), worst first, and counts of what was left out.

    Worst = lowest score (`reward` or `score`), more flags breaking ties; with flags but no
    scores, most flags first (an unflagged answer is not bad). Rows of the `test` split are never
    picked (nothing is tuned on test; `dev` and unsplit rows are), nor empty answers.
    Raises ValueError when no row has a score or a flag."""
    if n is not None and n < 1:
        raise ValueError("--worst must be at least 1")
    usable, skipped = [], {"test_split": 0, "empty_answer": 0, "unscored": 0}
    for row in rows:
        if row.get("split") not in (None, "dev"):
            skipped["test_split"] += 1
        elif not (row.get("answer") or "").strip():
            skipped["empty_answer"] += 1
        else:
            usable.append(dict(row))
    if not any(r.get("score") is not None or r.get("flags") for r in usable):
        raise ValueError(f"{where} has no scores: no `reward`, `score` or `flags` field to rank the answers by "
                         f"(the evaluation must score its answers, e.g. with the reward model)")
    scored = [r for r in usable if r.get("score") is not None or r.get("flags")]
    skipped["unscored"] = len(usable) - len(scored)
    scored.sort(key=lambda r: (r.get("score") is None, r.get("score") or 0.0, -len(r.get("flags") or [])))
    return (scored if n is None else scored[:n]), skipped


def rewrite_tasks(rows: Sequence[Mapping], out_dir, *, worst: int | None = None, model: str | None = None,
                  where: str = "the answers") -> dict:
    """Rewrite tasks for the `worst` lowest-scored answers of `rows` ({prompt, answer, score, flags?,
    model?}): tasks.jsonl, a Label Studio import and a config with the original shown and a TextArea
    for the corrected reply. `model` names the checkpoint when rows do not. Returns the summary."""
    picked, skipped = worst_answers(rows, worst, where=where)
    tasks = [{"prompt": r["prompt"], "original": r["answer"], "original_model": r.get("model") or model,
              "original_flags": list(r.get("flags") or []), "score": r.get("score")} for r in picked]
    summary = write_writing_tasks(tasks, out_dir, mode="rewrite")
    summary.update({"answers": len(rows), "picked": len(picked), "skipped": skipped,
                    "scores": [r.get("score") for r in picked]})
    (Path(out_dir) / "tasks_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def tasks_from_eval(run, out_dir, *, worst: int | None, stage: str | None = None, judge: str = "reward") -> dict:
    """`labels tasks --from-eval RUN --worst N [--judge NAME]`: rewrite tasks for the N held-out (dev) answers the
    judge scored worst (the run's reward model by default)."""
    path = eval_answers_path(run, stage)
    model = path.parent.name if path.name == EVAL_ANSWERS else None
    summary = rewrite_tasks(read_answers(path, judge=judge), out_dir, worst=worst, model=model, where=str(path))
    summary["eval_answers"] = str(path)
    (Path(out_dir) / "tasks_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _writing_results(task: WritingTask, judgment: Mapping) -> list[dict]:
    """The results of one answer to a writing task: the text box, and the flags of a rewrite."""
    annotator = str(judgment["annotator"])
    box, target = (REPLY_BOX, "prompt") if task.mode == "demonstration" else (REWRITE_BOX, ORIGINAL_NAME)
    result = [{"id": _result_id(task.task_id, annotator, box), "from_name": box, "to_name": target,
               "type": "textarea", "origin": "manual", "value": {"text": [judgment["text"]]}}]
    if judgment.get("flags"):
        result.append({"id": _result_id(task.task_id, annotator, FLAGS_NAME), "from_name": FLAGS_NAME,
                       "to_name": ORIGINAL_NAME, "type": "choices", "origin": "manual",
                       "value": {"choices": list(judgment["flags"])}})
    return result


def label_studio_writing_export(tasks: Sequence[WritingTask | Mapping], judgments, path) -> Path:
    """Write a Label Studio JSON export of writing tasks as labelers answered them.

    `judgments`: {task_id: [annotation, ...]} or a list parallel to `tasks`; an annotation is
    {"annotator": str, "text": str, "flags": [flag, ...]? (rewrite), "lead_time"?, "was_cancelled"?}.
    Each answer is a `textarea` result {"value": {"text": [text]}} from the config's box."""
    return _write_ls_export([as_writing_task(t) for t in tasks], judgments, path, _writing_data, _writing_results)


__all__ = ["write_tasks", "label_studio_export", "label_studio_config", "sample_tasks", "read_prompts", "as_task",
           "candidate_ids", "FLAGS", "as_writing_task", "writing_config", "write_writing_tasks", "demonstration_tasks",
           "eval_answers_path", "read_answers", "worst_answers", "rewrite_tasks", "tasks_from_eval",
           "label_studio_writing_export"]
