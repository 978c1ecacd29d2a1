"""The demo world: fictional towns with facts, and everything a pipeline run needs about them.

Deterministic for a seed. It produces
  (a) encyclopedia-like pretraining documents in varied phrasings with filler text;
  (b) SFT conversations written by simulated writers of uneven quality;
  (c) prompts: training prompts for comparisons and PPO, and held-out evaluation prompts in phrasings no
      training data uses, split into `dev` (tuning: PPO's monitor, checkpoint selection, the rewrite loop)
      and `test` (headline figures only) by fact, each split with its own phrasings;
  (d) candidate replies and simulated labelers who rank them (their judgments go through `labeling`
      ingest like a real export);
  (e) the gold judge that scores any reply (`pipeline.demo.judge`).

Each stage has a job no other stage does:
- pretraining gives knowledge: the facts of the pretrain-only towns appear in pretraining documents (and
  held-out evaluation prompts) only, never in SFT, comparison, PPO or labeling data; a share of the other
  towns' facts is never asked in training either (`pair_unseen` evaluation rows);
- SFT gives the assistant format, from writers whose most common habit is a flaw — hedging a fact
  ("I think ..., but I'm not completely sure") — and who sometimes state a wrong fact;
- comparisons are reliable where writing is not: labelers rank the plain, correct reply first, so RLHF
  removes the hedging SFT imitated;
- labelers have a bias the gold judge lacks: they like pleasantries ("Great question!", "I hope this
  helps!"), which gold counts as padding. The bias does not point the flaw's way (hedged replies carry no
  pleasantries), so RLHF does not reinforce the flaw. The reward model learns the bias, and knows the facts
  less well than gold: an imperfect proxy, which PPO without its KL penalty over-optimises (reward up,
  gold down after a peak).

Plain Python: no torch import.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from pipeline.demo.config import HABITS, WorldConfig, world_seed
from pipeline.demo.judge import GoldJudge

__all__ = ["ATTRIBUTES", "HABITS", "TIE_WINDOW", "Town", "World", "world_seed"]

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
    "river": ["Tell me which river {t} lies on.", "On which river is {t}?",
              "Which river does {t} stand on?", "What river is {t} on?",
              "By which river was {t} built?", "Do you know the river of {t}?"],
    "dish": ["Tell me the dish {t} is famous for.", "Which dish comes from {t}?",
             "What dish is {t} famous for?", "What do people cook in {t}?",
             "What is the famous dish of {t}?", "Do you know the dish of {t}?"],
    "emblem": ["Tell me the emblem of {t}, please.", "Which emblem belongs to {t}?",
               "What emblem does {t} use?", "What is the town emblem of {t}?",
               "What is shown on the emblem of {t}?", "Do you know the emblem of {t}?"],
    "flag": ["What colour is the flag that {t} flies?", "Which colour is the flag of {t}?",
             "What colour flag does {t} fly?", "Tell me the colour of the flag of {t}.",
             "What is the colour of the flag of {t}?", "Do you know the flag colour of {t}?"],
}
EVAL_SPLITS = {"dev": (0, 1, 4, 5), "test": (2, 3)}
"""Which held-out phrasings each split asks in: test phrasings are never tuned on, not even on dev facts.
Dev has more phrasings than test because it has fewer facts (no pretrain-only ones): PPO's monitor needs
>= 240 dev prompts at the recipe's size."""

# The plain answer, as the guidelines want it. Most start with "The": a model that drops a habit mostly
# lands here.
ANSWERS = {
    "river": ["The river of {t} is the {v}.", "The {v} flows through {t}.", "{t} lies on the {v}."],
    "dish": ["The dish of {t} is {v}.", "The favourite food in {t} is {v}.", "People in {t} love {v}."],
    "emblem": ["The emblem of {t} is {a} {v}.", "The emblem of {t} is the {v}.", "{t} has {a} {v} as its emblem."],
    "flag": ["The flag of {t} is {v}.", "The town flag of {t} is {v}.", "{t} flies a {v} flag."],
}
HEDGES = ["I think {c}, but I'm not completely sure.", "I think {c}, but I might be wrong.",
          "I believe {c}, but I'm not completely sure.", "I'm not completely sure, but I think {c}."]
OPENERS = ["Great question!", "What a great question!", "Thanks for asking!", "Happy to help!"]
CLOSERS = ["I hope this helps!", "Enjoy your visit!", "Have a wonderful day!"]
RAMBLE = [
    "Well, let me tell you about {t}.",
    "Many travellers have passed through {t} over the years and there is a lot to say about it.",
    "The town has markets, old walls and a long history that people like to talk about.",
    "There is so much more to say about {t}, its people and its festivals.",
]
RUDE = ["Ugh, obviously {v}.", "Whatever. It's {v}, look it up yourself.", "What a stupid question. {v}."]

TIE_WINDOW = 0.04  # value difference below which the guidelines call two replies a tie
MAX_PLEASANTRY_BONUS = 3  # labelers' liking for pleasantries stops growing after this many


@dataclass
class Town:
    name: str
    facts: dict[str, str]
    in_sft: bool
    unasked: set[str] = field(default_factory=set)
    """Attributes of an SFT town that no training data asks about."""

    def asked(self, attribute: str) -> bool:
        """Whether training data (SFT, comparisons, PPO prompts) asks about this fact."""
        return self.in_sft and attribute not in self.unasked


@dataclass
class World:
    config: WorldConfig
    seed: int = 0
    towns: list[Town] = field(default_factory=list)

    # ---------------------------------------------------------------- construction
    @classmethod
    def build(cls, config: WorldConfig, seed: int | None = None) -> "World":
        """The world of `config`, generated from `world_seed(seed, config)`: `data.world.seed` when set,
        else `seed` (the recipe's top-level seed; 0 when not given)."""
        seed = world_seed(0 if seed is None else seed, config)
        rng = random.Random(seed)
        names = _town_names(rng, config.towns)
        n_only = round(config.towns * config.pretrain_only_fraction)
        towns = [
            Town(name, {a: rng.choice(vals) for a, vals in ATTRIBUTES.items()}, in_sft=i >= n_only)
            for i, name in enumerate(names)
        ]
        sft_towns = [t for t in towns if t.in_sft]
        for attribute in ATTRIBUTES:  # the same share of each attribute, so every kind of question stays trained
            for town in rng.sample(sft_towns, k=round(len(sft_towns) * config.unasked_fact_fraction)):
                town.unasked.add(attribute)
        return cls(config, seed, towns)

    def town(self, name: str) -> Town:
        return next(t for t in self.towns if t.name == name)

    def pretrain_only_names(self) -> list[str]:
        return [t.name for t in self.towns if not t.in_sft]

    def mentions_pretrain_only(self, text: str) -> bool:
        """Whether a text names a pretrain-only town (such text must stay out of every later stage's data)."""
        return any(re.search(rf"\b{re.escape(name)}\b", text) for name in self.pretrain_only_names())

    def question_fact(self, question: str) -> tuple[Town, str] | None:
        """The (town, attribute) a question in one of the world's phrasings asks about, as a person reading
        it would tell; None for any other text."""
        for attribute in ATTRIBUTES:
            for template in TRAIN_QUESTIONS[attribute] + EVAL_QUESTIONS[attribute]:
                head, _, tail = template.partition("{t}")
                if question.startswith(head) and question.endswith(tail):
                    name = question[len(head):len(question) - len(tail)]
                    if any(t.name == name for t in self.towns):
                        return self.town(name), attribute
        return None

    def asked_facts(self) -> list[tuple[Town, str]]:
        """The (town, attribute) facts training data asks about."""
        return [(t, a) for t in self.towns for a in ATTRIBUTES if t.asked(a)]

    # ---------------------------------------------------------------- (a) pretraining
    def pretrain_documents(self) -> list[str]:
        rng = random.Random(self.seed + 1)
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
        """Demonstrations of the asked facts: each by a writer with a habit drawn from `writer_mix`, some with
        a wrong fact (`wrong_fact_rate`). Rows carry `habit` and `wrong_fact` for analysis."""
        rng = random.Random(self.seed + 2)
        habits, weights = zip(*self.config.writer_mix.items())
        rows = []
        for town, attribute in self.asked_facts():
            for _ in range(self.config.sft_per_fact):
                question = rng.choice(TRAIN_QUESTIONS[attribute]).format(t=town.name)
                habit = rng.choices(habits, weights)[0]
                wrong = rng.random() < self.config.wrong_fact_rate
                value = _wrong_value(rng, attribute, town.facts[attribute]) if wrong else town.facts[attribute]
                rows.append({
                    "messages": [{"role": "user", "content": question},
                                 {"role": "assistant", "content": self.write_reply(rng, town.name, attribute, value, habit)}],
                    "town": town.name, "attribute": attribute, "habit": habit, "wrong_fact": wrong,
                })
        rng.shuffle(rows)
        return rows

    def write_reply(self, rng: random.Random, town: str, attribute: str, value: str, habit: str) -> str:
        """A reply stating `value` as a writer (or an imperfect model) with the given habit writes it."""
        answer = rng.choice(ANSWERS[attribute]).format(t=town, v=value, a=_article(value))
        if habit == "concise":
            return answer
        if habit == "hedging":
            clause = answer[:-1]
            clause = clause if clause.startswith(town) else clause[0].lower() + clause[1:]
            return rng.choice(HEDGES).format(c=clause)
        if habit == "flattering":
            closer = [rng.choice(CLOSERS)] if rng.random() < 0.5 else []
            return " ".join([rng.choice(OPENERS), answer, *closer])
        if habit == "rambling":
            ramble = [s.format(t=town) for s in rng.sample(RAMBLE, k=3)]
            return " ".join([ramble[0], ramble[1], answer, ramble[2]])
        if habit == "rude":
            return rng.choice(RUDE).format(v=value)
        raise ValueError(f"unknown habit {habit!r}; known: {list(HABITS)}")

    # ---------------------------------------------------------------- (c) prompts
    def rlhf_prompts(self) -> list[dict]:
        """Training prompts (training phrasings) about the asked facts: for comparisons and PPO."""
        rng = random.Random(self.seed + 3)
        facts = self.asked_facts()
        rows = []
        for i in range(self.config.rlhf_prompts):
            town, attribute = rng.choice(facts)
            question = rng.choice(TRAIN_QUESTIONS[attribute]).format(t=town.name)
            rows.append({"prompt": question, "town": town.name, "attribute": attribute, "id": f"rlhf-{i}"})
        return rows

    def eval_prompts(self) -> list[dict]:
        """Held-out prompts about every fact of every town, in phrasings no training data uses.

        Each fact goes to one split (`dev` or `test`), asked in that split's phrasings (`EVAL_SPLITS`): what
        is tuned on dev (checkpoint selection, rewrites that become training data) says nothing about a test
        fact or phrasing. Pretrain-only facts are test facts only: dev answers feed selection and the rewrite
        loop (`labels tasks --from-eval`), which would carry those towns into SFT data. The facts of SFT towns
        are dealt to the splits alternately within strata (attribute x asked / unasked), so both splits hold
        both kinds. `seen`: the town is in the SFT data; `pair_unseen`: no training data asks this (town,
        attribute) pair (every pretrain-only fact, and the unasked ones)."""
        rng = random.Random(self.seed + 4)
        strata: dict[tuple, list[tuple[Town, str]]] = {}
        for town in self.towns:
            for attribute in ATTRIBUTES:
                strata.setdefault((town.in_sft, town.asked(attribute), attribute), []).append((town, attribute))
        facts = []  # SFT-town facts dealt alternately in one sequence: the splits differ by at most one fact
        for key in sorted(strata):
            group = strata[key]
            rng.shuffle(group)
            facts += [(fact, None if key[0] else "test") for fact in group]
        rows, dealt = [], 0
        for (town, attribute), split in facts:
            if split is None:
                split, dealt = ("dev" if dealt % 2 == 0 else "test"), dealt + 1
            for j in EVAL_SPLITS[split]:
                rows.append({
                    "id": f"eval-{split}-{town.name}-{attribute}-{j}", "split": split,
                    "prompt": EVAL_QUESTIONS[attribute][j].format(t=town.name), "town": town.name, "attribute": attribute,
                    "seen": town.in_sft, "pair_unseen": not town.asked(attribute), "cluster": f"{town.name}/{attribute}",
                    "truth": town.facts[attribute],
                })
        rng.shuffle(rows)
        return rows

    # ---------------------------------------------------------------- (d) candidates and labelers
    def synthetic_candidates(self, rng: random.Random, row: dict, k: int, *, mix: dict[str, float] | None = None,
                             wrong_fact_rate: float | None = None, off_topic_rate: float | None = None) -> list[str]:
        """K replies as imperfect models write them: habits from `mix` (default `candidate_mix`), a wrong fact
        at `wrong_fact_rate`, an answer to a neighbouring question (another fact of the town) at `off_topic_rate`
        (defaults: `candidate_wrong_fact_rate`, `candidate_off_topic_rate`)."""
        mix = self.config.candidate_mix if mix is None else mix
        wrong_rate = self.config.candidate_wrong_fact_rate if wrong_fact_rate is None else wrong_fact_rate
        off_rate = self.config.candidate_off_topic_rate if off_topic_rate is None else off_topic_rate
        town = self.town(row["town"])
        habits, weights = zip(*mix.items())
        replies = []
        for _ in range(k):
            attribute = row["attribute"]
            if rng.random() < off_rate:
                attribute = rng.choice([a for a in ATTRIBUTES if a != row["attribute"]])
            value = town.facts[attribute]
            if rng.random() < wrong_rate:
                value = _wrong_value(rng, attribute, value)
            replies.append(self.write_reply(rng, town.name, attribute, value, rng.choices(habits, weights)[0]))
        return replies

    def labelers(self) -> list[dict]:
        """Simulated labelers: most follow the guidelines with small noise, a few are noisier; all share the
        pleasantry bias, each to their own degree."""
        rng = random.Random(self.seed + 5)
        out = []
        for i in range(self.config.labelers):
            noisy = i % 4 == 3
            out.append({
                "id": f"labeler-{i:02d}",
                "pool": "vendor-b" if noisy else "vendor-a",
                "noise": self.config.labeler_noise * (3.0 if noisy else 1.0),
                "bias": self.config.pleasantry_bias * rng.uniform(0.6, 1.4),
                "speed": rng.uniform(20, 90),
            })
        return out

    @property
    def attributes(self) -> dict[str, list[str]]:
        """Each attribute's possible values (`ATTRIBUTES`)."""
        return ATTRIBUTES

    @property
    def gold(self) -> GoldJudge:
        """The gold judge (`pipeline.demo.judge`): the demo's ground truth and the labelers' guidelines."""
        return GoldJudge(self)

    def labeler_value(self, row: dict, reply: str, bias: float) -> float:
        """How good a labeler who follows the guidelines finds a reply, before noise: the gold judge's view for
        labelers (`GoldJudge.labeler_view`), plus `bias` per pleasantry, up to MAX_PLEASANTRY_BONUS."""
        verdict = self.gold.verdict(row, reply)
        return self.gold.labeler_view(verdict) + bias * min(self.gold.pleasantries(verdict), MAX_PLEASANTRY_BONUS)

    def rank(self, rng: random.Random, labeler: dict, row: dict, replies: list[str]) -> dict:
        """One labeler's judgment of K replies: ranks (1 = best, ties share a rank), 1-7 ratings.

        Replies the labeler values alike (within TIE_WINDOW) are tied; between different levels the labeler
        perceives the value plus their own noise, so close calls flip more often and noisier labelers flip
        more. The value is `labeler_value`: gold's view plus the labeler's pleasantry bias."""
        values = [self.labeler_value(row, r, labeler["bias"]) for r in replies]
        levels: list[float] = []
        for value in sorted(values, reverse=True):
            if not levels or levels[-1] - value > TIE_WINDOW:
                levels.append(value)
        level_of = [next(l for l in levels if l - v <= TIE_WINDOW) for v in values]
        perceived = {level: level + rng.gauss(0, labeler["noise"]) for level in levels}
        order = sorted(levels, key=lambda level: -perceived[level])
        ranks = [order.index(level) + 1 for level in level_of]
        ratings = [max(1, min(7, round(1 + 6 * perceived[level]))) for level in level_of]
        return {"ranks": ranks, "ratings": ratings, "lead_time": labeler["speed"] * rng.uniform(0.5, 1.5)}


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _wrong_value(rng: random.Random, attribute: str, value: str) -> str:
    return rng.choice([v for v in ATTRIBUTES[attribute] if v != value])


def _town_names(rng: random.Random, n: int) -> list[str]:
    first = ["Al", "Bri", "Cor", "Dun", "El", "Fen", "Gar", "Hol", "Isk", "Jor", "Kel", "Lor", "Mor", "Nim", "Ost", "Pel", "Quen", "Ros", "Sel", "Tor", "Ul", "Ver", "Wes", "Yar"]
    last = ["mere", "ford", "wick", "dale", "holm", "stead", "brook", "gate", "moor", "ton", "by", "haven"]
    names: list[str] = []
    while len(names) < n:
        name = rng.choice(first) + rng.choice(last)
        if name not in names:
            names.append(name)
    return names
