"""Stand-in judges for stage tests, in the evaluation's `Judge` shape (`pipeline.eval.judges`)."""

from __future__ import annotations


class WordJudge:
    """1 for a reply that names `word`, 0 otherwise: a gold judge whose right answer the test knows."""

    version = "test"

    def __init__(self, word: str, *, name: str = "gold"):
        self.word, self.name = word, name
        self.calls = 0

    def __call__(self, rows, replies):
        assert len(rows) == len(replies) and all("prompt" in r for r in rows)
        self.calls += 1
        return [{"score": float(self.word in reply), "criteria": {}, "flags": {}} for reply in replies]


def monitor(eval_prompts=None, *, reward_model=None, holdout_reward_model=None, gold=None, batch_size: int = 8):
    """The monitor the runner would hand an RL stage."""
    from pipeline.eval.monitor import Monitor

    return Monitor.for_prompts(eval_prompts, reward_model=reward_model, holdout_reward_model=holdout_reward_model, gold=gold,
                               batch_size=batch_size)
