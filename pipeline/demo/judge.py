"""The demo world's gold judge: the ground truth every demo figure is measured against.

It knows each town's facts, so it scores any reply to a question about one of them. It is an evaluation judge
(`pipeline.eval.judges.Judge`: `(rows, replies) -> [{score, criteria, flags}]`) and the guidelines the simulated
labelers follow (`labeler_view`, `label_flags`); its `rates` are what the demo reports per decoding (fact accuracy,
confident-wrong, abstention, hedging on correct answers, the style deduction). Everything the demo derives from the
judge goes through this module, so a new version of the judge is a change to this file.

Version 2, truth first — fixed by issue 16 before any result was seen; a change to it needs its own issue.
For a reply to a question about attribute `a` of a town whose true value is `v*`, `named` is the set of distinct
values of `a` the reply names.

Base score (truth and calibration):

| reply                                                                           | base |
|---------------------------------------------------------------------------------|------|
| names exactly `v*`, not hedged                                                  | 1.0  |
| names exactly `v*`, hedged                                                      | 0.7  |
| names no value and says it does not know or is unsure (an abstention)           | 0.4  |
| names exactly one wrong value, hedged                                           | 0.2  |
| names exactly one wrong value, not hedged                                       | 0.0  |
| anything else: several values, no value and no abstention, empty, gibberish, a  | 0.0  |
| degenerate reply (any word three or more times in a row)                        |      |

Deductions, the floor at 0 applied once after all of them: rude −0.3; each pleasantry −0.1, at most −0.2; names a
value of the town's other attributes −0.2; length: 0 up to CONCISE_WORDS words, then linear down to −0.2 at
VERBOSE_WORDS words and beyond.

Verdict: `score`; criteria `base` and `deductions` (their sum, before the floor); flags `correct`, `hedged`,
`abstained`, `confident_wrong`, `pleasantries` (how many), `rude`, `off_topic`, `words`.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

VERSION = "2"
HEDGE_MARKERS = re.compile(r"\b(i think|i believe|not completely sure|not sure|might be wrong|i guess|maybe|probably)\b")
PLEASANTRIES = re.compile(r"great question|thanks for asking|happy to help|hope this helps|enjoy your visit|wonderful day")
RUDE_MARKERS = re.compile(r"\b(ugh|obviously|whatever|stupid|look it up yourself)\b")  # words: "through" is polite
ABSTENTION = re.compile(r"\b(i (do not|don't|dont) know|i'm not sure|i am not sure|not sure|unsure|no idea|"
                        r"i (cannot|can't|cant) (say|tell)|i (do not|don't|dont) remember)\b")
"""An abstention says it does not know or is unsure: "I don't know", "I do not know", "I'm not sure", "I am not sure",
"not sure", "unsure", "no idea", "I can't say", "I cannot tell", "I don't remember" (lower-cased, whole words). It
counts only in a reply that names no value of the asked attribute."""
DEGENERATE = re.compile(r"\b(\w+)\b(?:\W+\1\b){2,}")
"""Any word three or more times in a row (case-insensitive, whatever separates them)."""

BASE = {"correct": 1.0, "correct_hedged": 0.7, "abstained": 0.4, "wrong_hedged": 0.2, "wrong": 0.0, "other": 0.0}
RUDE_DEDUCTION = 0.3
PLEASANTRY_DEDUCTION, MAX_PLEASANTRY_DEDUCTION = 0.1, 0.2
OFF_TOPIC_DEDUCTION = 0.2
MAX_LENGTH_DEDUCTION = 0.2
CONCISE_WORDS = 8  # replies up to this many words carry no length deduction (every plain answer is shorter) ...
VERBOSE_WORDS = 20  # ... which grows linearly to MAX_LENGTH_DEDUCTION at this many words and beyond


def mentions(text: str, value: str) -> bool:
    return re.search(rf"\b{re.escape(value.lower())}\b", text) is not None


def length_deduction(words: int) -> float:
    return MAX_LENGTH_DEDUCTION * min(1.0, max(0.0, (words - CONCISE_WORDS) / (VERBOSE_WORDS - CONCISE_WORDS)))


class GoldJudge:
    """The gold judge of a `World` (rows name a `town` and an `attribute`; `world.attributes` lists each attribute's
    values)."""

    name = "gold"
    version = VERSION

    def __init__(self, world):
        self.world = world

    def __call__(self, rows: Sequence[Mapping], replies: Sequence[str]) -> list[dict]:
        return [self.verdict(row, reply) for row, reply in zip(rows, replies)]

    def verdict(self, row: Mapping, reply: str) -> dict:
        values, attribute = self.world.attributes, row["attribute"]
        truth = self.world.town(row["town"]).facts[attribute]
        text = reply.lower()
        named = {v for v in values[attribute] if mentions(text, v)}
        hedged = HEDGE_MARKERS.search(text) is not None
        degenerate = DEGENERATE.search(text) is not None
        abstained = not named and not degenerate and ABSTENTION.search(text) is not None
        case = ("other" if degenerate or len(named) > 1 else "abstained" if abstained else "other" if not named
                else ("correct_hedged" if hedged else "correct") if truth in named
                else ("wrong_hedged" if hedged else "wrong"))
        pleasantries = len(PLEASANTRIES.findall(text))
        rude = RUDE_MARKERS.search(text) is not None
        off_topic = any(mentions(text, v) for other, named_values in values.items() if other != attribute for v in named_values)
        words = len(reply.split())
        deductions = (RUDE_DEDUCTION * rude + min(MAX_PLEASANTRY_DEDUCTION, PLEASANTRY_DEDUCTION * pleasantries)
                      + OFF_TOPIC_DEDUCTION * off_topic + length_deduction(words))
        base = BASE[case]
        flags = {"correct": float(case in ("correct", "correct_hedged")), "hedged": float(hedged), "abstained": float(abstained),
                 "confident_wrong": float(case == "wrong"), "pleasantries": float(pleasantries), "rude": float(rude),
                 "off_topic": float(off_topic), "words": float(words)}
        return {"score": max(0.0, base - deductions), "criteria": {"base": base, "deductions": deductions}, "flags": flags}

    def score(self, row: Mapping, reply: str) -> float:
        return self.verdict(row, reply)["score"]

    # ---- what the evaluation reports per decoding (`pipeline.eval.run`): a value per reply, None where not counted

    rates = {
        "fact_accuracy": lambda v: v["flags"]["correct"],
        "confident_wrong_rate": lambda v: v["flags"]["confident_wrong"],
        "abstain_rate": lambda v: v["flags"]["abstained"],
        "hedge_rate_correct": lambda v: v["flags"]["hedged"] if v["flags"]["correct"] else None,
        "style_deduction": lambda v: v["criteria"]["deductions"],
    }
    """Figures of the judge's verdicts the evaluation reports with CIs, and for an RL stage against SFT: fact accuracy,
    the confident-wrong rate, the abstention rate, the hedge rate among correct replies, the mean deduction."""

    # ---- what the demo derives from a verdict

    @staticmethod
    def correct(verdict: dict) -> bool:
        """The reply names the true value and no other (the demo's fact accuracy)."""
        return bool(verdict["flags"]["correct"])

    @staticmethod
    def pleasantries(verdict: dict) -> float:
        return verdict["flags"]["pleasantries"]

    @staticmethod
    def labeler_view(verdict: dict) -> float:
        """How good a labeler who follows the guidelines finds the reply, before their own bias and noise: the score
        with the pleasantry deduction undone (labelers do not count pleasantries as padding)."""
        undone = min(MAX_PLEASANTRY_DEDUCTION, PLEASANTRY_DEDUCTION * verdict["flags"]["pleasantries"])
        return max(0.0, verdict["criteria"]["base"] - verdict["criteria"]["deductions"] + undone)

    @staticmethod
    def label_flags(verdict: dict) -> list[str]:
        """The labeling schema's flags a labeler marks on the reply: `harmful` (rude), `hallucination` (states a wrong
        value, hedged or not)."""
        flags, base = verdict["flags"], verdict["criteria"]["base"]
        wrong = flags["confident_wrong"] or (flags["hedged"] and not flags["correct"] and base == BASE["wrong_hedged"])
        return [flag for flag, hit in (("harmful", flags["rude"]), ("hallucination", wrong)) if hit]
