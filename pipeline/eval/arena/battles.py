"""Battles: every pair of checkpoints on every prompt all of them answered, sample s against sample s, both orders;
and the answers themselves when a checkpoint has not answered yet (through the evaluation's generation path)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Mapping, Sequence

from pipeline.eval.arena import ArenaError
from pipeline.eval.arena.fit import VERDICTS, Battle

CHAT_TEMPERATURE, CHAT_TOP_P = 0.7, 0.95


def prompt_id(row: Mapping, index: int) -> str:
    return str(row["id"]) if row.get("id") is not None else f"p{index}"


def samples_of(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _verdict(value) -> str:
    verdict = str(value).lower()
    if verdict not in VERDICTS:
        raise ValueError(f"the judge said {value!r}; a verdict is one of {VERDICTS}")
    return verdict


def pairings(answers: Mapping[str, Mapping[str, Sequence[str] | str]], prompt_rows: Sequence[Mapping]):
    """(prompt id, row, sample, model_a, model_b, answer_a, answer_b) for every pair of checkpoints,
    prompt and sample, in both orders."""
    names = list(answers)
    if len(names) < 2:
        raise ArenaError(f"the arena needs at least two checkpoints, got {names}")
    rows = {prompt_id(r, i): r for i, r in enumerate(prompt_rows)}
    ids = [pid for pid in rows if all(pid in answers[name] for name in names)]
    if not ids:
        raise ArenaError("no prompt was answered by every checkpoint")
    for pid in ids:
        for first, second in itertools.combinations(names, 2):
            mine, theirs = samples_of(answers[first][pid]), samples_of(answers[second][pid])
            for sample in range(min(len(mine), len(theirs))):
                yield pid, rows[pid], sample, first, second, mine[sample], theirs[sample]
                yield pid, rows[pid], sample, second, first, theirs[sample], mine[sample]


def play_battles(answers: Mapping[str, Mapping[str, Sequence[str] | str]], prompt_rows: Sequence[Mapping],
                 judge: Callable[[Mapping, str, str], str]) -> list[Battle]:
    """Every pair of checkpoints on every prompt all of them answered, sample s against sample s,
    each judged in both orders.

    `answers`: {checkpoint: {prompt id: [sample 0, sample 1, ...]}}; `prompt_rows` give the prompts
    (their `id`, or `p<index>`); `judge(row, answer_a, answer_b)` -> "a" | "b" | "tie". A judge with
    a `prepare(items)` method is first handed every distinct (row, answer) so it can score in batches."""
    every = list(pairings(answers, prompt_rows))
    if hasattr(judge, "prepare"):
        judge.prepare([(row, a) for _, row, _, _, _, a, _ in every])
    return [Battle(prompt_id=pid, model_a=model_a, model_b=model_b, winner=_verdict(judge(row, a, b)), sample=sample)
            for pid, row, sample, model_a, model_b, a, b in every]


def generate_answers(checkpoints: Mapping[str, str | Path], prompt_rows: Sequence[Mapping], *, samples: int = 2,
                     temperature: float = CHAT_TEMPERATURE, top_p: float = CHAT_TOP_P, max_new_tokens: int = 48,
                     batch_size: int = 32, seed: int = 0, say: Callable[[str], None] = print) -> dict[str, dict[str, list[str]]]:
    """{checkpoint: {prompt id: [sample 0, ...]}}: each checkpoint samples `samples` answers per prompt (the evaluation's
    `answer`), draw s with seed `seed + s` for every checkpoint."""
    import torch

    from pipeline.eval.answers import Decoding, answer, load_chat_checkpoint
    from stages.chat_format import stop_token_ids
    from stages.chat_format import ChatFormatError
    from stages.common import check_chat_format

    ids = [prompt_id(r, i) for i, r in enumerate(prompt_rows)]
    decoding = {"arena": Decoding(sample=True, temperature=temperature, top_p=top_p, samples=samples)}
    answers: dict[str, dict[str, list[str]]] = {}
    for name, path in checkpoints.items():
        model, tokenizer, chat_format = load_chat_checkpoint(path)
        model = model.to("cuda" if torch.cuda.is_available() else "cpu")
        try:
            check_chat_format(tokenizer, where=str(path))
        except ChatFormatError as error:  # a base model in the arena: it was never taught the format
            say(f"arena: {name}: {error}; it answers anyway")
        records = answer(model, tokenizer, [dict(r) for r in prompt_rows], stop_ids=stop_token_ids(chat_format),
                         decodings=decoding, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
        answers[name] = {pid: [s["reply"] for s in record["arena"]] for pid, record in zip(ids, records)}
        say(f"arena: {name}: {samples} answer(s) to each of {len(ids)} prompts")
        del model
    return answers
