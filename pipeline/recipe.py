"""Typed recipes: YAML + dotted `key=value` overrides -> a frozen, validated `Recipe`.

    recipe = load_recipe("recipes/tiny-cpu.yaml", ["stages.ppo.kl_coef=0.05", "seed=3"])

An unknown key or a value of the wrong type is a `RecipeError` naming the dotted key and what was
expected. Defaults live in the types (here and in `stages.config`), never in the code that reads them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator, model_validator

from labeling.screening import ScreenConfig
from pipeline.demo.config import WorldConfig
from pipeline.registry import DATA_SOURCES, RL_CONFIGS, STAGE_ORDER, Stages, recipe_rules
from stages.config import Frozen, TokenizerConfig, cross_field_error
from stages.data.sources import Source


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key."""


class LabelsSource(Frozen):
    """A labeler export to ingest; its demonstrations and rewrites join the SFT data, its comparisons the
    reward data (combined with `data.sft` / `data.comparisons`, never replacing them)."""

    format: str
    """Export format: one of `labeling.readers.FORMATS` (see `chatsmith labels ingest --help`)."""
    path: str
    """The export file."""
    tasks: Optional[str] = None
    """label-studio: the tasks.jsonl the export answers (annotations of unknown tasks are set aside)."""
    hh_demonstrations: bool = False
    """hh-rlhf: also take each chosen transcript as an SFT demonstration (off: HH gives comparisons only)."""

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from labeling.readers import FORMATS

        if value not in FORMATS:
            raise ValueError(f"{value!r} is not one of {list(FORMATS)}")
        return value


def _sources_of(kind: str):
    """A recipe's data value (a path, a list of paths, or Source mappings) as Source mappings of `kind`."""

    def convert(value):
        if value is None:
            return None
        items = [value] if isinstance(value, (str, dict)) else list(value)
        paths = [item for item in items if isinstance(item, str)]
        mappings = [({"kind": kind, **item} if isinstance(item, dict) else item) for item in items if not isinstance(item, str)]
        return ([{"paths": paths, "kind": kind}] if paths else []) + mappings

    return BeforeValidator(convert)


TextSources = Annotated[Optional[list[Source]], _sources_of("text")]
ConversationSources = Annotated[Optional[list[Source]], _sources_of("conversations")]
ComparisonSources = Annotated[Optional[list[Source]], _sources_of("comparisons")]
PromptSources = Annotated[Optional[list[Source]], _sources_of("prompts")]


def _labels_list(value):
    return [value] if isinstance(value, dict) else value


class DataConfig(Frozen):
    """Where each stage's data comes from: the built-in demo world, or your files.

    Every data key takes a path (a file, a directory, a glob), a list of paths, or a list of sources
    `{paths, format, text_field, weight, name}` (`stages.data.sources.Source`); formats: .jsonl,
    .jsonl.gz, .jsonl.zst, .parquet, .txt, or a `datasets` dir saved with `save_to_disk`. Several
    sources are combined, never one replacing another."""

    source: Literal[tuple(DATA_SOURCES)] = "demo"
    """`demo` generates everything from the demo world; `files` reads the keys below."""
    world: WorldConfig = WorldConfig()
    """The demo world's size and noise (source: demo)."""
    pretrain_text: TextSources = None
    """Pretraining documents (`text_field`, default "text"), tokenized once into cached token shards and
    streamed; several sources form a mixture by `weight`. Never copied into the run directory."""
    sft: ConversationSources = None
    """SFT conversations: rows with `messages`, ShareGPT `conversations` (from/value) or alpaca
    (instruction/input/output)."""
    sft_eval: ConversationSources = None
    """Held-out conversations (their prompts are kept out of training)."""
    comparisons: ComparisonSources = None
    """Comparisons `{"prompt", "chosen", "rejected"[, "margin"]}` (TRL's preference form)."""
    comparisons_eval: ComparisonSources = None
    """Held-out comparisons."""
    labels: Annotated[list[LabelsSource], BeforeValidator(_labels_list)] = []
    """Labeler exports to ingest (`DIR/labels/user-ingest`) and build together with `sft` / `comparisons`
    (`DIR/labels/build`)."""
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    """Share of prompts of `labels`, `sft` and `comparisons` held out for evaluation (split by prompt)."""
    screen: ScreenConfig = ScreenConfig()
    """Labeler screening (`labeling.screening`): every build of labeler judgments writes each labeler's figures
    (control accuracy, peer agreement, ties, time, with 95% CIs) to `screening.json` and flags those below the
    thresholds; `exclude_flagged: true` also leaves the flagged labelers' judgments out of training (kept in
    `excluded.jsonl` with the reason)."""
    prompts: PromptSources = None
    """Prompts for PPO: rows with `prompt` or `messages`."""
    eval_prompts: PromptSources = None
    """Held-out prompts for evaluation; a row's `split` ("dev" or "test") says which part it is in."""
    cache_dir: Optional[str] = None
    """Where token shards are cached, keyed by (sources fingerprint, tokenizer, reader settings); None:
    `$CHATSMITH_CACHE/token-shards` or `~/.cache/chatsmith/token-shards`. Must be a shared filesystem for
    multi-node runs."""
    tokenize_workers: Optional[int] = Field(None, gt=0)
    """Processes that tokenize the pretraining text; None: the CPU count."""
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    """Stop when more than this share of a source's records cannot be used (each is skipped and counted)."""
    verify_sources: bool = False
    """Re-hash the pretraining files' contents when reusing their token shards (the cheap fingerprint is
    names, sizes and modification times)."""
    label_with_sft_samples: int = Field(2, ge=0)
    """Demo: of the K candidates per comparison task, how many are sampled from the SFT checkpoint
    (the rest are written by simulated imperfect models)."""


class EvalConfig(Frozen):
    """Evaluation of the chat checkpoints on held-out test prompts (`pipeline.eval.run`): greedy, at the
    chat default (T=0.7, top-p 0.95) and at T=1."""

    max_new_tokens: int = Field(48, gt=0)
    """Longest reply generated for evaluation."""
    batch_size: int = Field(64, gt=0)
    """Prompts per generate call."""
    seed: int = 1234
    """Seed of the sampled decodings: every checkpoint is answered on the same prompts with the same seed."""
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

    @model_validator(mode="after")
    def _stages_fit_together(self):
        """Rules between sections, checked when the recipe loads (not hours later when a stage starts): each stage's
        own (`pipeline.registry`), and the tokenizer's."""
        problems = recipe_rules(self)
        if not self.tokenizer.train and not self.tokenizer.from_checkpoint and self.stages.pretrain:
            problems.append(("tokenizer.from_checkpoint", "required when tokenizer.train is false"))
        if problems:
            keys = [key for key, _ in problems]
            raise cross_field_error(tuple(keys), "; ".join(f"{key}: {why}" for key, why in problems))
        return self


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


RENAMED = {
    ("stages", "ppo", "dpo_beta"): "renamed; use stages.ppo.beta (with stages.ppo.algorithm: dpo)",
    ("eval", "temperature"): "removed; the evaluation decodes greedy, at the chat default (T=0.7, top-p 0.95) and at T=1",
    ("data", "labels", "eval_fraction"): "moved; use data.eval_fraction (one split for every labeler export and file)",
}
"""Keys an earlier chatsmith accepted -> what to write now (see CHANGELOG.md)."""


def _section_type(model: Any, part: str) -> Any:
    """The config type of `part` inside `model`: the field's model, or for the RL stage's union the
    type the algorithm tag names."""
    if part in RL_CONFIGS and not (isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields):
        return RL_CONFIGS[part]
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
        return None
    annotation = model.model_fields[part].annotation
    candidates = [annotation, *get_args(annotation)]
    for arg in list(candidates):
        candidates += get_args(arg)  # Optional[Annotated[Union[...]]] nests
    models = list(dict.fromkeys(a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)))
    return models[0] if len(models) == 1 else annotation


def _user_loc(loc: tuple) -> tuple[tuple, Any]:
    """The dotted path a user wrote (pydantic adds union tags such as `ppo` after `stages.ppo`) and
    the config type of the section it points into."""
    current: Any = Recipe
    path: list = []
    for part in loc:
        if isinstance(part, str) and part.startswith("function-after"):
            continue
        if isinstance(part, str) and part in RL_CONFIGS and path[-1:] == ["ppo"] and path[-2:-1] == ["stages"]:
            current = RL_CONFIGS[part]  # the tag: not a key the user wrote
            continue
        path.append(part)
        current = _section_type(current, part) if not isinstance(part, int) else None
    return tuple(path), current


def _unknown_key_message(path: tuple, parent: Any) -> str:
    key = ".".join(map(str, path))
    named = tuple(part for part in path if not isinstance(part, int))  # data.labels.0.x -> data.labels.x
    if named in RENAMED:
        return f"{key}: {RENAMED[named]}"
    known = list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
    close = difflib.get_close_matches(str(path[-1]), known, n=1)
    return f"{key}: unknown key" + (f"; did you mean {'.'.join(map(str, (*path[:-1], close[0])))}?" if close else "")


def _other_algorithm_keys(items: list[dict]) -> tuple[list[dict], str | None]:
    """Keys under stages.ppo that belong to another RL algorithm, gathered into one line (switching
    `algorithm` in a recipe written for PPO leaves several)."""
    foreign, rest, algorithm = [], [], None
    for item in items:
        loc = tuple(item["loc"])
        if item["type"] == "extra_forbidden" and loc[:2] == ("stages", "ppo") and len(loc) == 4 and loc[2] in RL_CONFIGS \
                and loc[3] not in RL_CONFIGS[loc[2]].model_fields and any(loc[3] in k.model_fields for k in RL_CONFIGS.values()):
            foreign.append(loc[3])
            algorithm = loc[2]
        else:
            rest.append(item)
    if not foreign:
        return rest, None
    owners = sorted({name for key in foreign for name, kind in RL_CONFIGS.items() if key in kind.model_fields})
    return rest, (f"stages.ppo.{', stages.ppo.'.join(foreign)}: not settings of stages.ppo.algorithm {algorithm} "
                  f"(they belong to {' / '.join(owners)}); remove them from the recipe or change the algorithm")


def _error_line(item: dict) -> str:
    path, _ = _user_loc(tuple(item["loc"]))
    key = ".".join(str(p) for p in path) or "(top level)"
    if item["type"] == "extra_forbidden":
        return _unknown_key_message(path, _user_loc(tuple(item["loc"])[:-1])[1] if len(path) > 1 else Recipe)
    if item["type"] == "cross_field":
        fields = item.get("ctx", {}).get("fields", [])
        if not path:  # a rule of the whole recipe: the message names each key already
            return item["msg"]
        return f"{', '.join(f'{key}.{f}' for f in fields) or key}: {item['msg']}"
    if item["type"] == "union_tag_invalid":
        context = item.get("ctx", {})
        return f"{key}.algorithm: {context.get('tag')!r} is not one of {context.get('expected_tags')}"
    return f"{key}: {item['msg']} (got {item.get('input')!r})"


EVAL_SEED_OFFSET = 1234
"""`eval.seed` defaults to the recipe's seed plus this (1234 for seed 0, as before)."""


def seed_everything(data: dict) -> dict:
    """The recipe's top-level `seed` drives everything — the demo world, every stage, the evaluation's
    sampling — unless a section sets its own: one `seed=N` (or `--seeds`) changes the whole run."""
    seed = data.get("seed", 0)
    if not isinstance(seed, int):
        return data  # validation reports it
    stages = data.setdefault("stages", {}) if isinstance(data.get("stages", {}), dict) else {}
    for name in STAGE_ORDER:
        if name not in stages:
            stages[name] = {}  # the stage's defaults, with the recipe's seed
        if isinstance(stages[name], dict):
            stages[name].setdefault("seed", seed)
    for path, value in ((("data", "world"), seed), (("eval",), seed + EVAL_SEED_OFFSET)):
        node = data
        for part in path:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault("seed", value)
    return data


def validate(data: dict, *, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(seed_everything(data))
    except ValidationError as error:
        items, foreign = _other_algorithm_keys(error.errors())
        lines = list(dict.fromkeys([*([foreign] if foreign else []), *(_error_line(item) for item in items)]))
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
