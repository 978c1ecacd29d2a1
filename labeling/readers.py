"""Readers for the formats labelers deliver. Each turns a file into a stream of `Item`s.

An `Item` is one unit of the source (a line, an annotation, a message-tree group) with either a
candidate record (a dict in the native schema) or the reason it is set aside. Readers never raise
on bad content: they say why. `labeling.ingest` validates, de-duplicates and writes.

Formats (see labeling/README.md for the exact shapes accepted):
- native:       JSONL of labeling.schema records;
- hh-rlhf:      Anthropic HH-RLHF JSONL (`chosen`/`rejected` transcripts), plain or gzip; the chosen
                transcript also as a demonstration when asked (`hh_demonstrations=True`);
- oasst:        OpenAssistant message-tree JSONL (one tree per line): ranked siblings -> comparisons,
                the best-ranked reply along each path -> demonstrations (as OA's own SFT exports);
- label-studio: Label Studio JSON export (an array of tasks with annotations), or JSONL of tasks:
                rankings -> comparisons, free text (TextArea) -> demonstrations and rewrites;
- argilla:      Argilla export records (v2 nested or flat, v1 FeedbackDataset), JSON array or JSONL:
                rankings -> comparisons, TextQuestion answers -> demonstrations and rewrites.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

LFS_MAGIC = b"version https://git-lfs.github.com/spec/"
UTF8_BOM = b"\xef\xbb\xbf"


class InputError(Exception):
    """The input cannot be read at all (missing, a directory, unreadable): a user error."""


@dataclass
class Item:
    line: int  # 1-based line, or 1-based element index of a one-document format
    raw: bytes  # the bytes this unit came from (what rejected.jsonl shows)
    record: dict | None = None
    reason: str | None = None
    detail: str = ""
    part: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


def _reject(line: int, raw: bytes, reason: str, detail: str = "", part: str | None = None) -> Item:
    return Item(line=line, raw=raw, reason=reason, detail=detail, part=part)


# ---------------------------------------------------------------------------------------------
# Low-level: lines and documents


def _open_binary(path: Path):
    try:
        handle = open(path, "rb")
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a file") from None
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from None
    magic = handle.read(2)
    handle.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.open(handle, "rb")
    return handle


def iter_json_lines(path: Path) -> Iterator[tuple[int, bytes, Any, Item | None]]:
    """(line number, raw bytes, parsed object or None, rejection or None) for every non-blank line.

    A Git LFS pointer file (the data was never pulled) sets every line aside as `lfs_pointer`."""
    with _open_binary(path) as handle:
        lfs = False
        try:
            for number, raw in enumerate(handle, start=1):
                raw = raw.rstrip(b"\r\n")
                if number == 1 and raw.startswith(UTF8_BOM):  # Windows tools write one; it is not data
                    raw = raw[len(UTF8_BOM):]
                if not raw.strip():
                    continue
                if number == 1 and raw.startswith(LFS_MAGIC):
                    lfs = True
                if lfs:
                    yield number, raw, None, _reject(number, raw, "lfs_pointer", "a Git LFS pointer, not the data: run `git lfs pull`")
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    yield number, raw, None, _reject(number, raw, "bad_utf8", str(err))
                    continue
                try:
                    obj = json.loads(text)
                except ValueError as err:
                    yield number, raw, None, _reject(number, raw, "bad_json", str(err))
                    continue
                if not isinstance(obj, dict):
                    yield number, raw, None, _reject(number, raw, "not_an_object", f"a JSON {type(obj).__name__}, expected an object")
                    continue
                yield number, raw, obj, None
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            # a truncated .gz: everything before the damage was yielded; say where it broke
            yield -1, b"", None, _reject(0, b"", "truncated_file", f"{type(err).__name__}: {err}")


def iter_json_elements(path: Path) -> Iterator[tuple[int, bytes, Any, Item | None]]:
    """Like iter_json_lines for a file that is one JSON array (or, failing that, JSONL)."""
    with _open_binary(path) as handle:
        data = handle.read()
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    head = data.lstrip()[:1]
    if head != b"[":
        yield from iter_json_lines(path)
        return
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        yield 1, data, None, _reject(1, data, "bad_utf8", f"the document is not UTF-8: {err}")
        return
    except ValueError as err:
        yield 1, data, None, _reject(1, data, "bad_json", f"the document is not valid JSON: {err}")
        return
    for index, element in enumerate(doc, start=1):
        raw = json.dumps(element, ensure_ascii=False, sort_keys=True).encode("utf-8")
        if not isinstance(element, dict):
            yield index, raw, None, _reject(index, raw, "not_an_object", f"a JSON {type(element).__name__}, expected an object")
        else:
            yield index, raw, element, None


def json_objects(path) -> Iterator[tuple[str, dict]]:
    """(where, row) for every non-blank line of a user's own JSONL file, `where` = "PATH:LINE".

    Unlike the readers, a bad line is an error naming it (ValueError), not a rejection."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{where}: not JSON ({err})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object")
            yield where, row


# ---------------------------------------------------------------------------------------------
# native


def read_native(path: Path) -> Iterator[Item]:
    for line, raw, obj, bad in iter_json_lines(path):
        yield bad if bad else Item(line=line, raw=raw, record=obj)


# ---------------------------------------------------------------------------------------------
# Anthropic HH-RLHF

_TURN = re.compile(r"\n\n(Human|Assistant):")
_ASSISTANT = re.compile(r"\n\nAssistant:")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def _common_prefix_length(a: str, b: str) -> int:
    # binary search on slice equality: C-speed compares instead of a Python loop per character
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def parse_hh_turns(text: str) -> list[dict] | None:
    """`\\n\\nHuman: ...\\n\\nAssistant: ...` into messages; None when it is not a transcript."""
    pieces = _TURN.split(text)
    if pieces[0].strip() or len(pieces) < 3:
        return None
    return [{"role": _ROLE[role], "content": content.strip()} for role, content in zip(pieces[1::2], pieces[2::2])]


def split_hh_pair(chosen: str, rejected: str) -> tuple[list[dict], str, str] | None:
    """The shared prompt and the two final replies of an HH pair.

    The prompt is the longest common prefix that ends at an `Assistant:` marker preceded by a
    Human turn: a reply may itself contain "\\n\\nAssistant:", so the last marker inside the common
    prefix is not always the turn boundary."""
    if chosen.startswith("Human:"):
        chosen = "\n\n" + chosen
    if rejected.startswith("Human:"):
        rejected = "\n\n" + rejected
    shared = _common_prefix_length(chosen, rejected)
    markers = [m for m in _ASSISTANT.finditer(chosen, 0, shared + len("\n\nAssistant:")) if m.end() <= shared]
    for marker in reversed(markers):
        turns = parse_hh_turns(chosen[: marker.start()])
        if turns and turns[-1]["role"] == "user":
            return turns, chosen[marker.end():].strip(), rejected[marker.end():].strip()
    return None


def read_hh(path: Path, hh_demonstrations: bool = False) -> Iterator[Item]:
    """One Item per line: a comparison chosen > rejected. With `hh_demonstrations` a line that
    splits into a prompt and two replies is two units: the comparison (part `comparison`) and the
    chosen reply as a demonstration (part `demonstration`). Off by default: HH's assistant turns
    were written by models, not labelers; crowdworkers only picked the better one."""
    for line, raw, obj, bad in iter_json_lines(path):
        if bad:
            yield bad
            continue
        missing = [key for key in ("chosen", "rejected") if key not in obj]
        if missing:
            yield _reject(line, raw, "missing_field", f"no {' and '.join(missing)}")
            continue
        chosen, rejected = obj["chosen"], obj["rejected"]
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            yield _reject(line, raw, "invalid_field", "chosen and rejected must be strings")
            continue
        split = split_hh_pair(chosen, rejected)
        if split is None:
            reason = "bad_transcript" if parse_hh_turns(chosen if not chosen.startswith("Human:") else "\n\n" + chosen) is None else "no_shared_prompt"
            yield _reject(line, raw, reason, "no Human turn followed by an Assistant turn shared by chosen and rejected")
            continue
        prompt, chosen_reply, rejected_reply = split
        yield Item(line=line, raw=raw, part="comparison" if hh_demonstrations else None, record={
            "kind": "comparison",
            "prompt": prompt,
            "candidates": [{"id": "chosen", "content": chosen_reply}, {"id": "rejected", "content": rejected_reply}],
            "ranking": [["chosen"], ["rejected"]],
        })
        if hh_demonstrations:
            yield Item(line=line, raw=raw, part="demonstration", record={
                "kind": "demonstration", "prompt": prompt, "reply": chosen_reply})


# ---------------------------------------------------------------------------------------------
# OpenAssistant message trees

# OA label name -> chatsmith flag (set when the labelers' mean is >= 0.5)
OA_FLAG_LABELS = {
    "spam": "spam",
    "fails_task": "fails_to_follow_instruction",
    "lang_mismatch": "wrong_language",
    "pii": "contains_pii",
    "not_appropriate": "inappropriate_for_assistant",
    "hate_speech": "denigrates_protected_class",
    "sexual_content": "sexual_content",
    "moral_judgement": "expresses_moral_judgment",
    "political_content": "expresses_opinion",
    "violence": "violent_content",
}
OA_EXPORTABLE_STATES = {"ready_for_export"}


def _oa_labels(node: dict) -> tuple[dict[str, float], list[str]]:
    ratings, flags = {}, []
    for name, label in (node.get("labels") or {}).items():
        value = label.get("value") if isinstance(label, dict) else None
        if not isinstance(value, (int, float)):
            continue
        if name in OA_FLAG_LABELS:
            if value >= 0.5:
                flags.append(OA_FLAG_LABELS[name])
        else:
            ratings[f"oa_{name}"] = float(value)
    return ratings, flags


def _oa_set_aside(node: dict) -> tuple[str, str] | None:
    if node.get("deleted"):
        return "deleted", "deleted by a moderator or its author"
    if node.get("synthetic"):
        return "synthetic", f"written by a model ({node.get('model_name') or 'unknown'}), not a person"
    if node.get("review_result") is False:
        return "failed_review", "rejected by OA's peer review"
    if not isinstance(node.get("text"), str) or node.get("role") not in ("prompter", "assistant"):
        return "invalid_field", "a message needs text and a role of prompter or assistant"
    return None


def _count(node: dict) -> int:
    return 1 + sum(_count(r) for r in node.get("replies") or [] if isinstance(r, dict))


def read_oasst(path: Path) -> Iterator[Item]:
    for line, raw, tree, bad in iter_json_lines(path):
        if bad:
            yield bad
            continue
        root = tree.get("prompt")
        if not isinstance(root, dict):
            reason = "unsupported_shape" if "message_id" in tree else "missing_field"
            yield _reject(line, raw, reason, "expected a message tree with `prompt` (flat message exports are not supported)")
            continue
        state = tree.get("tree_state")
        if state is not None and state not in OA_EXPORTABLE_STATES:
            yield _reject(line, raw, "not_exportable", f"tree_state {state!r} is not ready_for_export")
            continue
        tree_id = str(tree.get("message_tree_id") or root.get("message_id") or f"line{line}")
        yield from _oa_walk(root, [], tree_id, line, raw, True, [False])


def _oa_best(replies: list[dict]) -> list[dict]:
    """The best-ranked of a prompter's valid replies: the lowest `rank` when any is ranked, else
    the reply when it is the only one (several unranked siblings have no best)."""
    ranked = [r for r in replies if isinstance(r.get("rank"), int)]
    if ranked:
        top = min(r["rank"] for r in ranked)
        return [r for r in ranked if r["rank"] == top]
    return replies if len(replies) == 1 else []


def _oa_walk(node: dict, history: list[dict], tree_id: str, line: int, raw: bytes, on_best: bool,
             found: list[bool]) -> Iterator[Item]:
    """Items for `node` (a prompter message whose path is `history`) and everything below it.

    `on_best`: every assistant reply on the way here was the best-ranked of its siblings. A best
    reply whose path goes no further down a best path ends a thread: one demonstration with the
    whole path as its prompt (OpenAssistant's SFT export with top_k=1). `found[0]` is set when
    this subtree yielded such a thread."""
    part = str(node.get("message_id"))
    bad = _oa_set_aside(node)
    if bad or node.get("role") != "prompter":
        reason, detail = bad or ("invalid_field", "roles do not alternate")
        yield _reject(line, raw, reason, f"{detail} (message {part} and {_count(node) - 1} below it set aside)", part=part)
        return
    prompt = history + [{"role": "user", "content": node["text"]}]
    good = []
    for reply in node.get("replies") or []:
        if not isinstance(reply, dict):
            continue
        why = _oa_set_aside(reply) or (None if reply.get("role") == "assistant" else ("invalid_field", "roles do not alternate"))
        if why:
            yield _reject(line, raw, why[0], f"{why[1]} (message {reply.get('message_id')} and {_count(reply) - 1} below it set aside)", part=str(reply.get("message_id")))
            continue
        good.append(reply)
    ranked = [r for r in good if isinstance(r.get("rank"), int)]
    if len(ranked) >= 2:
        groups: dict[int, list[str]] = {}
        for reply in ranked:
            groups.setdefault(reply["rank"], []).append(str(reply["message_id"]))
        ratings, flags = {}, {}
        for reply in ranked:
            r, f = _oa_labels(reply)
            if r:
                ratings[str(reply["message_id"])] = r
            if f:
                flags[str(reply["message_id"])] = f
        yield Item(line=line, raw=raw, part=f"{tree_id}/{part}", record={
            "kind": "comparison",
            "task_id": f"oa-{part}",
            "prompt": prompt,
            "candidates": [{"id": str(r["message_id"]), "content": r["text"], "model": r.get("model_name") or "human"} for r in ranked],
            "ranking": [groups[rank] for rank in sorted(groups)],
            "ratings": ratings,
            "flags": flags,
        })
    best = {id(r) for r in _oa_best(good)} if on_best else set()
    for reply in good:
        reply_id = str(reply.get("message_id"))
        context = prompt + [{"role": "assistant", "content": reply["text"]}]
        below = [False]
        for child in reply.get("replies") or []:
            if isinstance(child, dict):
                yield from _oa_walk(child, context, tree_id, line, raw, id(reply) in best, below)
        if id(reply) in best:
            found[0] = True
            if not below[0]:  # the path ends here (or goes on only through set-aside messages)
                yield Item(line=line, raw=raw, part=f"{tree_id}/{reply_id}", record={
                    "kind": "demonstration",
                    "prompt": prompt,
                    "reply": reply["text"],
                    "labeler": {"id": str(reply["user_id"]), "pool": "oasst"} if reply.get("user_id") else None,
                })
        elif len(ranked) < 2 or not isinstance(reply.get("rank"), int):  # in no comparison, on no best path
            if not isinstance(reply.get("rank"), int) and len(good) > 1:
                reason, detail = "unranked", f"message {reply_id}: one of {len(good)} sibling replies without a rank, so none is the best"
            else:
                reason, detail = "not_best_ranked", f"message {reply_id}: its path goes through a reply that was not the best-ranked"
            yield _reject(line, raw, reason, detail, part=reply_id)


# ---------------------------------------------------------------------------------------------
# Label Studio

_RANK_BUCKET = re.compile(r"^rank[_-]?(\d+)$")


# Free text: which text box holds the reply, which hold a comment, and where a rewrite's original is.
# Names are matched exactly (a LabelQuestion named `response_quality` is not a reply).
REWRITE_NAMES = ("rewrite", "rewritten", "corrected", "correction", "corrected_response", "corrected_reply",
                 "rewritten_response", "improved_response", "better_response", "ideal_response")
REPLY_NAMES = ("reply", *REWRITE_NAMES, "response", "answer", "demonstration", "completion", "output")
RATIONALE_NAMES = {"rationale", "feedback", "comment", "comments", "explanation", "justification", "notes"}
ORIGINAL_KEYS = ("original", "response", "reply", "answer", "completion", "output")
WRITING_MODES = ("demonstration", "rewrite")


def _ls_prompt(data: dict) -> list[dict] | None:
    """The prompt conversation of a task / record: `prompt`, `question` or `instruction` (a string
    or a list of messages); a non-empty `context` or `input` string is appended to a string prompt
    (Argilla's SFT template, Alpaca)."""
    prompt = data.get("prompt", data.get("question", data.get("instruction")))
    if isinstance(prompt, str):
        context = data.get("context", data.get("input"))
        if isinstance(context, str) and context.strip():
            prompt = f"{prompt}\n\n{context}"
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        return [{"role": m.get("role"), "content": m.get("content")} for m in prompt]
    return None


_PAIR_KEYS = [("text1", "text2"), ("answer1", "answer2"), ("response_a", "response_b"), ("reply_a", "reply_b"), ("left", "right")]


def _ls_candidates(data: dict) -> list[dict] | None:
    models = data.get("candidate_models") or {}
    if isinstance(data.get("candidates"), list):
        out = []
        for item in data["candidates"]:
            if not isinstance(item, dict) or "id" not in item:
                return None
            cid = str(item["id"])
            content = item.get("body", item.get("text", item.get("content")))
            out.append({"id": cid, "content": content, "model": item.get("model", models.get(cid))})
        return out
    for left, right in _PAIR_KEYS:
        if left in data and right in data:
            return [{"id": left, "content": data[left], "model": models.get(left)},
                    {"id": right, "content": data[right], "model": models.get(right)}]
    return None


def _ls_labeler(annotation: dict) -> dict | None:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        email = who.get("email")
        ident = email.removesuffix(LS_EMAIL_DOMAIN) if isinstance(email, str) and email else who.get("id")
    else:
        ident = who
    return None if ident is None else {"id": str(ident)}


LS_EMAIL_DOMAIN = "@labelers.local"


def _ls_ranker_groups(value: dict, from_name: str) -> list[list[str]] | None:
    ranker = value.get("ranker")
    if isinstance(ranker, list):  # a bare list of ids in order
        return [[str(x)] for x in ranker]
    if not isinstance(ranker, dict):
        return None
    buckets = {k: v for k, v in ranker.items() if k != "_" and isinstance(v, list)}
    if list(buckets) == [from_name] or (len(buckets) == 1 and not _RANK_BUCKET.match(next(iter(buckets)))):
        return [[str(x)] for x in next(iter(buckets.values()))]  # List + Ranker without buckets: a strict order
    if ranker.get("_"):
        return None  # items left unsorted in the default column: an incomplete ranking
    names = list(buckets)
    if all(_RANK_BUCKET.match(n) for n in names):
        names.sort(key=lambda n: int(_RANK_BUCKET.match(n).group(1)))
    return [[str(x) for x in buckets[n]] for n in names if buckets[n]]


def _ls_judgment(data: dict, candidates: list[dict], annotation: dict) -> tuple[dict | None, str, str]:
    """(fields of a comparison from one annotation, or None with reason and detail)."""
    ids = [c["id"] for c in candidates]
    ranking, ratings, flags, rationale = None, {}, {}, None
    for result in annotation.get("result") or []:
        if not isinstance(result, dict):
            continue
        kind, name, value = result.get("type"), str(result.get("from_name", "")), result.get("value") or {}
        if kind == "ranker":
            ranking = _ls_ranker_groups(value, name)
            if ranking is None:
                return None, "rank_mismatch", "the ranker result leaves replies unsorted"
        elif kind == "pairwise":
            selected = value.get("selected")
            if len(ids) != 2 or selected not in ("left", "right"):
                return None, "rank_mismatch", f"pairwise selection {selected!r} over {len(ids)} replies"
            ranking = [[ids[0]], [ids[1]]] if selected == "left" else [[ids[1]], [ids[0]]]
        elif kind == "choices" and name.startswith("flags_"):
            flags[name.removeprefix("flags_")] = list(value.get("choices") or [])
        elif kind == "choices" and name in ("preference", "winner", "pairwise", "choice"):
            choice = str((value.get("choices") or [""])[0]).strip().lower()
            if len(ids) != 2:
                return None, "rank_mismatch", f"a two-way choice over {len(ids)} replies"
            if choice in ("tie", "equal", "same", "both"):
                ranking = [list(ids)]
            elif choice in ("a", "left", "1", "reply a", ids[0].lower()):
                ranking = [[ids[0]], [ids[1]]]
            elif choice in ("b", "right", "2", "reply b", ids[1].lower()):
                ranking = [[ids[1]], [ids[0]]]
            else:
                return None, "rank_mismatch", f"unknown choice {choice!r}"
        elif kind == "rating":
            cid = max((c for c in ids if name.endswith("_" + c)), key=len, default=None)
            if cid is not None and len(name) > len(cid) + 1:
                ratings.setdefault(cid, {})[name[: -len(cid) - 1]] = value.get("rating")
        elif kind == "textarea" and name == "rationale":
            rationale = "\n".join(value.get("text") or []) or None
    if ranking is None:
        return None, "unranked", "no ranker, pairwise or preference result in the annotation"
    return {"ranking": ranking, "ratings": ratings, "flags": flags, "rationale": rationale}, "", ""


def _pick_reply(texts: dict[str, str]) -> tuple[str | None, str, str]:
    """(name of the text box holding the reply, or None with reason and detail)."""
    for name in REPLY_NAMES:
        if name in texts:
            return name, "", ""
    if len(texts) == 1:
        return next(iter(texts)), "", ""
    if not texts:
        return None, "missing_field", "no written reply (a TextArea result) in the annotation"
    return None, "unsupported_shape", f"several text boxes {sorted(texts)} and none is named one of {', '.join(REPLY_NAMES[:3])}, ..."


def _writing_record(mode: str | None, reply_name: str, reply: str, flags: list | None, source: dict) -> tuple[dict | None, str, str]:
    """The fields of a demonstration or rewrite. `mode` None: a rewrite when `source` has an
    `original`, or when the reply box is named like a rewrite and `source` holds exactly one reply
    (`response`, `answer`, ...) to be the original; otherwise a demonstration."""
    original = source.get("original")
    if mode is None:
        if isinstance(original, str):
            mode = "rewrite"
        elif reply_name in REWRITE_NAMES:
            shown = [k for k in ORIGINAL_KEYS if isinstance(source.get(k), str) and k != reply_name]
            if len(shown) == 1:
                mode, original = "rewrite", source[shown[0]]
        mode = mode or "demonstration"
    if mode == "demonstration":
        return {"kind": "demonstration", "reply": reply}, "", ""
    if not isinstance(original, str):
        return None, "missing_field", "a rewrite task without the original reply"
    return {"kind": "rewrite", "reply": reply, "original": original, "original_model": source.get("original_model"),
            "flags": list(flags or [])}, "", ""


def _ls_writing(mode: str | None, source: dict, annotation: dict) -> tuple[dict | None, str, str]:
    """(demonstration / rewrite fields from one free-text annotation, or None with reason and detail)."""
    texts: dict[str, str] = {}
    flags = None
    for result in annotation.get("result") or []:
        if not isinstance(result, dict):
            continue
        kind, name, value = result.get("type"), str(result.get("from_name", "")), result.get("value") or {}
        if kind == "textarea" and name not in RATIONALE_NAMES:
            text = value.get("text")
            text = [text] if isinstance(text, str) else text
            if not isinstance(text, list) or not all(isinstance(t, str) for t in text):
                return None, "invalid_field", f"textarea {name!r}: value.text must be a list of strings"
            texts[name] = "\n".join(text)  # one entry per submission; a reply box allows one
        elif kind == "choices" and name == "flags":
            flags = list(value.get("choices") or [])
    name, reason, detail = _pick_reply(texts)
    if name is None:
        return None, reason, detail
    return _writing_record(mode, name, texts[name], flags, source)


def _ls_task_content(data: dict, task_id: str, tasks: dict[str, dict] | None) -> tuple | None:
    """(prompt, candidates, gold ranking, writing) of one task: from `tasks` when given (None when the task is not
    in it), else from the task's data. `writing` is the dict a free-text task's mode and original are read from
    (None for a task with candidates); such a task has no candidates."""
    if tasks is not None:
        known = tasks.get(task_id)
        if known is None:
            return None
        writing = known if known.get("kind") == "writing_task" else None
        return known["prompt"], None if writing else known["candidates"], known.get("gold_ranking"), writing
    writing = data if data.get("task_kind") in WRITING_MODES else None
    prompt, candidates, gold = _ls_prompt(data), None if writing else _ls_candidates(data), data.get("gold_ranking")
    if candidates is None and writing is None:
        writing = data  # no replies to rank: a free-text task (an LLM fine-tuning template)
    return prompt, candidates, gold, writing


def _ls_writing_items(index: int, raw: bytes, annotations: list[dict], data: dict, task_id: str, prompt: list[dict],
                      writing: dict) -> Iterator[Item]:
    """One demonstration or rewrite per annotation of a free-text task (a skipped or unreadable one set aside)."""
    mode = writing.get("mode", writing.get("task_kind"))
    for annotation in annotations:
        part = str(annotation.get("id"))
        if annotation.get("was_cancelled"):
            yield _reject(index, raw, "status_cancelled", "the labeler skipped the task", part=part)
            continue
        fields, reason, detail = _ls_writing(mode if mode in WRITING_MODES else None, writing, annotation)
        if fields is None:
            yield _reject(index, raw, reason, detail, part=part)
            continue
        yield Item(line=index, raw=raw, part=part, record={
            "task_id": task_id, "prompt": prompt, "labeler": _ls_labeler(annotation),
            "guideline_version": writing.get("guideline_version", data.get("guideline_version")),
            "time_spent_s": annotation.get("lead_time"), **fields})


def _ls_comparison_items(index: int, raw: bytes, annotations: list[dict], data: dict, task_id: str, prompt: list[dict],
                         candidates: list[dict], gold: list[list[str]] | None) -> Iterator[Item]:
    """One comparison per annotation of a task with candidates (a skipped or unranked one set aside)."""
    for annotation in annotations:
        part = str(annotation.get("id"))
        if annotation.get("was_cancelled"):
            yield _reject(index, raw, "status_cancelled", "the labeler skipped the task", part=part)
            continue
        fields, reason, detail = _ls_judgment(data, candidates, annotation)
        if fields is None:
            yield _reject(index, raw, reason, detail, part=part)
            continue
        yield Item(line=index, raw=raw, part=part, record={
            "kind": "comparison",
            "task_id": task_id,
            "prompt": prompt,
            "candidates": candidates,
            "display_order": [c["id"] for c in candidates],
            "labeler": _ls_labeler(annotation),
            "guideline_version": data.get("guideline_version"),
            "time_spent_s": annotation.get("lead_time"),
            "gold": gold is not None,
            "gold_ranking": gold,
            **fields,
        })


def read_label_studio(path: Path, tasks: dict[str, dict] | None = None) -> Iterator[Item]:
    """One Item per annotation (a task without annotations is one `no_annotation` item).

    A task with candidates (ranker, pairwise, preference choices) gives comparisons; a task without
    (or one written by `labels tasks --kind demonstration|rewrite`, whose data has `task_kind`)
    gives a demonstration or rewrite from the annotation's TextArea.
    `tasks` (task id -> native task dict, from tasks.jsonl) makes the task file authoritative for
    the prompt, candidates, original and models; an annotation of a task not in it is `unknown_task`."""
    for index, raw, task, bad in iter_json_elements(path):
        if bad:
            yield bad
            continue
        data = task.get("data")
        if not isinstance(data, dict):
            yield _reject(index, raw, "missing_field", "the task has no `data` object")
            continue
        annotations = [a for a in task.get("annotations") or task.get("completions") or [] if isinstance(a, dict)]
        # a draft (saved in the editor, never submitted; the API's export lists them under `drafts`) is
        # on file as one unit set aside, not a judgment
        drafts = [d for d in task.get("drafts") or [] if isinstance(d, (dict, int)) and not isinstance(d, bool)]
        for draft in drafts:
            ident = draft.get("id") if isinstance(draft, dict) else draft
            yield _reject(index, raw, "status_draft", "a draft the labeler saved but did not submit does not count",
                          part=f"draft-{ident}")
        if not annotations:
            if not drafts:
                yield _reject(index, raw, "no_annotation", "the task was not annotated")
            continue
        task_id = str(data.get("task_id") or f"ls-{task.get('id')}")
        content = _ls_task_content(data, task_id, tasks)
        if content is None:
            for annotation in annotations:
                yield _reject(index, raw, "unknown_task", f"task id {task_id} is not in the tasks file", part=str(annotation.get("id")))
            continue
        prompt, candidates, gold, writing = content
        if writing is not None and prompt is not None:
            yield from _ls_writing_items(index, raw, annotations, data, task_id, prompt, writing)
        elif prompt is None or candidates is None:
            for annotation in annotations:
                what = "prompt" if prompt is None else "candidates"
                yield _reject(index, raw, "missing_field", f"cannot find the {what} in the task data", part=str(annotation.get("id")))
        else:
            yield from _ls_comparison_items(index, raw, annotations, data, task_id, prompt, candidates, gold)


# ---------------------------------------------------------------------------------------------
# Argilla

_CANDIDATE_FIELD = re.compile(r"^(response|reply|answer|completion|candidate|generation|output)[_-]?\w*$")


def _argilla_responses(record: dict) -> list[dict] | None:
    """Normalise to [{"user_id", "status", "values": {question: value}}], one per user."""
    responses = record.get("responses")
    if isinstance(responses, list):  # v1 FeedbackDataset
        out = []
        for r in responses:
            if isinstance(r, dict):
                values = {q: (v.get("value") if isinstance(v, dict) else v) for q, v in (r.get("values") or {}).items()}
                out.append({"user_id": r.get("user_id"), "status": r.get("status", "submitted"), "values": values})
        return out
    per_user: dict[str, dict] = {}
    if isinstance(responses, dict):  # v2, to_list(flatten=False)
        # The argilla SDK's own nested export (records.to_json, to_list(flatten=False), to_disk) writes each
        # response as {value, user_id} with no status: a draft or a discarded response cannot be told from a
        # submitted one there, so such a response is set aside (`status_unknown`), never taken as a judgment.
        for question, answers in responses.items():
            for answer in answers or []:
                if isinstance(answer, dict):
                    user = str(answer.get("user_id"))
                    status = answer.get("status") or "unknown"
                    slot = per_user.setdefault(user, {"user_id": user, "status": status, "values": {}})
                    slot["values"][question] = answer.get("value")
                    if status != "submitted":
                        slot["status"] = status
        return list(per_user.values())
    flat = [k[: -len(".responses")] for k in record if k.endswith(".responses")]  # v2, flatten=True
    if not flat:
        return None
    for question in flat:
        values = record.get(f"{question}.responses") or []
        users = record.get(f"{question}.responses.users") or [None] * len(values)
        statuses = record.get(f"{question}.responses.status") or ["submitted"] * len(values)
        for value, user, status in zip(values, users, statuses):
            slot = per_user.setdefault(str(user), {"user_id": str(user), "status": status, "values": {}})
            slot["values"][question] = value
            if status != "submitted":
                slot["status"] = status
    return list(per_user.values())


def _argilla_ranking(value: Any, ids: list[str]) -> list[list[str]] | None:
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, str) for v in value):
        return [[v] for v in value]
    if all(isinstance(v, dict) and "value" in v for v in value):
        groups: dict[int, list[str]] = {}
        for v in value:
            rank = v.get("rank")
            if not isinstance(rank, int):
                return None
            groups.setdefault(rank, []).append(str(v["value"]))
        return [groups[r] for r in sorted(groups)]
    return None


def _argilla_answers(response: dict, ids: list[str]) -> tuple[dict | None, str, str]:
    """What one user answered: {"ranking", "ratings", "rationale", "reply": (question, text), "flags"}."""
    out = {"ranking": None, "ratings": {}, "rationale": None, "reply": None, "flags": None}
    texts = {}
    for question, value in response["values"].items():
        if question.startswith("flag"):  # a MultiLabelQuestion of flags (for a rewrite: of the original)
            out["flags"] = list(value) if isinstance(value, list) else [value]
        elif isinstance(value, list):
            out["ranking"] = _argilla_ranking(value, ids)
            if out["ranking"] is None:
                return None, "unranked", f"question {question!r}: not a ranking of the responses"
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            cid = next((c for c in ids if c in question), None)
            scale = question.replace(cid, "").strip("_-") if cid else question
            if cid:
                out["ratings"].setdefault(cid, {})[scale if scale not in ("", "rating", "score") else "overall"] = value
        elif isinstance(value, str) and question in RATIONALE_NAMES:
            out["rationale"] = value
        elif isinstance(value, str) and question in REPLY_NAMES:  # a TextQuestion: the labeler's reply
            texts[question] = value
    if texts:
        name, _, _ = _pick_reply(texts)
        out["reply"] = (name, texts[name])
    return out, "", ""


def read_argilla(path: Path) -> Iterator[Item]:
    """One Item per user response of a record (a record without responses is `no_annotation`).

    A ranking question over two or more response fields gives a comparison; a TextQuestion answer
    (question named `response`, `reply`, `answer`, `rewrite`, `corrected_response`, ...) gives a
    rewrite when the record shows exactly one response field (the original), else a demonstration."""
    for index, raw, record, bad in iter_json_elements(path):
        if bad:
            yield bad
            continue
        fields = record.get("fields") if isinstance(record.get("fields"), dict) else record
        # the flat export (to_list(flatten=True)) spreads metadata over the record, beside the fields
        metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else record
        prompt = _ls_prompt(fields)
        if prompt is None:
            yield _reject(index, raw, "missing_field", "a record needs a prompt field (`prompt`, `question` or `instruction`)")
            continue
        ids = sorted(k for k, v in fields.items() if _CANDIDATE_FIELD.match(k) and isinstance(v, str))
        models = metadata.get("models") if isinstance(metadata.get("models"), dict) else {}
        candidates = [{"id": cid, "content": fields[cid], "model": models.get(cid, metadata.get(f"model_{cid}"))} for cid in ids]
        responses = _argilla_responses(record)
        if not responses:
            yield _reject(index, raw, "no_annotation", "the record has no responses")
            continue
        record_id = str(record.get("id") or record.get("external_id") or index)
        common = {"task_id": str(metadata.get("task_id") or record_id), "prompt": prompt,
                  "guideline_version": metadata.get("guideline_version")}
        for response in responses:
            part = f"{record_id}/{response['user_id']}"
            status = response.get("status") or "submitted"
            if status == "unknown":
                yield _reject(index, raw, "status_unknown", "the export does not say whether this response was submitted "
                              "(argilla's nested records.to_json / to_list(flatten=False) leave the status out): export "
                              "with records.to_list(flatten=True), which keeps it", part=part)
                continue
            if status != "submitted":
                yield _reject(index, raw, f"status_{status}", f"a {status} response does not count", part=part)
                continue
            answers, reason, detail = _argilla_answers(response, ids)
            if answers is None:
                yield _reject(index, raw, reason, detail, part=part)
                continue
            labeler = {"id": str(response["user_id"])}
            if answers["ranking"] is not None and len(ids) >= 2:
                yield Item(line=index, raw=raw, part=part, record={
                    "kind": "comparison", **common, "labeler": labeler,
                    "candidates": candidates,
                    "display_order": ids,
                    "ranking": answers["ranking"],
                    "ratings": answers["ratings"],
                    "rationale": answers["rationale"],
                })
                continue
            if answers["reply"] is not None:
                name, text = answers["reply"]
                shown = {"original": fields[ids[0]], "original_model": candidates[0]["model"]} if len(ids) == 1 else {}
                fields_out, reason, detail = _writing_record("rewrite" if shown else "demonstration", name, text, answers["flags"], shown)
                yield Item(line=index, raw=raw, part=part, record={**common, "labeler": labeler, **fields_out})
                continue
            if len(ids) < 2:
                yield _reject(index, raw, "missing_field", "no written reply, and fewer than two response fields to rank", part=part)
            else:
                yield _reject(index, raw, "unranked", "no readable ranking question in the response", part=part)


@dataclass(frozen=True)
class Reader:
    """A labeler export format: its reader, and what its records can give a run (`sft`: demonstrations and
    rewrites; `comparisons`). hh-rlhf gives SFT rows only when asked (`hh_demonstrations`)."""

    read: Callable[..., Iterator[Item]]
    yields: frozenset[str]

    def __call__(self, path: Path, **kwargs) -> Iterator[Item]:
        return self.read(path, **kwargs)


READERS: dict[str, Reader] = {
    "native": Reader(read_native, frozenset({"sft", "comparisons"})),
    "hh-rlhf": Reader(read_hh, frozenset({"comparisons"})),
    "oasst": Reader(read_oasst, frozenset({"sft", "comparisons"})),
    "label-studio": Reader(read_label_studio, frozenset({"sft", "comparisons"})),
    "argilla": Reader(read_argilla, frozenset({"sft", "comparisons"})),
}
"""The one list of labeler export formats: every other place (the CLI, the recipe schema, preflight) reads it."""
FORMATS = tuple(READERS)
