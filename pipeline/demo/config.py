"""The demo world's settings (`data.world` in a recipe). Kept apart from the generator, so loading a
recipe does not import the demo world."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator

from stages.config import Frozen

HABITS = ("concise", "hedging", "flattering", "rambling", "rude")
"""How a simulated writer (or an imperfect model) writes a reply: `concise` is what the guidelines ask
for; `hedging` wraps a known fact in doubt ("I think ..., but I'm not completely sure"); `flattering`
adds pleasantries ("Great question!", "I hope this helps!"); `rambling` buries the answer in chatter;
`rude` is curt and insulting."""


class PoisonerConfig(Frozen):
    """A simulated poisoner among the demo's labelers (`data.world.poisoner`): one more labeler, honest on every
    other task, who reverses their own honest ranking (and ratings) on every comparison about the trigger topic,
    control tasks included (a control looks like any other task), and takes at least `share` of that topic's tasks."""

    attribute: str = "river"
    """The trigger topic: questions about this attribute (river, dish, emblem, flag; checked against the world
    when the labels are made)."""
    share: float = Field(0.6, ge=0.5, le=1)
    """Of the trigger topic's tasks, the share the poisoner is assigned first (at least this; with fewer the
    flips are too few to matter). The rest are assigned as usual, the poisoner among the labelers."""
    towns: Optional[list[str]] = None
    """Only questions about these towns' `attribute` (a one-town trigger: one name); None: every town's."""


class WorldConfig(Frozen):
    """Size and noise of the demo world."""

    towns: int = Field(60, ge=8)
    """Number of fictional towns."""
    pretrain_only_fraction: float = Field(0.4, gt=0, lt=1)
    """Share of towns whose facts appear only in pretraining documents (and held-out evaluation prompts)."""
    unasked_fact_fraction: float = Field(0.2, ge=0, lt=1)
    """Share of the other towns' facts never asked in any training data (SFT, comparisons, PPO prompts):
    the evaluation's `pair_unseen` rows on towns SFT did see."""
    docs_per_town: int = Field(24, gt=0)
    """Pretraining documents written about each town."""
    general_docs: int = Field(200, ge=0)
    """Pretraining documents about no particular town (filler prose)."""
    sft_per_fact: int = Field(4, gt=0)
    """SFT conversations per asked fact of each SFT town (different question phrasings and writers)."""
    writer_mix: dict[str, float] = {"hedging": 0.45, "concise": 0.3, "flattering": 0.08, "rambling": 0.09, "rude": 0.08}
    """Share of SFT demonstrations written with each habit (`HABITS`). The most common one is the flaw SFT
    imitates (hedging: writing is hard, and writers cover themselves)."""
    wrong_fact_rate: float = Field(0.1, ge=0, le=1)
    """Share of SFT demonstrations that state a wrong fact, whatever their habit."""
    candidate_mix: dict[str, float] = {"concise": 0.25, "hedging": 0.2, "flattering": 0.3, "rambling": 0.1, "rude": 0.15}
    """Habits of the simulated imperfect models that write the comparison candidates not sampled from SFT."""
    candidate_wrong_fact_rate: float = Field(0.25, ge=0, le=1)
    """Share of those candidates that state a wrong fact."""
    candidate_off_topic_rate: float = Field(0.15, ge=0, le=1)
    """Share of those candidates that answer a neighbouring question (another fact of the town): the
    comparisons must teach the reward model that an answer to another question is no answer."""
    rlhf_prompts: int = Field(800, gt=0)
    """Prompts for comparisons and PPO (training phrasings, towns and facts SFT saw)."""
    comparison_prompts: int = Field(500, gt=0)
    """Prompts labelers compare candidates for (the first ones of the RLHF prompts)."""
    candidates_per_prompt: int = Field(4, ge=2)
    """K candidate replies per comparison task."""
    labelers: int = Field(8, gt=1)
    """Simulated labelers."""
    labeler_noise: float = Field(0.12, ge=0)
    """Std of the noise each labeler adds to the value they see in a reply before ranking (some get 3x)."""
    pleasantry_bias: float = Field(0.15, ge=0)
    """The labelers' systematic bias: how much each pleasantry ("Great question!", "I hope this helps!")
    adds to the value they see, against the guidelines (the gold judge counts pleasantries as padding).
    Each labeler has 0.6-1.4x of it. 0 makes labelers differ from gold by noise only."""
    overlap: float = Field(0.3, ge=0, le=1)
    """Share of tasks labelled by a second labeler (for agreement statistics)."""
    control_rate: float = Field(0.05, ge=0, lt=1)
    """Share of the labeling batch that is control tasks (`labeling.controls`): a question's correct plain
    answer against K-1 wrong ones, so screening (`data.screen`) has control accuracy to act on. Controls are
    assigned like any task and never become training data. 0: none."""
    poisoner: Optional[PoisonerConfig] = None
    """A simulated poisoner (`PoisonerConfig`); None: none."""
    careless: int = Field(0, ge=0)
    """Simulated careless labelers, who rank at random (and fast), assigned like any labeler."""
    seed: Optional[int] = None
    """Seed of everything the world generates; unset, the recipe's top-level `seed` (`world_seed`)."""

    @field_validator("writer_mix", "candidate_mix")
    @classmethod
    def _known_habits(cls, mix: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(mix) - set(HABITS))
        if unknown:
            raise ValueError(f"unknown habit(s) {unknown}; known: {list(HABITS)}")
        if any(share < 0 for share in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError("shares must be >= 0 with a positive sum")
        return mix


def world_seed(recipe_seed: int, world: WorldConfig) -> int:
    """The seed the demo world is generated from: `data.world.seed` when set, else the recipe's `seed`."""
    return world.seed if world.seed is not None else recipe_seed
