"""The demo world's settings (`data.world` in a recipe). Kept apart from the generator, so loading a
recipe does not import the demo world."""

from __future__ import annotations

from pydantic import Field

from stages.config import Frozen


class WorldConfig(Frozen):
    """Size and noise of the demo world."""

    towns: int = Field(60, ge=8)
    """Number of fictional towns."""
    pretrain_only_fraction: float = Field(0.4, gt=0, lt=1)
    """Share of towns whose facts appear only in pretraining documents."""
    docs_per_town: int = Field(24, gt=0)
    """Pretraining documents written about each town."""
    general_docs: int = Field(200, ge=0)
    """Pretraining documents about no particular town (filler prose, greetings)."""
    sft_per_fact: int = Field(4, gt=0)
    """SFT conversations per fact of each SFT town (different question phrasings and writers)."""
    writer_mix: dict[str, float] = {"concise": 0.35, "wordy": 0.35, "rambling": 0.1, "rude": 0.1, "wrong": 0.1}
    """Share of SFT conversations written in each style by the simulated labelers."""
    rlhf_prompts: int = Field(800, gt=0)
    """Prompts for comparisons and PPO (training phrasings)."""
    comparison_prompts: int = Field(500, gt=0)
    """Prompts labelers compare candidates for (a subset of the RLHF prompts)."""
    candidates_per_prompt: int = Field(4, ge=2)
    """K candidate replies per comparison task."""
    labelers: int = Field(8, gt=1)
    """Simulated labelers."""
    labeler_noise: float = Field(0.05, ge=0)
    """Std of the noise each labeler adds to the gold score before ranking (some get 3x)."""
    overlap: float = Field(0.3, ge=0, le=1)
    """Share of tasks labelled by a second labeler (for agreement statistics)."""
    seed: int = 0
    """Seed of everything the world generates."""
