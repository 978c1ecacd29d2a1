"""Control tasks: comparison tasks with a known answer, mixed into a batch to check labelers.

    chatsmith labels tasks CHECKPOINT PROMPTS --k 4 --out DIR --controls FILE [--control-rate 0.05]

A control is an ordinary `ComparisonTask` whose `gold_ranking` (the known answer) is set. The
answer stays on chatsmith's side: it is written to DIR/tasks.jsonl only, never to the Label Studio
task data (`labeling.tasks`), so a control looks exactly like any other task to the labelers and
to anyone browsing the project: the same fields in the same order, the same id scheme, the same
candidate ids, a random position in the batch. `labels ingest --tasks DIR/tasks.jsonl` recovers the
answer (`gold`, `gold_ranking` on the record); `labels stats` scores each labeler on the controls
(`labeling.screening`) and `labels build` never trains on them.

The controls file (JSONL, one control a line; `where` of a bad line is named in the error):
    {"prompt": "What is the river of Alder?" | [messages ending with a user turn],
     "candidates": [{"id": "right", "content": "The Vell."}, {"id": "wrong", "content": "The Umber."}, ...],
     "gold_ranking": [["right"], ["wrong", ...]]}
  `candidates[].id` are the file's own labels (default a, b, c, ...; `model` is optional);
  `gold_ranking` lists tie groups best first, as a labeler's ranking does. Only pairs in different
  groups are scored, so [["right"], ["wrong", "rude", "off-topic"]] asks just "is the right reply
  ranked strictly above each of the others".
or the shorthand for the usual case, a reply that is certainly better than the others:
    {"prompt": ..., "better": "The Vell.", "worse": "The Umber." | ["The Umber.", "Ask someone else."]}
`task_id`, `kind`, `schema_version` and `guideline_version` may be present (a tasks.jsonl line is a
valid control when it has a `gold_ranking`) and are ignored: a control's id is derived like every
task's; `note` is free text for the team. Any other key is an error.

Mixing (`mix_controls`): round(rate * n / (1 - rate)) controls join n tasks (at least one when the
rate is positive), so controls are `rate` of the batch written. Each control's candidates are
shuffled and relabelled a, b, c, ... (the known answer follows them), its id is made by the batch's
id scheme, and it is inserted at a random position; the regular tasks keep their order. A control is
used at most once per batch. Only controls with a candidate count that the batch's own tasks have
are used (a pair in a batch of 4-reply tasks would stand out); write K-candidate controls for a
batch of K.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from pydantic import ValidationError

from labeling.readers import json_objects
from labeling.schema import Candidate, ComparisonTask, Message, _canonical, as_task, candidate_ids, guideline_version

DEFAULT_CONTROL_RATE = 0.05
_CONTROL_KEYS = {"prompt", "candidates", "gold_ranking", "better", "worse"}
_IGNORED_KEYS = {"task_id", "kind", "schema_version", "guideline_version", "note"}
_HASHED_ID = re.compile(r"^(.*?)([0-9a-f]{8,64})$")


class ControlsError(ValueError):
    """A controls file or call that cannot be used; the message names the file:line or the argument."""


def control_task(prompt, candidates: Sequence[Mapping | str], gold_ranking: Sequence[Sequence[str]] | None = None) -> ComparisonTask:
    """A control from a prompt (a string or messages), candidates ({"content", "id"?, "model"?} or plain
    strings) and the known ranking (tie groups of candidate ids, best first). With `gold_ranking`
    None the first candidate is the better one and the rest are tied below it."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    ids = candidate_ids(len(candidates))
    rows = []
    for i, candidate in enumerate(candidates):
        if isinstance(candidate, str):
            candidate = {"content": candidate}
        if not isinstance(candidate, Mapping):
            raise ControlsError(f"candidate {i + 1}: expected an object {{content, id?, model?}} or a string")
        unknown = set(candidate) - {"id", "content", "model"}
        if unknown:
            raise ControlsError(f"candidate {i + 1}: unknown key(s) {sorted(unknown)} (id, content, model)")
        rows.append({"id": str(candidate.get("id", ids[i])), "content": candidate.get("content"), "model": candidate.get("model")})
    if gold_ranking is None:
        gold_ranking = [[rows[0]["id"]], [r["id"] for r in rows[1:]]] if len(rows) >= 2 else []
    contents = [(r["content"] or "").strip() if isinstance(r["content"], str) else "" for r in rows]
    if any(not c for c in contents):
        raise ControlsError("every candidate needs a non-empty `content` string")
    if len(set(contents)) != len(contents):
        raise ControlsError("two candidates have the same text: a labeler cannot tell them apart")
    if len(set(r["id"] for r in rows)) != len(rows):
        raise ControlsError(f"candidate ids {[r['id'] for r in rows]} are not unique")
    if not isinstance(gold_ranking, (list, tuple)) or not all(isinstance(g, (list, tuple)) for g in gold_ranking):
        raise ControlsError("gold_ranking: expected tie groups of candidate ids, best first ([[id], [id, ...], ...])")
    gold = [[str(cid) for cid in group] for group in gold_ranking]
    if sum(1 for group in gold if group) < 2:
        raise ControlsError("gold_ranking: a control needs at least two groups (a reply known to be better than another)")
    ranked, ids_given = [cid for group in gold for cid in group], [r["id"] for r in rows]
    if any(not group for group in gold) or sorted(ranked) != sorted(ids_given):
        raise ControlsError(f"gold_ranking {gold} does not rank each of the candidates {ids_given} exactly once")
    try:
        return ComparisonTask(prompt=prompt, candidates=rows, gold_ranking=gold, guideline_version=guideline_version())
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ControlsError(f"{where + ': ' if where else ''}{first.get('msg')}") from None


def control_from_pair(prompt, better: str, worse: str | Sequence[str]) -> ComparisonTask:
    """A control whose `better` reply is certainly preferred over each of `worse` (one reply or
    several, tied below it): e.g. a correct plain answer against a wrong or a rude one."""
    worse = [worse] if isinstance(worse, str) else list(worse)
    return control_task(prompt, [better, *worse])


def _control_from_row(row: dict) -> ComparisonTask:
    unknown = set(row) - _CONTROL_KEYS - _IGNORED_KEYS
    if unknown:
        raise ControlsError(f"unknown key(s) {sorted(unknown)}: a control has prompt + candidates + gold_ranking, "
                            "or prompt + better + worse")
    if "prompt" not in row:
        raise ControlsError("missing key `prompt`")
    shorthand, full = {"better", "worse"} & set(row), {"candidates", "gold_ranking"} & set(row)
    if shorthand and full:
        raise ControlsError(f"give either candidates + gold_ranking or better + worse, not both ({sorted(shorthand | full)})")
    if shorthand:
        if set(shorthand) != {"better", "worse"}:
            raise ControlsError(f"missing key `{({'better', 'worse'} - shorthand).pop()}`")
        if not isinstance(row["better"], str) or not (isinstance(row["worse"], str) or (
                isinstance(row["worse"], list) and row["worse"] and all(isinstance(w, str) for w in row["worse"]))):
            raise ControlsError("`better` must be a string and `worse` a string or a list of strings")
        return control_from_pair(row["prompt"], row["better"], row["worse"])
    for key in ("candidates", "gold_ranking"):
        if key not in row:
            raise ControlsError(f"missing key `{key}`")
    if not isinstance(row["candidates"], list) or len(row["candidates"]) < 2:
        raise ControlsError("`candidates` must be a list of at least two replies")
    return control_task(row["prompt"], row["candidates"], row["gold_ranking"])


def read_controls(path: str | os.PathLike) -> list[ComparisonTask]:
    """The controls of a controls file (format in the module docstring). A bad line is a
    ControlsError naming `path:line` and what is wrong; an empty file is one too."""
    path = Path(path)
    if not path.is_file():
        raise ControlsError(f"--controls {path}: no such file")
    controls = []
    try:
        for where, row in json_objects(path):
            try:
                controls.append(_control_from_row(row))
            except ControlsError as err:
                raise ControlsError(f"{where}: {err}") from None
    except ValueError as err:  # a line that is not a JSON object: json_objects names it
        raise ControlsError(str(err)) from None
    if not controls:
        raise ControlsError(f"--controls {path}: the file has no controls")
    return controls


def id_scheme(task_ids: Iterable[str]) -> tuple[str, int] | None:
    """(prefix, hex length) when every id is PREFIX + a hex digest of one length (chatsmith's own
    `t-` + 16 hex, or `arena-` + 16 hex), else None."""
    schemes = set()
    for task_id in task_ids:
        match = _HASHED_ID.match(task_id)
        if match is None:
            return None
        schemes.add((match.group(1), len(match.group(2))))
        if len(schemes) > 1:
            return None
    return schemes.pop() if schemes else None


def _shuffled(control: ComparisonTask, rng: random.Random, scheme: tuple[str, int], version: str | None) -> ComparisonTask:
    """The control with its candidates in a random order, relabelled a, b, c, ..., and an id of the batch's scheme."""
    order = list(control.candidates)
    rng.shuffle(order)
    letters = candidate_ids(len(order))
    rename = {c.id: letters[i] for i, c in enumerate(order)}
    candidates = [Candidate(id=rename[c.id], content=c.content, model=c.model) for c in order]
    gold = [sorted(rename[cid] for cid in group) for group in control.gold_ranking or []]
    prefix, length = scheme
    body = {"prompt": [m.model_dump() for m in control.prompt], "candidates": [[c.id, c.content] for c in candidates]}
    task_id = prefix + hashlib.sha256(_canonical(body)).hexdigest()[:length]
    return ComparisonTask(task_id=task_id, prompt=[Message(role=m.role, content=m.content) for m in control.prompt],
                          candidates=candidates, gold_ranking=gold, guideline_version=version)


def controls_wanted(n_tasks: int, rate: float) -> int:
    """How many controls join `n_tasks` tasks so that they are `rate` of the batch: round(rate * n / (1 - rate)),
    at least one when the rate and the batch are not zero."""
    if rate <= 0 or n_tasks <= 0:
        return 0
    return max(1, round(rate * n_tasks / (1 - rate)))


def mix_controls(tasks: Sequence[ComparisonTask | Mapping], controls: Sequence[ComparisonTask | Mapping], rate: float = DEFAULT_CONTROL_RATE,
                 *, seed: int = 0) -> tuple[list[ComparisonTask], dict]:
    """`tasks` with controls mixed in at `rate` of the batch: (the batch, counts).

    `controls`: control tasks (`read_controls`, `control_task`, `control_from_pair`, or dicts with a
    `gold_ranking`). Raises ControlsError when a control could be told apart: the batch's task ids
    are not one hashed scheme (PREFIX + hex digest: leave `task_id` empty and chatsmith derives one)
    or its candidates are not labelled a, b, c, ...; and when no control has a candidate count the
    batch has. Counts: {"tasks": regular tasks, "controls": mixed in, "controls_wanted",
    "controls_available", "controls_wrong_size": controls whose candidate count the batch lacks,
    "control_rate"}."""

    if not (0 <= rate < 1) or rate != rate:
        raise ControlsError(f"--control-rate must be in [0, 1), got {rate}")
    tasks = [as_task(t) for t in tasks]
    controls = [as_task(c) for c in controls]
    for number, control in enumerate(controls, start=1):
        if not control.gold_ranking or sum(1 for g in control.gold_ranking if g) < 2:
            raise ControlsError(f"control {number}: no known answer (`gold_ranking` with at least two groups)")
    wanted = controls_wanted(len(tasks), rate) if controls else 0
    counts = {"tasks": len(tasks), "controls": 0, "controls_wanted": wanted, "controls_available": len(controls),
              "controls_wrong_size": 0, "control_rate": rate}
    if wanted == 0:
        return tasks, counts
    scheme = id_scheme(t.task_id for t in tasks)
    if scheme is None:
        raise ControlsError("the batch's task ids are not one hashed scheme (PREFIX + hex digest), so a control's id "
                            "would stand out: leave task_id empty (chatsmith derives t-<hash>) or use one hashed scheme")
    odd = next((t for t in tasks if [c.id for c in t.candidates] != candidate_ids(len(t.candidates))), None)
    if odd is not None:
        raise ControlsError(f"task {odd.task_id}: candidate ids {[c.id for c in odd.candidates]} are not a, b, c, ...; "
                            "a control's would stand out")
    sizes = Counter(len(t.candidates) for t in tasks)
    by_size: dict[int, list[ComparisonTask]] = {}
    for control in controls:
        if len(control.candidates) in sizes:
            by_size.setdefault(len(control.candidates), []).append(control)
    counts["controls_wrong_size"] = len(controls) - sum(len(v) for v in by_size.values())
    if not by_size:
        raise ControlsError(f"no control has a candidate count the batch's tasks have ({sorted(sizes)}): "
                            "a control with another count would stand out; write controls with that many replies")
    rng = random.Random(f"controls:{seed}")
    pools = {size: rng.sample(pool, len(pool)) for size, pool in sorted(by_size.items())}
    versions = Counter(t.guideline_version for t in tasks)
    version = versions.most_common(1)[0][0]
    taken, chosen = {t.task_id for t in tasks}, []
    while len(chosen) < wanted and any(pools.values()):
        # a candidate count drawn as often as the batch has it (among the counts with controls left)
        open_sizes = [s for s in sorted(pools) if pools[s]]
        size = rng.choices(open_sizes, weights=[sizes[s] for s in open_sizes])[0]
        control = _shuffled(pools[size].pop(), rng, scheme, version)
        if control.task_id in taken:
            continue  # the same prompt and replies as a task of the batch (or another control)
        taken.add(control.task_id)
        chosen.append(control)
    slots = set(rng.sample(range(len(tasks) + len(chosen)), len(chosen)))
    regular, extra, mixed = iter(tasks), iter(chosen), []
    for position in range(len(tasks) + len(chosen)):
        mixed.append(next(extra) if position in slots else next(regular))
    counts["controls"] = len(chosen)
    return mixed, counts


def is_control(record) -> bool:
    """A judgment on a control task (a record with `gold` or a known `gold_ranking`)."""
    return bool(getattr(record, "gold", False)) or getattr(record, "gold_ranking", None) is not None


__all__ = ["read_controls", "control_task", "control_from_pair", "mix_controls", "controls_wanted", "id_scheme", "is_control",
           "ControlsError", "DEFAULT_CONTROL_RATE"]
