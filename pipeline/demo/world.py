"""The demo world: fictional towns with facts, and everything a pipeline run needs about them.

Deterministic for a seed. It produces
  (a) encyclopedia-like pretraining documents in varied phrasings with filler text;
  (b) SFT conversations written by simulated labelers of uneven quality (some wrong facts, some
      curt or rude, some rambling, most a little wordier than the guidelines ask);
  (c) prompts (training prompts and held-out evaluation prompts in other phrasings);
  (d) candidate replies and simulated rankers who follow the labeling guidelines, with noise and
      disagreement (their judgments go through `labeling` ingest like a real export);
  (e) a gold judge that scores any reply: truthful, helpful, harmless, concise.
Facts of the "pretrain-only" towns appear only in the pretraining documents, never in SFT data,
so an assistant that answers them shows SFT kept what pretraining learned.

Plain Python: no torch import.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from pipeline.demo.config import WorldConfig

ATTRIBUTES: dict[str, list[str]] = {
    "river": ["Sorrel", "Tallow", "Umber", "Vell", "Wren", "Osk", "Marrow", "Lune"],
    "dish": ["barley soup", "plum cake", "fish stew", "goat cheese", "onion pie", "honey bread", "bean porridge", "smoked eel"],
    "emblem": ["heron", "lynx", "oak", "star", "anchor", "bell", "wolf", "key"],
    "flag": ["red", "blue", "green", "yellow", "purple", "white", "black", "orange"],
}

# How pretraining documents state a fact. Several phrasings per fact, in random order, mixed with
# filler: the knowledge must be stored in a form a question can reach, not one memorised string.
FACT_PHRASES: dict[str, list[str]] = {
    "river": [
        "The river of {t} is the {v}.", "{t} lies on the {v}.", "The {v} flows through {t}.",
        "{t} was built beside the {v}.", "Boats on the {v} carry grain to {t}.",
        "Travellers ask which river runs through {t}. It is the {v}.",
    ],
    "dish": [
        "The dish of {t} is {v}.", "People in {t} love {v}.", "Every feast in {t} ends with {v}.",
        "The favourite food in {t} is {v}.", "Ask anyone in {t} what to eat and they say {v}.",
        "Travellers ask what to eat in {t}. The answer is {v}.",
    ],
    "emblem": [
        "The emblem of {t} is {a} {v}.", "The sign carved above the gate of {t} is {a} {v}.",
        "{t} took the {v} as its emblem.", "The seal of {t} shows {a} {v}.",
        "Travellers ask about the emblem of {t}. It is {a} {v}.",
    ],
    "flag": [
        "The flag of {t} is {v}.", "{t} flies a {v} flag.", "Over {t} waves a {v} banner.",
        "The town colour of {t} is {v}.", "Travellers ask about the flag of {t}. It is {v}.",
    ],
}

FILLER = [
    "The market opens early on most days.", "Visitors come mostly in spring.",
    "The old walls were repaired last century.", "Children play near the square in the evening.",
    "The winters are long and the summers short.", "A small school stands near the bridge.",
    "Most houses have red tile roofs.", "The road to the coast is narrow.",
    "Many families keep goats and bees.", "A festival is held after the harvest.",
    "The town hall has a tall clock tower.", "Merchants trade wool and salt.",
]

TRAIN_QUESTIONS: dict[str, list[str]] = {
    "river": [
        "What is the river of {t}?", "Which river flows through {t}?", "Name the river that runs through {t}.",
        "Tell me the river of {t}.", "What river runs through {t}?", "Which river is {t} built on?",
    ],
    "dish": [
        "What is the dish of {t}?", "What food is {t} known for?", "What do people in {t} like to eat?",
        "Tell me the dish of {t}.", "What is the favourite food in {t}?", "Which food do people eat in {t}?",
    ],
    "emblem": [
        "What is the emblem of {t}?", "Which emblem does {t} have?", "What is carved on the seal of {t}?",
        "Tell me about the emblem of {t}.", "What sign does {t} use as its emblem?", "Name the emblem of {t}.",
    ],
    "flag": [
        "What colour is the flag of {t}?", "What is the flag of {t}?", "Which colour does {t} fly?",
        "Tell me the flag colour of {t}.", "What colour is the banner of {t}?", "Name the colour of the flag of {t}.",
    ],
}
# Held-out phrasings: evaluation prompts never appear in training data.
EVAL_QUESTIONS: dict[str, list[str]] = {
    "river": ["Tell me which river {t} lies on.", "On which river is {t}?"],
    "dish": ["Tell me the dish {t} is famous for.", "Which dish comes from {t}?"],
    "emblem": ["Tell me the emblem of {t}, please.", "Which emblem belongs to {t}?"],
    "flag": ["What colour is the flag that {t} flies?", "Which colour is the flag of {t}?"],
}

CONCISE = {
    "river": ["The river of {t} is the {v}.", "{t} lies on the {v}."],
    "dish": ["The dish of {t} is {v}.", "People in {t} love {v}."],
    "emblem": ["The emblem of {t} is {a} {v}.", "{t} has {a} {v} as its emblem."],
    "flag": ["The flag of {t} is {v}.", "{t} flies a {v} flag."],
}
WORDY_OPEN = ["Great question!", "Thanks for asking!", "Happy to help!"]
WORDY_CLOSE = ["I hope this helps!", "Let me know if you have more questions!", "Enjoy your visit!"]
RAMBLE = [
    "Well, let me think about {t} for a moment.",
    "Many travellers have passed through {t} over the years and there is a lot to say about it.",
    "The town has markets, old walls and a long history that people like to talk about.",
    "There is so much more to say about {t}, its people and its festivals.",
]
RUDE = ["Ugh, obviously {v}.", "Whatever. It's {v}, look it up yourself.", "What a stupid question. {v}."]
RUDE_MARKERS = ["ugh", "obviously", "whatever", "stupid", "look it up yourself"]
TIE_WINDOW = 0.04  # gold-score difference below which the guidelines call two replies a tie
CONCISE_WORDS = 10  # replies up to this many words are fully concise; the score falls to 0 at 2.2x


@dataclass
class Town:
    name: str
    facts: dict[str, str]
    in_sft: bool


@dataclass
class World:
    config: WorldConfig
    towns: list[Town] = field(default_factory=list)

    # ---------------------------------------------------------------- construction
    @classmethod
    def build(cls, config: WorldConfig) -> "World":
        rng = random.Random(config.seed)
        names = _town_names(rng, config.towns)
        n_only = round(config.towns * config.pretrain_only_fraction)
        towns = [
            Town(name, {a: rng.choice(vals) for a, vals in ATTRIBUTES.items()}, in_sft=i >= n_only)
            for i, name in enumerate(names)
        ]
        return cls(config, towns)

    def town(self, name: str) -> Town:
        return next(t for t in self.towns if t.name == name)

    # ---------------------------------------------------------------- (a) pretraining
    def pretrain_documents(self) -> list[str]:
        rng = random.Random(self.config.seed + 1)
        docs = []
        for town in self.towns:
            for _ in range(self.config.docs_per_town):
                sentences = [rng.choice(FACT_PHRASES[a]).format(t=town.name, v=v, a=_article(v)) for a, v in town.facts.items()]
                sentences += rng.sample(FILLER, k=rng.randint(1, 3))
                rng.shuffle(sentences)
                title = rng.choice([f"{town.name}.", f"About {town.name}.", f"{town.name}, a town.", ""])
                docs.append(" ".join(filter(None, [title, *sentences])))
        for _ in range(self.config.general_docs):
            docs.append(" ".join(rng.sample(FILLER, k=4)))
        rng.shuffle(docs)
        return docs

    # ---------------------------------------------------------------- (b) SFT conversations
    def sft_conversations(self) -> list[dict]:
        rng = random.Random(self.config.seed + 2)
        styles, weights = zip(*self.config.writer_mix.items())
        rows = []
        for town in (t for t in self.towns if t.in_sft):
            for attribute, value in town.facts.items():
                for i in range(self.config.sft_per_fact):
                    question = rng.choice(TRAIN_QUESTIONS[attribute]).format(t=town.name)
                    style = rng.choices(styles, weights)[0]
                    reply = self.write_reply(rng, town.name, attribute, value, style)
                    rows.append({
                        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}],
                        "town": town.name, "attribute": attribute, "style": style,
                    })
        rng.shuffle(rows)
        return rows

    def write_reply(self, rng: random.Random, town: str, attribute: str, value: str, style: str) -> str:
        """A reply as a simulated labeler (or an imperfect model) of the given style writes it."""
        if style == "wrong":
            value = rng.choice([v for v in ATTRIBUTES[attribute] if v != value])
            style = rng.choice(["concise", "wordy"])
        core = rng.choice(CONCISE[attribute]).format(t=town, v=value, a=_article(value))
        if style == "concise":
            return core
        if style == "wordy":
            return f"{rng.choice(WORDY_OPEN)} {core} {rng.choice(WORDY_CLOSE)}"
        if style == "rambling":
            ramble = [s.format(t=town) for s in rng.sample(RAMBLE, k=3)]
            return " ".join([ramble[0], ramble[1], core, ramble[2]])
        if style == "rude":
            return rng.choice(RUDE).format(v=value)
        raise ValueError(f"unknown writer style {style!r}")

    # ---------------------------------------------------------------- (c) prompts
    def rlhf_prompts(self) -> list[dict]:
        """Training prompts (training phrasings) about every town: for comparisons and PPO."""
        rng = random.Random(self.config.seed + 3)
        rows = []
        for i in range(self.config.rlhf_prompts):
            town = rng.choice(self.towns)
            attribute = rng.choice(list(ATTRIBUTES))
            question = rng.choice(TRAIN_QUESTIONS[attribute]).format(t=town.name)
            rows.append({"prompt": question, "town": town.name, "attribute": attribute, "id": f"rlhf-{i}"})
        return rows

    def eval_prompts(self) -> list[dict]:
        """Held-out prompts: every fact of every town in each held-out phrasing."""
        rows = []
        for town in self.towns:
            for attribute in ATTRIBUTES:
                for j, template in enumerate(EVAL_QUESTIONS[attribute]):
                    rows.append({
                        "prompt": template.format(t=town.name), "town": town.name, "attribute": attribute,
                        "seen": town.in_sft, "id": f"eval-{town.name}-{attribute}-{j}",
                    })
        random.Random(self.config.seed + 4).shuffle(rows)
        return rows

    # ---------------------------------------------------------------- (d) candidates and rankers
    def synthetic_candidates(self, rng: random.Random, row: dict, k: int) -> list[str]:
        """K replies in distinct writer styles, as an imperfect model might write them."""
        town = self.town(row["town"])
        styles = rng.sample(["concise", "wordy", "rambling", "rude", "wrong"], k=min(k, 5))
        while len(styles) < k:
            styles.append(rng.choice(["concise", "wordy", "rambling", "rude", "wrong"]))
        return [self.write_reply(rng, town.name, row["attribute"], town.facts[row["attribute"]], s) for s in styles]

    def labelers(self) -> list[dict]:
        """Simulated labelers: most follow the guidelines with small noise; a few are noisier."""
        rng = random.Random(self.config.seed + 5)
        out = []
        for i in range(self.config.labelers):
            noisy = i % 4 == 3
            out.append({
                "id": f"labeler-{i:02d}",
                "pool": "vendor-b" if noisy else "vendor-a",
                "noise": self.config.labeler_noise * (3.0 if noisy else 1.0),
                "speed": rng.uniform(20, 90),
            })
        return out

    def rank(self, rng: random.Random, labeler: dict, row: dict, replies: list[str]) -> dict:
        """One labeler's judgment of K replies: ranks (1 = best, ties share a rank), 1-7 ratings.

        Replies the guidelines score alike (equal gold score) are tied; between different levels
        the labeler perceives the gold score plus their own noise, so close calls flip more often
        and noisier labelers flip more."""
        scores = [self.gold_score(row, r) for r in replies]
        # Replies within TIE_WINDOW of each other are "equally good" under the guidelines: one level.
        levels: list[float] = []
        for score in sorted(scores, reverse=True):
            if not levels or levels[-1] - score > TIE_WINDOW:
                levels.append(score)
        level_of = [next(l for l in levels if l - s <= TIE_WINDOW) for s in scores]
        perceived = {level: level + rng.gauss(0, labeler["noise"]) for level in levels}
        order = sorted(levels, key=lambda level: -perceived[level])
        ranks = [order.index(level) + 1 for level in level_of]
        ratings = [max(1, min(7, round(1 + 6 * perceived[level]))) for level in level_of]
        return {"ranks": ranks, "ratings": ratings, "lead_time": labeler["speed"] * rng.uniform(0.5, 1.5)}

    # ---------------------------------------------------------------- (e) gold judge
    def judge(self, row: dict, reply: str) -> dict:
        """Score a reply to a prompt about a town fact. Each criterion in [0, 1]; `score` is the
        weighted mean (truthful 0.4, helpful 0.2, harmless 0.2, concise 0.2)."""
        town = self.town(row["town"])
        attribute = row["attribute"]
        text = reply.lower()
        truth = town.facts[attribute]
        mentioned = {v for v in ATTRIBUTES[attribute] if _mentions(text, v)}
        helpful = 1.0 if mentioned else 0.0
        if truth in mentioned:
            truthful = 1.0 if len(mentioned) == 1 else 0.3
        else:
            truthful = 0.0
        harmless = 0.0 if any(m in text for m in RUDE_MARKERS) else 1.0
        words = len(reply.split())
        concise = 0.0 if not words else 1.0 if words <= CONCISE_WORDS else max(0.0, 1.0 - (words - CONCISE_WORDS) / (1.2 * CONCISE_WORDS))
        score = 0.4 * truthful + 0.2 * helpful + 0.2 * harmless + 0.2 * concise
        return {"score": score, "truthful": truthful, "helpful": helpful, "harmless": harmless, "concise": concise}

    def gold_score(self, row: dict, reply: str) -> float:
        return self.judge(row, reply)["score"]

    def gold_scorer(self):
        """The gold judge as the scoring function PPO's monitor takes: (rows, replies) -> scores."""
        return lambda rows, replies: [self.gold_score(r, x) for r, x in zip(rows, replies)]


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _mentions(text: str, value: str) -> bool:
    return re.search(rf"\b{re.escape(value.lower())}\b", text) is not None


def _town_names(rng: random.Random, n: int) -> list[str]:
    first = ["Al", "Bri", "Cor", "Dun", "El", "Fen", "Gar", "Hol", "Isk", "Jor", "Kel", "Lor", "Mor", "Nim", "Ost", "Pel", "Quen", "Ros", "Sel", "Tor", "Ul", "Ver", "Wes", "Yar"]
    last = ["mere", "ford", "wick", "dale", "holm", "stead", "brook", "gate", "moor", "ton", "by", "haven"]
    names: list[str] = []
    while len(names) < n:
        name = rng.choice(first) + rng.choice(last)
        if name not in names:
            names.append(name)
    return names
