"""The stages the runner knows, in order: name -> config type, where its inputs come from, and the
function that trains it. The runner (`pipeline.runner`) is generic over these entries.

Inputs are resolved from the recipe: a stage's own explicit paths first, else the run's (the previous
stage's checkpoint, the run's data under DIR/data, labels built under DIR/labels/build). Each stage
writes its output to DIR/<name>.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.data import CORPUS_FILE, ensure_corpus, has_built_data, sft_build_dir
from stages.config import STAGE_ORDER, Stages


class MissingInput(ValueError):
    """A stage's input cannot be resolved from the recipe; the message names the key to set."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: Callable[[Any, Any], dict[str, Path]]
    """(run, stage config) -> {input name: path}."""
    train: Callable[..., dict]
    """(stage config, inputs, output dir, *, meta, run) -> metrics; what every launched process runs."""
    chat: bool
    """Writes a chat checkpoint whose behaviour the run evaluates (the eval settings enter its hash)."""
    prepare: Callable[[Any], None] | None = None
    """(run) -> None: what the stage needs made before its inputs resolve (pretrain: the token shards)."""

    @property
    def config_type(self):
        return Stages.model_fields[self.name].annotation


# ------------------------------------------------------------------------------------------ inputs


def _pretrain_inputs(run, cfg) -> dict[str, Path]:
    inputs = {"tokenizer": run.dir / "tokenizer", "corpus": run.data_path(CORPUS_FILE)}
    if cfg.init_from:
        inputs["init_from"] = Path(cfg.init_from)
    return inputs


def _parent(run, cfg, previous: str, name: str) -> Path:
    parent = cfg.init_from or (run.stage_dir(previous) if getattr(run.recipe.stages, previous) else None)
    if parent is None:
        raise MissingInput(f"stages.{name}.init_from: required when stages.{previous} is null")
    return Path(parent)


def _sft_inputs(run, cfg) -> dict[str, Path]:
    built = sft_build_dir(run) if has_built_data(run) else None  # files and labeler exports, combined
    default_train = built / "sft_train.jsonl" if built else run.data_path("sft_train.jsonl")
    default_eval = built / "sft_eval.jsonl" if built else run.data_path("sft_eval.jsonl")
    inputs = {"init_from": _parent(run, cfg, "pretrain", "sft"), "train_data": Path(cfg.data or default_train)}
    eval_data = cfg.eval_data or (default_eval if default_eval.exists() else None)
    if eval_data:
        inputs["eval_data"] = Path(eval_data)
    return inputs


def _reward_inputs(run, cfg) -> dict[str, Path]:
    build = run.dir / "labels" / "build"  # the demo's comparisons are built there too
    inputs = {"init_from": _parent(run, cfg, "sft", "reward"),
              "train_data": Path(cfg.data or build / "comparisons_train.jsonl"),
              "eval_data": Path(cfg.eval_data or build / "comparisons_eval.jsonl")}
    if cfg.holdout_fraction:  # the held-out reward model starts where SFT started (`holdout_init_from`)
        sft = run.recipe.stages.sft
        base = cfg.holdout_init_from or (_parent(run, sft, "pretrain", "sft") if sft else None)
        if base is None:
            raise MissingInput("stages.reward.holdout_init_from: required with holdout_fraction when stages.sft is null")
        inputs["holdout_init_from"] = Path(base)
    return inputs


def _ppo_inputs(run, cfg) -> dict[str, Path]:
    stages = run.recipe.stages
    policy = cfg.policy or (run.stage_dir("sft") if stages.sft else None)
    if policy is None:
        raise MissingInput("stages.ppo.policy: required when stages.sft is null")
    inputs = {"policy": Path(policy), "prompts": Path(cfg.prompts or run.data_path("prompts.jsonl"))}
    reward = cfg.reward_model or (run.stage_dir("reward") if stages.reward else None)
    if reward is not None:
        inputs["reward_model"] = Path(reward)
    elif cfg.algorithm != "dpo":  # DPO learns straight from the comparisons: no reward model needed
        raise MissingInput("stages.ppo.reward_model: required when stages.reward is null")
    if cfg.algorithm == "dpo":
        comparisons = _reward_inputs(run, stages.reward)["train_data"] if stages.reward else None
        if comparisons is None and (run.recipe.data.comparisons or run.recipe.data.labels):
            comparisons = run.dir / "labels" / "build" / "comparisons_train.jsonl"
        if comparisons is None:
            raise MissingInput("data.comparisons: algorithm dpo needs comparisons (or a reward stage's data)")
        inputs["comparisons"] = Path(comparisons)
    eval_prompts = Path(cfg.eval_prompts or run.data_path("eval_prompts.jsonl"))
    if eval_prompts.exists():
        inputs["eval_prompts"] = eval_prompts
    return inputs


# ------------------------------------------------------------------------------------------- train


def _train_pretrain(cfg, inputs, out, *, meta, run) -> dict:
    from stages import pretrain

    return pretrain.run(cfg, tokenizer_dir=inputs["tokenizer"], corpus=inputs["corpus"], output_dir=out, meta=meta)


def _train_sft(cfg, inputs, out, *, meta, run) -> dict:
    from stages import sft

    return sft.run(cfg, init_from=inputs["init_from"], train_data=inputs["train_data"], eval_data=inputs.get("eval_data"),
                   output_dir=out, meta=meta)


def _train_reward(cfg, inputs, out, *, meta, run) -> dict:
    from stages.rlhf import reward

    return reward.run(cfg, init_from=inputs["init_from"], train_data=inputs["train_data"], eval_data=inputs["eval_data"],
                      output_dir=out, meta=meta, holdout_init_from=inputs.get("holdout_init_from"))


def _train_rl(cfg, inputs, out, *, meta, run) -> dict:
    """PPO (chatsmith's own loop) or, by `algorithm`, GRPO / RLOO / DPO (TRL's trainers)."""
    common = dict(policy=inputs["policy"], prompts=inputs["prompts"], eval_prompts=inputs.get("eval_prompts"),
                  output_dir=out, meta=meta, gold_scorer=run.gold_scorer(cfg))
    if cfg.algorithm == "ppo":
        from stages.rlhf import ppo

        return ppo.run(cfg, reward_model=inputs["reward_model"], **common)
    from stages.rlhf import alternatives

    return alternatives.run(cfg, reward_model=inputs.get("reward_model"), comparisons=inputs.get("comparisons"), **common)


STAGES: dict[str, StageSpec] = {
    "pretrain": StageSpec("pretrain", _pretrain_inputs, _train_pretrain, chat=False, prepare=ensure_corpus),
    "sft": StageSpec("sft", _sft_inputs, _train_sft, chat=True),
    "reward": StageSpec("reward", _reward_inputs, _train_reward, chat=False),
    "ppo": StageSpec("ppo", _ppo_inputs, _train_rl, chat=True),
}
assert tuple(STAGES) == STAGE_ORDER
