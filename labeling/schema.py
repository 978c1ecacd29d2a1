"""The labeling schema: typed records for human data, versioned, exported as JSON Schema.

Three judgment records (a `Record` is one of them, told apart by `kind`):
- `Demonstration`: a prompt conversation and the reply a labeler wrote (feeds SFT);
- `Rewrite`: a reply that misbehaved and the labeler's corrected reply (feeds SFT);
- `Comparison`: K >= 2 candidate replies ranked best-first with ties, optional ratings and flags
  (feeds the reward model).
`ComparisonTask` is what goes out to labelers for ranking (a prompt + K candidates + a stable task
id); `WritingTask` is a free-text task (write the reply to a prompt, or rewrite one that misbehaved).

Every record carries its `provenance`: the source format, file, line (or element index for a
one-document format) and the sha256 of the raw bytes it came from.

Regenerate the checked-in JSON Schema after changing a model:
    python -m labeling.schema > labeling/schema.json
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path
from typing import Annotated, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

SCHEMA_VERSION = "1.0"
GUIDELINES_PATH = Path(__file__).with_name("guidelines.md")
SCHEMA_PATH = Path(__file__).with_name("schema.json")

Role = Literal["system", "user", "assistant"]
Status = Literal["submitted", "draft", "discarded", "cancelled"]

# Per-reply flags, after the metadata InstructGPT's labelers recorded for each output.
Flag = Literal[
    "fails_to_follow_instruction",
    "hallucination",
    "harmful",
    "inappropriate_for_assistant",
    "sexual_content",
    "violent_content",
    "encourages_violence",
    "denigrates_protected_class",
    "gives_harmful_advice",
    "expresses_opinion",
    "expresses_moral_judgment",
    "contains_pii",
    "spam",
    "wrong_language",
]
FLAGS: tuple[str, ...] = Flag.__args__  # type: ignore[attr-defined]


def guideline_version() -> str:
    """The version id in the first `guideline-version:` line of labeling/guidelines.md."""
    for line in GUIDELINES_PATH.read_text(encoding="utf-8").splitlines():
        if line.lower().startswith("guideline-version:"):
            return line.split(":", 1)[1].strip()
    raise ValueError(f"{GUIDELINES_PATH} has no 'guideline-version:' line")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Message(_Strict):
    """One turn of a conversation."""

    role: Role
    content: str


class Provenance(_Strict):
    """Where a record was read from, so every record traces back to its source bytes."""

    source_format: str = Field(description="Reader that produced the record: native, hh-rlhf, oasst, label-studio, argilla.")
    file: str = Field(description="Path of the input file as given to ingest.")
    line: int = Field(description="1-based line for line formats; 1-based element index for one-document (JSON array) formats.")
    sha256: str = Field(description="sha256 of the raw line (or of the element's canonical JSON).")
    part: str | None = Field(default=None, description="Which part of the source unit, when one unit yields several records (e.g. an annotation id, an OA message id).")


class Labeler(_Strict):
    """Who made a judgment."""

    id: str
    pool: str | None = Field(default=None, description="The labeler pool / vendor / team.")


class Candidate(_Strict):
    """One reply shown to a labeler. `id` is unique within its comparison."""

    id: str
    content: str
    model: str | None = Field(default=None, description="The model (or 'human') that wrote the reply, when known.")


def _prompt_ok(prompt: list[Message]) -> list[Message]:
    if not prompt:
        raise ValueError("the prompt conversation is empty")
    if prompt[-1].role != "user":
        raise ValueError("the prompt conversation must end with a user turn")
    return prompt


class _Judgment(_Strict):
    schema_version: str = SCHEMA_VERSION
    id: str = Field(default="", description="Stable record id (sha256 of the content); filled in by ingest when empty.")
    task_id: str | None = Field(default=None, description="The comparison task this judgment answers, when it came from a task.")
    prompt: list[Message] = Field(description="The conversation so far; ends with a user turn.")
    labeler: Labeler | None = None
    guideline_version: str | None = Field(default=None, description="Version id of labeling/guidelines.md the labeler followed.")
    status: Status = "submitted"
    time_spent_s: float | None = Field(default=None, ge=0)
    provenance: Provenance | None = None

    @field_validator("prompt")
    @classmethod
    def check_prompt(cls, prompt: list[Message]) -> list[Message]:
        return _prompt_ok(prompt)


class Demonstration(_Judgment):
    """A prompt and the reply a labeler wrote for it."""

    kind: Literal["demonstration"] = "demonstration"
    reply: str = Field(min_length=1)


class Rewrite(_Judgment):
    """A reply that misbehaved and the labeler's corrected reply."""

    kind: Literal["rewrite"] = "rewrite"
    original: str = Field(description="The assistant reply that misbehaved.")
    original_model: str | None = None
    reply: str = Field(min_length=1, description="The corrected reply.")
    flags: list[Flag] = Field(default_factory=list, description="What was wrong with the original.")


class Comparison(_Judgment):
    """K >= 2 candidates ranked best-first; candidates in the same group are tied."""

    kind: Literal["comparison"] = "comparison"
    candidates: list[Candidate] = Field(min_length=2)
    ranking: list[list[str]] = Field(description="Tie groups of candidate ids, best group first.")
    ratings: dict[str, dict[str, float]] = Field(default_factory=dict, description="candidate id -> scale name -> value (e.g. overall 1-7).")
    flags: dict[str, list[Flag]] = Field(default_factory=dict, description="candidate id -> flags.")
    display_order: list[str] | None = Field(default=None, description="Candidate ids in the order the labeler saw them, when known (position bias is measured on it).")
    rationale: str | None = None
    gold: bool = Field(default=False, description="A judgment on a control task (a known-answer item used to check labelers); never training data.")
    gold_ranking: list[list[str]] | None = Field(default=None, description="The known answer of a control task (from tasks.jsonl at ingest).")

    @model_validator(mode="after")
    def _ranks_match_candidates(self) -> "Comparison":
        ids = [c.id for c in self.candidates]
        if len(set(ids)) != len(ids):
            raise ValueError("candidate ids are not unique")
        for name, ranking in (("ranking", self.ranking), ("gold_ranking", self.gold_ranking)):
            if ranking is None:
                continue
            ranked = [cid for group in ranking for cid in group]
            if any(not group for group in ranking) or sorted(ranked) != sorted(ids):
                raise ValueError(f"rank mismatch: {name} {ranking} does not rank each of the candidates {ids} exactly once")
        if self.display_order is not None and sorted(self.display_order) != sorted(ids):
            raise ValueError(f"rank mismatch: display_order {self.display_order} is not the candidates {ids}")
        for name, per in (("ratings", self.ratings), ("flags", self.flags)):
            unknown = set(per) - set(ids)
            if unknown:
                raise ValueError(f"rank mismatch: {name} name unknown candidates {sorted(unknown)}")
        return self


class ComparisonTask(_Strict):
    """A comparison task sent to labelers: a prompt and K candidates, with a stable id."""

    kind: Literal["task"] = "task"
    schema_version: str = SCHEMA_VERSION
    task_id: str = Field(default="", description="Stable id: derived from the prompt and candidates when empty.")
    prompt: list[Message]
    candidates: list[Candidate] = Field(min_length=2)
    guideline_version: str | None = None
    gold_ranking: list[list[str]] | None = Field(default=None, description="A control task's known answer (tie groups, best first): kept in tasks.jsonl, never in the Label Studio task data.")

    @field_validator("prompt")
    @classmethod
    def check_prompt(cls, prompt: list[Message]) -> list[Message]:
        return _prompt_ok(prompt)

    @model_validator(mode="after")
    def _fill_id(self) -> "ComparisonTask":
        ids = [c.id for c in self.candidates]
        if len(set(ids)) != len(ids):
            raise ValueError("candidate ids are not unique")
        if not self.task_id:
            object.__setattr__(self, "task_id", task_id_for(self.prompt, self.candidates))
        return self


class WritingTask(_Strict):
    """A free-text task sent to labelers: write the assistant's reply to a prompt (`demonstration`),
    or correct a reply that misbehaved (`rewrite`: the `original` is shown next to the text box)."""

    kind: Literal["writing_task"] = "writing_task"
    schema_version: str = SCHEMA_VERSION
    task_id: str = Field(default="", description="Stable id: derived from the mode, prompt and original when empty.")
    mode: Literal["demonstration", "rewrite"]
    prompt: list[Message]
    original: str | None = Field(default=None, description="rewrite: the reply to correct (required); demonstration: none.")
    original_model: str | None = Field(default=None, description="The model (checkpoint) that wrote the original.")
    original_flags: list[Flag] = Field(default_factory=list, description="What an evaluation flagged in the original, when known.")
    score: float | None = Field(default=None, description="The reward / score that selected the original (lower is worse).")
    guideline_version: str | None = None

    @field_validator("prompt")
    @classmethod
    def check_prompt(cls, prompt: list[Message]) -> list[Message]:
        return _prompt_ok(prompt)

    @model_validator(mode="after")
    def _original_and_id(self) -> "WritingTask":
        has_original = bool(self.original and self.original.strip())
        if self.mode == "rewrite" and not has_original:
            raise ValueError("a rewrite task needs the original reply")
        if self.mode == "demonstration" and self.original is not None:
            raise ValueError("a demonstration task has no original reply (use mode rewrite)")
        if not self.task_id:
            body = {"mode": self.mode, "prompt": [m.model_dump() for m in self.prompt], "original": self.original}
            object.__setattr__(self, "task_id", "w-" + hashlib.sha256(_canonical(body)).hexdigest()[:16])
        return self


Record = Annotated[Union[Demonstration, Rewrite, Comparison], Field(discriminator="kind")]
RECORD_ADAPTER: TypeAdapter = TypeAdapter(Record)


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def prompt_key(prompt: list[Message] | list[dict]) -> str:
    """A digest of a prompt conversation."""
    turns = [m.model_dump() if isinstance(m, BaseModel) else {"role": m["role"], "content": m["content"]} for m in prompt]
    return hashlib.sha256(_canonical(turns)).hexdigest()


def split_key(prompt: list[Message] | list[dict]) -> str:
    """What dataset splits are keyed on: the conversation's opening user turn.

    Every turn of one conversation, and every record about the same opening question (a follow-up
    deep in an OpenAssistant tree, a comparison at its root), gets the same key, so no eval prompt
    shows up in train, not even as the history of a longer conversation. The key is `prompt_key` of
    that one turn, so a single-turn prompt keeps the key (and the split) it always had."""
    for message in prompt:
        role, content = (message.role, message.content) if isinstance(message, BaseModel) else (message["role"], message["content"])
        if role == "user":
            return prompt_key([{"role": "user", "content": content}])
    return prompt_key(prompt)


def task_id_for(prompt: list[Message], candidates: list[Candidate]) -> str:
    """Stable task id: the same prompt and candidates always give the same id."""
    body = {"prompt": [m.model_dump() for m in prompt], "candidates": [[c.id, c.content] for c in candidates]}
    return "t-" + hashlib.sha256(_canonical(body)).hexdigest()[:16]


def content_id(record: Demonstration | Rewrite | Comparison) -> str:
    """sha256 of what a record says (not where it was read): equal for duplicates."""
    # pydantic serialises fields in declaration order, so the JSON is canonical for a given schema
    body = record.model_dump_json(exclude={"id", "provenance", "time_spent_s", "schema_version"})
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def json_schema() -> dict:
    """The JSON Schema of every record type, as checked in at labeling/schema.json."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "chatsmith labeling records",
        "version": SCHEMA_VERSION,
        "record": RECORD_ADAPTER.json_schema(),
        "task": ComparisonTask.model_json_schema(),
        "writing_task": WritingTask.model_json_schema(),
    }


def main() -> None:
    print(json.dumps(json_schema(), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()


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
