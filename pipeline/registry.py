"""The one place that knows the stages and the RL algorithms.

Each stage (`STAGES`, in run order) and each RL algorithm of the `ppo` stage (`ALGORITHMS`) declares here its config
type, its inputs (resolved from the recipe and the run directory), the rules it sets between recipe sections, what
preflight checks for it (data it needs, checkpoint keys), its cost for `chatsmith plan`, its train function and its
evaluation. `pipeline.recipe`, `pipeline.preflight`, `pipeline.plan` and `pipeline.runner` ask these entries and
hold no per-stage or per-algorithm branches. The run's data source (the recipe's files, or the demo world) comes
from `data_source`, the one door to `pipeline.demo`.

Adding an RL algorithm: its config type (`stages.config`), its module (`stages.rlhf.*`) and an `Algorithm` entry here.

Inputs are resolved from the recipe: a stage's own explicit paths first, else the run's (the previous stage's
checkpoint, the run's data under DIR/data, labels built under DIR/labels/build). Each stage writes DIR/<name>.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Union

from pydantic import Discriminator, Tag

from stages.config import (DPOConfig, Frozen, GRPOConfig, PPOConfig, PretrainConfig, RewardStageConfig, RLOOConfig,
                           SFTStageConfig)


class MissingInput(ValueError):
    """A stage's input cannot be resolved from the recipe; the message names the key to set."""


@dataclass(frozen=True)
class Cost:
    """What `chatsmith plan` needs of a stage: sequence length and micro-batch (activations), tokens processed,
    trained and frozen parameters, FLOPs."""

    seq_len: int
    micro_batch: int
    tokens: int
    trained: int
    frozen: int
    flops: float


Rule = tuple[str, str]
"""(dotted recipe key, what is wrong): a rule between recipe sections, checked when the recipe loads."""


# ------------------------------------------------------------------------------------------ RL algorithms


@dataclass(frozen=True)
class Algorithm:
    name: str
    config_type: type
    train: Callable[..., dict]
    """(config, inputs, output dir, *, meta, monitor) -> metrics."""
    cost: Callable[[Any, int, int], Cost]
    """(config, parameters of the policy, world size) -> Cost."""
    needs_reward_model: bool = True
    """Trains against the reward model (else it only scores the monitor, when there is one)."""
    needs_comparisons: bool = False
    """Learns from the labelers' comparisons directly."""
    needs_prompts: bool = True
    """Samples replies to the training prompts."""


def _train_ppo(cfg, inputs, out, *, meta, monitor) -> dict:
    from stages.rlhf import ppo

    return ppo.run(cfg, policy=inputs["policy"], reward_model=inputs["reward_model"], prompts=inputs["prompts"],
                   output_dir=out, meta=meta, monitor=monitor)


def _train_trl(cfg, inputs, out, *, meta, monitor) -> dict:
    from stages.rlhf import alternatives

    return alternatives.run(cfg, policy=inputs["policy"], reward_model=inputs.get("reward_model"), prompts=inputs["prompts"],
                            comparisons=inputs.get("comparisons"), output_dir=out, meta=meta, monitor=monitor)


def _online_tokens(cfg, world: int, replies_per_prompt: int) -> tuple[int, int]:
    rollouts = cfg.max_steps * cfg.rollout_batch_size * replies_per_prompt * world
    return cfg.max_prompt_length + cfg.max_new_tokens, rollouts


def _cost_ppo(cfg, params: int, world: int) -> Cost:
    """Policy and value model (a reward-sized backbone) trained; reference and reward model frozen, whole on every
    rank. Per rollout token: a forward to sample, three to score (reference, reward, value), `ppo_epochs` updates."""
    seq, rollouts = _online_tokens(cfg, world, 1)
    tokens = rollouts * seq
    trained = 2 * params
    flops = 2 * params * tokens + 3 * 2 * params * tokens + cfg.ppo_epochs * 6 * trained * tokens
    micro = max(1, cfg.rollout_batch_size // cfg.num_minibatches // cfg.gradient_accumulation_steps)
    return Cost(seq, micro, tokens, trained, 2 * params, flops)


def _cost_group_baseline(cfg, params: int, world: int) -> Cost:
    """GRPO / RLOO: `num_generations` replies per prompt, no value model; reference and reward model frozen. Per token:
    a forward to sample, two to score (reference, reward), `ppo_epochs` updates of the policy."""
    seq, rollouts = _online_tokens(cfg, world, cfg.num_generations)
    tokens = rollouts * seq
    flops = 2 * params * tokens + 2 * 2 * params * tokens + cfg.ppo_epochs * 6 * params * tokens
    replies = cfg.rollout_batch_size * cfg.num_generations
    micro = max(1, replies // cfg.num_minibatches // cfg.gradient_accumulation_steps)
    return Cost(seq, micro, tokens, params, 2 * params, flops)


def _cost_dpo(cfg, params: int, world: int) -> Cost:
    """DPO: chosen and rejected of `batch_size` comparisons per micro-batch, at most max_length tokens each; the policy
    trained, the reference (a frozen copy) forward only."""
    seq = cfg.max_prompt_length + cfg.max_new_tokens
    tokens = cfg.max_steps * cfg.batch_size * cfg.gradient_accumulation_steps * world * 2 * seq
    return Cost(seq, cfg.batch_size, tokens, params, params, 6 * params * tokens + 2 * params * tokens)


ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm("ppo", PPOConfig, _train_ppo, _cost_ppo),
    "grpo": Algorithm("grpo", GRPOConfig, _train_trl, _cost_group_baseline),
    "rloo": Algorithm("rloo", RLOOConfig, _train_trl, _cost_group_baseline),
    "dpo": Algorithm("dpo", DPOConfig, _train_trl, _cost_dpo, needs_reward_model=False, needs_comparisons=True,
                     needs_prompts=False),
}
RL_CONFIGS = {name: algorithm.config_type for name, algorithm in ALGORITHMS.items()}
"""The `ppo` stage's config type for each `algorithm`."""


def _algorithm_of(value) -> str:
    if isinstance(value, dict):
        return value.get("algorithm", "ppo")
    return getattr(value, "algorithm", "ppo")


RLStageConfig = Annotated[Union[tuple(Annotated[kind, Tag(name)] for name, kind in RL_CONFIGS.items())],
                          Discriminator(_algorithm_of)]
"""The `ppo` stage: one of the RL algorithms, chosen by `algorithm` (default `ppo`)."""


class Stages(Frozen):
    pretrain: Optional[PretrainConfig] = PretrainConfig()
    """Pretraining; null skips it (SFT must then have init_from)."""
    sft: Optional[SFTStageConfig] = SFTStageConfig()
    """Supervised fine-tuning; null skips it."""
    reward: Optional[RewardStageConfig] = RewardStageConfig()
    """Reward model; null skips it."""
    ppo: Optional[RLStageConfig] = PPOConfig()
    """RLHF on the reward model (PPO by default; `algorithm` picks GRPO, RLOO or DPO); null skips it."""


# ------------------------------------------------------------------------------------------ stages


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: Callable[[Any, Any], dict[str, Path]]
    """(run, stage config) -> {input name: path}."""
    train: Callable[..., dict]
    """(stage config, inputs, output dir, *, meta, run) -> metrics; what every launched process runs."""
    cost: Callable[[Any, int, int], Cost]
    """(stage config, parameters, world size) -> Cost."""
    start: str
    """The config field naming the checkpoint the stage starts from (else the output of `follows`)."""
    follows: Optional[str] = None
    """The stage whose output it starts from when `start` is unset."""
    rules: Callable[[Any], list[Rule]] = lambda recipe: []
    """(recipe) -> what is wrong between this stage's config and the rest of the recipe."""
    data_keys: Callable[[Any], tuple[str, ...]] = lambda cfg: ()
    """(stage config) -> the `data.*` source keys the stage reads (preflight checks their files)."""
    needs: Callable[[Any], tuple[tuple[str, bool], ...]] = lambda cfg: ()
    """(stage config) -> (kind of rows it needs: sft | comparisons | prompts, whether the stage's own config gives
    them); preflight checks a files run will have them."""
    checkpoints: Callable[[Any], tuple[tuple[str, str], ...]] = lambda cfg: ()
    """(stage config) -> (config field, kind: causal | reward) of every checkpoint path it takes."""
    evaluate: Optional[Callable[..., dict]] = None
    """(run, name, output dir, inputs) -> figures merged into eval.json (the parent process runs it)."""
    chat: bool = False
    """Writes a chat checkpoint whose behaviour the run evaluates (the eval settings enter its hash)."""
    prepare: Optional[Callable[[Any], None]] = None
    """(run) -> None: what the stage needs made before its inputs resolve (pretrain: the token shards)."""

    @property
    def config_type(self):
        return Stages.model_fields[self.name].annotation


def _parent(run, cfg, previous: str, name: str) -> Path:
    parent = cfg.init_from or (run.stage_dir(previous) if getattr(run.recipe.stages, previous) else None)
    if parent is None:
        raise MissingInput(f"stages.{name}.init_from: required when stages.{previous} is null")
    return Path(parent)


def _requires(recipe, name: str, field_name: str, previous: str) -> list[Rule]:
    config = getattr(recipe.stages, name)
    if config and not getattr(config, field_name) and not getattr(recipe.stages, previous):
        return [(f"stages.{name}.{field_name}", f"required when stages.{previous} is null")]
    return []


# ---- pretrain

def _pretrain_inputs(run, cfg) -> dict[str, Path]:
    from pipeline.data import CORPUS_FILE

    inputs = {"tokenizer": run.dir / "tokenizer", "corpus": run.data_path(CORPUS_FILE)}
    if cfg.init_from:
        inputs["init_from"] = Path(cfg.init_from)
    return inputs


def _train_pretrain(cfg, inputs, out, *, meta, run) -> dict:
    from stages import pretrain

    return pretrain.run(cfg, tokenizer_dir=inputs["tokenizer"], corpus=inputs["corpus"], output_dir=out, meta=meta)


def _prepare_pretrain(run) -> None:
    from pipeline.data import ensure_corpus

    ensure_corpus(run)


def _cost_trained_on(tokens_per_sequence: Callable[[Any], int], seq_of: Callable[[Any], int]):
    """A stage that trains every parameter on its sequences: 6 FLOPs per parameter and token."""
    def cost(cfg, params: int, world: int) -> Cost:
        tokens = cfg.max_steps * cfg.batch_size * cfg.gradient_accumulation_steps * world * tokens_per_sequence(cfg)
        return Cost(seq_of(cfg), cfg.batch_size, tokens, params, 0, 6 * params * tokens)

    return cost


# ---- sft

def _sft_inputs(run, cfg) -> dict[str, Path]:
    from pipeline.data import has_built_data, sft_build_dir

    built = sft_build_dir(run) if has_built_data(run) else None  # files and labeler exports, combined
    default_train = built / "sft_train.jsonl" if built else run.data_path("sft_train.jsonl")
    default_eval = built / "sft_eval.jsonl" if built else run.data_path("sft_eval.jsonl")
    inputs = {"init_from": _parent(run, cfg, "pretrain", "sft"), "train_data": Path(cfg.data or default_train)}
    eval_data = cfg.eval_data or (default_eval if default_eval.exists() else None)
    if eval_data:
        inputs["eval_data"] = Path(eval_data)
    return inputs


def _train_sft(cfg, inputs, out, *, meta, run) -> dict:
    from stages import sft

    return sft.run(cfg, init_from=inputs["init_from"], train_data=inputs["train_data"], eval_data=inputs.get("eval_data"),
                   output_dir=out, meta=meta)


# ---- reward

REWARD_HOLDOUT = "holdout"
"""The reward stage writes its held-out reward model (`holdout_fraction`) into DIR/reward/holdout/."""


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


def _train_reward(cfg, inputs, out, *, meta, run) -> dict:
    from stages.rlhf import reward

    return reward.run(cfg, init_from=inputs["init_from"], train_data=inputs["train_data"], eval_data=inputs["eval_data"],
                      output_dir=out, meta=meta, holdout_init_from=inputs.get("holdout_init_from"),
                      holdout_dir=out / REWARD_HOLDOUT)


# ---- the RL stage (`ppo`): the algorithm its config names decides

def _algorithm(cfg) -> Algorithm:
    return ALGORITHMS[cfg.algorithm]


def _rl_inputs(run, cfg) -> dict[str, Path]:
    stages, algorithm = run.recipe.stages, _algorithm(cfg)
    policy = cfg.policy or (run.stage_dir("sft") if stages.sft else None)
    if policy is None:
        raise MissingInput("stages.ppo.policy: required when stages.sft is null")
    inputs = {"policy": Path(policy), "prompts": Path(cfg.prompts or run.data_path("prompts.jsonl"))}
    reward = cfg.reward_model or (run.stage_dir("reward") if stages.reward else None)
    if reward is not None:
        inputs["reward_model"] = Path(reward)
        holdout = Path(reward) / REWARD_HOLDOUT
        if (holdout / "config.json").exists() or (cfg.reward_model is None and stages.reward.holdout_fraction):
            inputs["holdout_reward_model"] = holdout
    elif algorithm.needs_reward_model:
        raise MissingInput(f"stages.ppo.reward_model: required by algorithm {cfg.algorithm} when stages.reward is null")
    if algorithm.needs_comparisons:
        comparisons = _reward_inputs(run, stages.reward)["train_data"] if stages.reward else None
        if comparisons is None and (run.recipe.data.comparisons or run.recipe.data.labels):
            comparisons = run.dir / "labels" / "build" / "comparisons_train.jsonl"
        if comparisons is None:
            raise MissingInput(f"data.comparisons: algorithm {cfg.algorithm} needs comparisons (or a reward stage's data)")
        inputs["comparisons"] = Path(comparisons)
    eval_prompts = Path(cfg.eval_prompts or run.data_path("eval_prompts.jsonl"))
    if eval_prompts.exists():
        inputs["eval_prompts"] = eval_prompts
    return inputs


def _train_rl(cfg, inputs, out, *, meta, run) -> dict:
    """The algorithm's train function, with the run's held-out monitor (`pipeline.eval.monitor`): the dev prompts,
    the reward model, the held-out reward model when the reward stage trained one, and the data source's judge."""
    from pipeline.eval.monitor import Monitor

    monitor = Monitor.for_prompts(inputs.get("eval_prompts"), reward_model=inputs.get("reward_model"),
                                  holdout_reward_model=inputs.get("holdout_reward_model"),
                                  gold=run.source.monitor_judge(cfg), batch_size=cfg.batch_size)
    return _algorithm(cfg).train(cfg, inputs, out, meta=meta, monitor=monitor)


def _rl_rules(recipe) -> list[Rule]:
    cfg = recipe.stages.ppo
    if cfg is None:
        return []
    rules = _requires(recipe, "ppo", "policy", "sft")
    if _algorithm(cfg).needs_reward_model and not cfg.reward_model and not recipe.stages.reward:
        rules.append(("stages.ppo.reward_model", f"required by algorithm {cfg.algorithm} when stages.reward is null"))
    select = getattr(cfg, "select_best", "last")
    if select == "gold" and (not DATA_SOURCES[recipe.data.source].gold_judge or cfg.eval_prompts):
        rules.append(("stages.ppo.select_best", "gold needs a gold judge, which only the demo world's own held-out prompts "
                                                "have (data.source: demo, no stages.ppo.eval_prompts); use reward or last"))
    if select == "holdout_reward" and not cfg.reward_model and not (recipe.stages.reward and recipe.stages.reward.holdout_fraction > 0):
        rules.append(("stages.ppo.select_best", "holdout_reward needs a held-out reward model: set "
                                                "stages.reward.holdout_fraction (e.g. 0.5)"))
    return rules


def _rl_needs(cfg) -> tuple[tuple[str, bool], ...]:
    algorithm = _algorithm(cfg)
    return (*((("prompts", bool(cfg.prompts)),) if algorithm.needs_prompts else ()),
            *((("comparisons", False),) if algorithm.needs_comparisons else ()))


def _rl_cost(cfg, params: int, world: int) -> Cost:
    return _algorithm(cfg).cost(cfg, params, world)


# ---- evaluation hooks (run by the parent process after a stage)

def _evaluate_chat(run, name: str, out: Path, inputs: dict) -> dict:
    from pipeline.eval.run import evaluate_chat_stage

    return evaluate_chat_stage(run, name, out, reference=inputs.get("policy"))


def _evaluate_reward(run, name: str, out: Path, inputs: dict) -> dict:
    from pipeline.eval.run import evaluate_reward

    return evaluate_reward(run, out)


STAGES: dict[str, Stage] = {
    "pretrain": Stage(
        "pretrain", _pretrain_inputs, _train_pretrain, start="init_from", prepare=_prepare_pretrain,
        cost=_cost_trained_on(lambda cfg: cfg.seq_len, lambda cfg: cfg.seq_len),
        data_keys=lambda cfg: ("pretrain_text",), checkpoints=lambda cfg: (("init_from", "causal"),)),
    "sft": Stage(
        "sft", _sft_inputs, _train_sft, start="init_from", follows="pretrain", chat=True, evaluate=_evaluate_chat,
        cost=_cost_trained_on(lambda cfg: cfg.max_length, lambda cfg: cfg.max_length),  # at most: padded to max_length
        rules=lambda recipe: _requires(recipe, "sft", "init_from", "pretrain"),
        data_keys=lambda cfg: ("sft", "sft_eval"), needs=lambda cfg: (("sft", bool(cfg.data)),),
        checkpoints=lambda cfg: (("init_from", "causal"),)),
    "reward": Stage(
        "reward", _reward_inputs, _train_reward, start="init_from", follows="sft", evaluate=_evaluate_reward,
        cost=_cost_trained_on(lambda cfg: 2 * cfg.max_length, lambda cfg: cfg.max_length),  # chosen + rejected
        rules=lambda recipe: _requires(recipe, "reward", "init_from", "sft"),
        data_keys=lambda cfg: ("comparisons", "comparisons_eval"), needs=lambda cfg: (("comparisons", bool(cfg.data)),),
        checkpoints=lambda cfg: (("init_from", "causal"), ("holdout_init_from", "causal"))),
    "ppo": Stage(
        "ppo", _rl_inputs, _train_rl, start="policy", follows="sft", chat=True, evaluate=_evaluate_chat, cost=_rl_cost,
        rules=_rl_rules, needs=_rl_needs,
        data_keys=lambda cfg: ("prompts", *(("comparisons",) if _algorithm(cfg).needs_comparisons else ())),
        checkpoints=lambda cfg: (("policy", "causal"), ("reward_model", "reward"))),
}
STAGE_ORDER = tuple(STAGES)
assert STAGE_ORDER == tuple(Stages.model_fields)


def running(recipe, only: str | None = None) -> list[str]:
    """The stages a run of `recipe` runs (just `only`, when given), in order."""
    return [name for name in STAGES if getattr(recipe.stages, name) is not None and only in (None, name)]


def recipe_rules(recipe) -> list[Rule]:
    """Every stage's rules between recipe sections."""
    return [rule for stage in STAGES.values() for rule in stage.rules(recipe)]


# ------------------------------------------------------------------------------------------ data sources


@dataclass(frozen=True)
class DataSourceSpec:
    factory: str
    """`module:Class` built with the run."""
    gold_judge: bool = False
    """Has a judge that knows the right answers of its own held-out prompts (`select_best: gold`)."""
    gives_stage_data: bool = False
    """Makes every stage's data itself (preflight need not find SFT rows, comparisons or prompts in files)."""


DATA_SOURCES = {
    "files": DataSourceSpec("pipeline.data:FilesSource"),
    "demo": DataSourceSpec("pipeline.demo:Demo", gold_judge=True, gives_stage_data=True),
}
"""`data.source` -> the run's data source: what it writes into DIR/data, its pretraining text, the judges and figures
it adds to the evaluation, what it does before a stage (`pipeline.data.FilesSource` documents the interface)."""


def data_source(run):
    """The run's data source object (`DATA_SOURCES[recipe.data.source]`)."""
    import importlib

    module, _, name = DATA_SOURCES[run.recipe.data.source].factory.partition(":")
    return getattr(importlib.import_module(module), name)(run)

