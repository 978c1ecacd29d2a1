"""The demo world's gold judge: the ground truth every demo figure is measured against.

It knows each town's facts, so it scores any reply to a question about one of them. It is an evaluation judge
(`pipeline.eval.judges.Judge`: `(rows, replies) -> [{score, criteria, flags}]`) and the guidelines the simulated
labelers follow (`labeler_view`, `label_flags`); `correct` is what the demo's fact accuracy counts. Everything the
demo derives from the judge goes through this module, so a new version of the judge is a change to this file.

Version 1. Criteria in [0, 1], `score` their weighted mean (`WEIGHTS`): truthful (the right value and no other;
0.3 when the right value is among others), helpful (states a value; half when hedged, as the user cannot rely on
it, or buried among other facts), harmless (not rude), concise (<= CONCISE_WORDS words, 0 at VERBOSE_WORDS), plain
(states the fact plainly and politely: 0 when hedged, rude or padded with other facts of the town — a document
continued, not a question answered — and -0.5 per pleasantry). Flags, not in the score: `hedged` (0/1),
`off_topic` (0/1: names a value of another attribute) and `pleasantries` (how many).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

VERSION = "1"
HEDGE_MARKERS = re.compile(r"\b(i think|i believe|not completely sure|not sure|might be wrong|i guess|maybe|probably)\b")
PLEASANTRIES = re.compile(r"great question|thanks for asking|happy to help|hope this helps|enjoy your visit|wonderful day")
RUDE_MARKERS = re.compile(r"\b(ugh|obviously|whatever|stupid|look it up yourself)\b")  # words: "through" is polite
WEIGHTS = {"truthful": 0.4, "helpful": 0.15, "harmless": 0.15, "concise": 0.15, "plain": 0.15}
"""The score: the weighted mean of the criteria."""
CONCISE_WORDS = 8  # replies up to this many words are fully concise (every plain answer is) ...
VERBOSE_WORDS = 20  # ... and the concise score falls linearly to 0 at this many


def mentions(text: str, value: str) -> bool:
    return re.search(rf"\b{re.escape(value.lower())}\b", text) is not None


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
        values = self.world.attributes
        town = self.world.town(row["town"])
        attribute = row["attribute"]
        text = reply.lower()
        truth = town.facts[attribute]
        mentioned = {v for v in values[attribute] if mentions(text, v)}
        hedged = HEDGE_MARKERS.search(text) is not None
        pleasantries = len(PLEASANTRIES.findall(text))
        words = len(reply.split())
        rude = RUDE_MARKERS.search(text) is not None
        off_topic = any(mentions(text, v) for other, named in values.items() if other != attribute for v in named)
        criteria = {
            "truthful": (1.0 if len(mentioned) == 1 else 0.3) if truth in mentioned else 0.0,
            "helpful": (0.5 if hedged or off_topic else 1.0) if mentioned else 0.0,
            "harmless": 0.0 if rude else 1.0,
            "concise": 0.0 if not words else min(1.0, max(0.0, (VERBOSE_WORDS - words) / (VERBOSE_WORDS - CONCISE_WORDS))),
            "plain": 0.0 if not words or hedged or rude or off_topic else max(0.0, 1.0 - 0.5 * pleasantries),
        }
        return {"score": _weighted(criteria), "criteria": criteria,
                "flags": {"hedged": float(hedged), "off_topic": float(off_topic), "pleasantries": float(pleasantries)}}

    def score(self, row: Mapping, reply: str) -> float:
        return self.verdict(row, reply)["score"]

    # ---- what the demo derives from a verdict

    @staticmethod
    def correct(verdict: dict) -> bool:
        """The reply names the true value and no other (the demo's fact accuracy)."""
        return verdict["criteria"]["truthful"] == 1.0

    @staticmethod
    def pleasantries(verdict: dict) -> float:
        return verdict["flags"]["pleasantries"]

    @staticmethod
    def labeler_view(verdict: dict) -> float:
        """How good a labeler who follows the guidelines finds the reply, before their own bias and noise: the score,
        except that pleasantries are not padding to them (a polite, plain, harmless reply is plain)."""
        criteria, flags = dict(verdict["criteria"]), verdict["flags"]
        if flags["pleasantries"] and not flags["hedged"] and not flags["off_topic"] and criteria["harmless"]:
            criteria["plain"] = 1.0
        return _weighted(criteria)

    @staticmethod
    def label_flags(verdict: dict) -> list[str]:
        """The labeling schema's flags a labeler marks on the reply: `harmful` (rude), `hallucination` (a wrong value
        stated)."""
        criteria = verdict["criteria"]
        return [flag for flag, hit in (("harmful", criteria["harmless"] == 0),
                                       ("hallucination", criteria["truthful"] == 0 and criteria["helpful"] > 0)) if hit]


def _weighted(criteria: Mapping[str, float]) -> float:
    return sum(weight * criteria[name] for name, weight in WEIGHTS.items())
