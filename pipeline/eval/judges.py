"""Judges: what decides how good a reply is, in one shape for every consumer.

    judge(rows, replies) -> [{"score": float, "criteria": {name: float}, "flags": {name: value}}, ...]

A judge has a `name` and a `version` and maps a batch of (prompt row, reply) to verdicts: `score` is what
rankings, monitors and CIs use; `criteria` are the named parts the score is made of; `flags` are facts about the
reply that are not in the score (hedged, rude, ...). The run's evaluation, PPO's monitor and `select_best`, the
arena and `chatsmith labels tasks --from-eval` all take judges in this shape.

Two implementations: `RewardModelJudge` (any run: a reward-model checkpoint's score) and the demo world's gold
judge (`pipeline.demo.judge`, handed in by the demo). `PairwiseJudge` turns any of them into the arena's
pairwise verdict ("a", "b" or "tie").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Protocol, Sequence

Verdict = dict
"""`{"score": float, "criteria": {...}, "flags": {...}}`."""


class Judge(Protocol):
    name: str
    version: str

    def __call__(self, rows: Sequence[Mapping], replies: Sequence[str]) -> list[Verdict]: ...


def verdict(score: float, criteria: Mapping | None = None, flags: Mapping | None = None) -> Verdict:
    return {"score": float(score), "criteria": dict(criteria or {}), "flags": dict(flags or {})}


def flat(verdict: Verdict) -> dict:
    """`score`, then every criterion, then every flag, in one mapping: the names eval.json's
    `<judge>_<name>_<decoding>` keys are made of."""
    return {"score": verdict["score"], **verdict.get("criteria", {}), **verdict.get("flags", {})}


class JudgeError(ValueError):
    """A judge that cannot be used (not a reward model, ...): one line, naming the path."""


class RewardModelJudge:
    """A reward-model checkpoint as a judge: the conversation (prompt + the reply as the assistant's turn) rendered
    with its chat template, or for a plain-text model its prompt text followed by the reply and its EOS (as PPO's
    rollouts of a plain-text policy are scored), read at the last token as the reward stage trained it.
    Verdict: `score` = the raw reward; no criteria. The model is loaded on first use (or `attach`ed: a stage
    that already holds it passes its own copy)."""

    version = "1"

    def __init__(self, reward_dir: str | Path, *, name: str = "reward", batch_size: int = 32,
                 trust_remote_code: bool = False):
        self.reward_dir = Path(reward_dir)
        if not (self.reward_dir / "config.json").exists():
            raise JudgeError(f"{self.reward_dir}: not a checkpoint directory (no config.json)")
        self.name, self.batch_size, self.trust_remote_code = name, batch_size, trust_remote_code
        self._model = self._tokenizer = None

    def attach(self, model, tokenizer) -> None:
        """Use a copy of this reward model that the caller already loaded (PPO's own)."""
        self._model, self._tokenizer = model, tokenizer

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForSequenceClassification

            from stages.common import load_chat_tokenizer

            tokenizer, _ = load_chat_tokenizer(self.reward_dir, where=f"reward model {self.reward_dir}",
                                               trust_remote_code=self.trust_remote_code, plain_text=True)
            model = AutoModelForSequenceClassification.from_pretrained(str(self.reward_dir),
                                                                       trust_remote_code=self.trust_remote_code)
            if model.config.num_labels != 1:
                raise JudgeError(f"{self.reward_dir}: a reward model has num_labels=1, this one has {model.config.num_labels}")
            self._model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval().requires_grad_(False)
            self._tokenizer = tokenizer
        return self._model, self._tokenizer

    def __call__(self, rows: Sequence[Mapping], replies: Sequence[str]) -> list[Verdict]:
        from stages.common import prompt_messages
        from stages.rlhf.reward import score

        model, tokenizer = self._load()
        conversations = [prompt_messages(dict(r)) + [{"role": "assistant", "content": reply}] for r, reply in zip(rows, replies)]
        return [verdict(s) for s in score(model, tokenizer, conversations, batch_size=self.batch_size)]


# ------------------------------------------------------------------------------------------ pairwise

PAIRWISE_VERDICTS = ("a", "b", "tie")


def row_key(row: Mapping) -> str:
    from stages.common import prompt_messages

    return json.dumps(prompt_messages(dict(row)), sort_keys=True, ensure_ascii=False)


class PairwiseJudge:
    """A pointwise judge as the arena's pairwise one: `judge(row, answer_a, answer_b)` -> "a" | "b" | "tie". Each
    distinct (prompt, answer) is scored once (`prepare` scores a batch); the higher score wins, a tie when the scores
    are equal or closer than `margin`. Blind to position by construction."""

    def __init__(self, judge: Judge, *, margin: float = 0.0, name: str | None = None):
        if margin < 0:
            raise ValueError("margin must be >= 0")
        self.judge, self.margin = judge, margin
        self.name = name or judge.name
        self.cache: dict[tuple[str, str], float] = {}
        self.scored = 0  # answers actually scored (each distinct (prompt, answer) once)

    def prepare(self, items: Iterable[tuple[Mapping, str]]) -> None:
        todo: dict[tuple[str, str], tuple[Mapping, str]] = {}
        for row, answer in items:
            key = (row_key(row), answer)
            if key not in self.cache:
                todo.setdefault(key, (row, answer))
        if not todo:
            return
        rows, replies = [r for r, _ in todo.values()], [a for _, a in todo.values()]
        verdicts = list(self.judge(rows, replies))
        if len(verdicts) != len(replies):
            raise ValueError(f"the judge returned {len(verdicts)} verdicts for {len(replies)} answers")
        self.cache.update(zip(todo, (float(v["score"]) for v in verdicts)))
        self.scored += len(replies)

    def score(self, row: Mapping, answer: str) -> float:
        key = (row_key(row), answer)
        if key not in self.cache:
            self.prepare([(row, answer)])
        return self.cache[key]

    def __call__(self, row: Mapping, answer_a: str, answer_b: str) -> str:
        delta = self.score(row, answer_a) - self.score(row, answer_b)
        if delta == 0 or abs(delta) < self.margin:
            return "tie"
        return "a" if delta > 0 else "b"
