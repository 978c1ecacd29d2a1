"""Typed recipes: YAML + dotted `key=value` overrides -> a frozen, validated `Recipe`.

    recipe = load_recipe("recipes/tiny-cpu.yaml", ["stages.ppo.kl_coef=0.05", "seed=3"])

An unknown key or a value of the wrong type is a `RecipeError` naming the dotted key and what was
expected. Defaults live in the types (here and in `stages.config`), never in the code that reads them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.demo_world import WorldConfig
from stages.config import Stages, TokenizerConfig


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key."""


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class LabelsSource(Frozen):
    """A labeler export to ingest and build into SFT conversations and comparisons."""

    format: Literal["native", "hh-rlhf", "oasst", "label-studio", "argilla"]
    """Export format (see `chatsmith labels ingest --help`)."""
    path: str
    """The export file."""
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    """Share of prompts held out for evaluation (split by prompt)."""


class DataConfig(Frozen):
    """Where each stage's data comes from: the built-in demo world, or your files."""

    source: Literal["demo", "files"] = "demo"
    """`demo` generates everything from the demo world; `files` reads the paths below."""
    world: WorldConfig = WorldConfig()
    """The demo world's size and noise (source: demo)."""
    pretrain_text: Optional[str] = None
    """JSONL of `{"text": ...}` documents for pretraining (source: files)."""
    sft: Optional[str] = None
    """JSONL of `{"messages": [...]}` conversations (source: files)."""
    sft_eval: Optional[str] = None
    """Held-out conversations (source: files)."""
    comparisons: Optional[str] = None
    """JSONL of `{"prompt", "chosen", "rejected"[, "margin"]}` (source: files)."""
    comparisons_eval: Optional[str] = None
    """Held-out comparisons (source: files)."""
    labels: Optional[LabelsSource] = None
    """A labeler export to ingest and build instead of `sft`/`comparisons` files."""
    prompts: Optional[str] = None
    """JSONL prompts for PPO (source: files)."""
    eval_prompts: Optional[str] = None
    """JSONL held-out prompts for evaluation (source: files)."""
    label_with_sft_samples: int = Field(2, ge=0)
    """Demo: of the K candidates per comparison task, how many are sampled from the SFT checkpoint
    (the rest are written by simulated imperfect models)."""


class EvalConfig(Frozen):
    """Behaviour evaluation of the chat checkpoints on held-out prompts."""

    max_new_tokens: int = Field(48, gt=0)
    """Longest reply generated for evaluation."""
    batch_size: int = Field(64, gt=0)
    """Prompts per generate call."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the sampled evaluation (gold score of the policy as it samples)."""
    seed: int = 1234
    """Seed of the sampled evaluation: SFT and PPO are scored on the same prompts with the same seed."""
    report_samples: int = Field(4, ge=0)
    """Prompts whose answers from every checkpoint appear side by side in report.md."""


class LaunchConfig(Frozen):
    """How each stage's processes are started."""

    config: str = "single"
    """`single`, `ddp`, `zero2`, `zero3`, `zero3-offload`, or a path to an accelerate config YAML."""
    num_processes: int = Field(1, gt=0)
    """Processes per machine."""
    num_machines: int = Field(1, gt=0)
    """Machines in the job."""
    machine_rank: int = Field(0, ge=0)
    """This machine's rank."""
    main_process_ip: str = "127.0.0.1"
    """Address of machine 0."""
    main_process_port: int = Field(29500, gt=0)
    """Port on machine 0."""


class Recipe(Frozen):
    """A whole run: data, tokenizer, the four stages, evaluation, launch."""

    name: str = "run"
    """A name for the run (shown in the report)."""
    seed: int = 0
    """Seed of everything not seeded more specifically."""
    data: DataConfig = DataConfig()
    """Data sources."""
    tokenizer: TokenizerConfig = TokenizerConfig()
    """Tokenizer and chat template."""
    stages: Stages = Stages()
    """Stage configs; a null stage is skipped."""
    eval: EvalConfig = EvalConfig()
    """Behaviour evaluation."""
    launch: LaunchConfig = LaunchConfig()
    """Process launch."""


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not key=value (e.g. stages.ppo.kl_coef=0.05)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise RecipeError(f"{'.'.join(path[: i + 1])} is a value, not a section: cannot set {'.'.join(path)}")
            node = child
        node[path[-1]] = value
    return data


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the section a validation error points into (for 'did you mean')."""
    from typing import get_args

    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = next((a for a in (field.annotation, *get_args(field.annotation))
                        if isinstance(a, type) and issubclass(a, BaseModel)), None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def validate(data: dict, *, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        lines = []
        for item in error.errors():
            loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
            key = ".".join(str(p) for p in loc) or "(top level)"
            if item["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(loc[-1]), _known_keys(Recipe, loc), n=1)
                hint = f"; did you mean {'.'.join(map(str, (*loc[:-1], close[0])))}?" if close else ""
                lines.append(f"{key}: unknown key{hint}")
            else:
                lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
        raise RecipeError(f"{source}: " + "; ".join(lines)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise RecipeError(f"cannot read recipe {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections (name, data, tokenizer, stages, ...)")
    data = apply_overrides(data, list(overrides or []))
    return validate(data, source=str(path))


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
