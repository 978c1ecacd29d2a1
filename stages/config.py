"""Typed configuration of every stage.

Each field is documented once, here. Defaults live in these types, never in stage code.
Configs are frozen pydantic models: a resolved config does not change; derived values are locals.
Loading a recipe (YAML + dotted overrides) is `pipeline.recipe`'s job; stages only receive these.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError


class Frozen(BaseModel):
    """Base of every config type: unknown keys are errors, a validated config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def cross_field_error(fields: tuple[str, ...], message: str) -> PydanticCustomError:
    """A rule between several fields of one config; the recipe loader names each field's dotted key."""
    return PydanticCustomError("cross_field", message, {"fields": list(fields)})


class ModelArch(Frozen):
    """A causal LM built from a config (random init). Any `transformers` architecture whose config
    takes these common names works; Llama is the default."""

    architecture: str = "llama"
    """`model_type` understood by `transformers.AutoConfig.for_model` (llama, qwen2, mistral, gpt_neox...)."""
    hidden_size: int = Field(192, gt=0)
    """Width of the residual stream."""
    num_hidden_layers: int = Field(4, gt=0)
    """Number of transformer blocks."""
    num_attention_heads: int = Field(6, gt=0)
    """Attention heads (hidden_size must divide by it)."""
    num_key_value_heads: Optional[int] = None
    """Grouped-query attention heads; None means as many as attention heads."""
    intermediate_size: int = Field(512, gt=0)
    """Width of the MLP."""
    max_position_embeddings: int = Field(512, gt=0)
    """Longest sequence the model is built for."""
    tie_word_embeddings: bool = True
    """Share input and output embeddings (fewer parameters on small models)."""

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        return self


class TrainCommon(Frozen):
    """Settings every training stage shares."""

    max_steps: int = Field(100, gt=0)
    """Optimizer steps to train (PPO: updates)."""
    save_steps: int = Field(50, gt=0)
    """Write a resumable checkpoint under `resume/` every this many optimizer steps."""
    logging_steps: int = Field(10, gt=0)
    """Write a line to metrics.jsonl every this many optimizer steps."""
    learning_rate: float = Field(1e-3, gt=0)
    """Peak learning rate."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps before the schedule."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warm-up."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    batch_size: int = Field(16, gt=0)
    """Micro-batch size per process."""
    gradient_accumulation_steps: int = Field(1, gt=0)
    """Micro-batches per optimizer step."""
    seed: int = 0
    """Seed for initialisation, data order and sampling."""
    bf16: bool = False
    """Train in bfloat16 mixed precision (GPU only; ignored with a warning on CPU)."""
    attn_implementation: Optional[str] = None
    """`sdpa`, `eager` or `flash_attention_2` (GPU only); None lets transformers choose."""
    gradient_checkpointing: bool = False
    """Trade compute for memory on large models."""
    keep_resume: bool = False
    """Keep the `resume/` directory after the stage finishes."""
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = []
    """Experiment trackers that also get the metrics of `metrics.jsonl` (none by default): files under the stage's
    `tracking/` dir (TensorBoard events; W&B runs, offline with WANDB_MODE=offline), MLflow where MLFLOW_TRACKING_URI
    points. Each is an extra: `pip install 'chatsmith[tensorboard]'` (or `[wandb]`, `[mlflow]`)."""

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, value: list[str]) -> list[str]:
        # Checked when the recipe is loaded (find_spec imports nothing), not hours later when the stage starts.
        import importlib.util

        modules = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
        missing = [name for name in dict.fromkeys(value) if not any(importlib.util.find_spec(m) for m in modules[name])]
        if missing:
            raise PydanticCustomError("tracker_missing", f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                                      f"not installed: pip install 'chatsmith[{','.join(missing)}]'")
        return list(dict.fromkeys(value))


class TokenizerConfig(Frozen):
    """Where the tokenizer and chat template come from. Set once; every later stage checks them."""

    train: bool = True
    """Train a byte-level BPE on the pretraining text; False takes the tokenizer of `from_checkpoint`."""
    vocab_size: int = Field(1024, ge=300)
    """Vocabulary size of a trained tokenizer (special tokens included)."""
    from_checkpoint: Optional[str] = None
    """A local Hugging Face checkpoint dir whose tokenizer to use when `train` is false."""
    train_sample_bytes: int = Field(1 << 30, gt=0)
    """Bytes of pretraining text a trained tokenizer learns from: a sample streamed from the sources
    (each by its weight, from the start of its files in a seeded order), never the whole corpus."""
    chat_template: Literal["native", "chatsmith"] = "native"
    """`native` keeps the checkpoint's own chat template and special tokens (ChatML stays ChatML, no new tokens;
    chatsmith's template only when it has none); `chatsmith` replaces it with chatsmith's (new tokens, new embeddings)."""


class PretrainConfig(TrainCommon):
    """Next-token prediction on packed documents."""

    model: ModelArch = ModelArch()
    """Architecture of a randomly initialised model (ignored when `init_from` is set)."""
    init_from: Optional[str] = None
    """A local causal-LM checkpoint dir to continue pretraining from."""
    seq_len: int = Field(128, gt=8)
    """Tokens per packed training sequence."""
    eval_fraction: float = Field(0.02, gt=0, lt=0.5)
    """Fraction of documents held out for eval loss and bits per byte."""
    eval_batches: int = Field(20, gt=0)
    """Batches of held-out sequences to evaluate."""
    trust_remote_code: bool = False
    """Allow model code shipped inside a checkpoint (off unless you trust it)."""


class LoraConfig(Frozen):
    enabled: bool = False
    """Train a LoRA adapter instead of all weights (merged into the saved checkpoint)."""
    r: int = Field(16, gt=0)
    """Adapter rank."""
    alpha: int = Field(32, gt=0)
    """Adapter scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter input."""
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """Module names to adapt."""


class TRLDataConfig(Frozen):
    """Data preparation of the stages trained by a TRL trainer."""

    dataset_num_proc: Optional[int] = Field(None, gt=0)
    """Processes that tokenize the stage's data (TRL's `dataset_num_proc`; in SFT also the assistant masks,
    through `datasets.map`); None: one, in the training process."""


class SFTStageConfig(TrainCommon, TRLDataConfig):
    """Supervised fine-tuning on conversations (TRL SFTTrainer), loss on assistant tokens only."""

    data: Optional[str] = None
    """JSONL of `{"messages": [...]}` conversations; None uses the run's data (demo world or ingested labels)."""
    eval_data: Optional[str] = None
    """Held-out conversations for eval loss; None uses the run's."""
    init_from: Optional[str] = None
    """Checkpoint to fine-tune; None means the run's pretrain output."""
    max_length: int = Field(256, gt=8)
    """Longest conversation in tokens (longer ones are truncated)."""
    num_train_epochs: Optional[float] = None
    """Stop after this many epochs even if max_steps is not reached."""
    packing: bool = False
    """Pack conversations padding-free (check packed == padded loss for your attention implementation)."""
    lora: LoraConfig = LoraConfig()
    """LoRA instead of full fine-tuning."""
    trust_remote_code: bool = False
    """Allow model code shipped inside a checkpoint."""


class RewardStageConfig(TrainCommon, TRLDataConfig):
    """Reward model (TRL RewardTrainer) initialised from the SFT checkpoint, on comparisons."""

    data: Optional[str] = None
    """JSONL of `{"prompt", "chosen", "rejected"[, "margin"]}` (conversational); None uses the run's."""
    eval_data: Optional[str] = None
    """Held-out comparisons for pairwise accuracy; None uses the run's."""
    init_from: Optional[str] = None
    """Checkpoint to start from; None means the run's SFT output."""
    max_length: int = Field(256, gt=8)
    """Longest prompt + reply in tokens."""
    num_train_epochs: Optional[float] = None
    """Stop after this many epochs even if max_steps is not reached."""
    center_rewards_coefficient: Optional[float] = None
    """Auxiliary loss that keeps rewards centred on zero (TRL)."""
    use_margin: bool = True
    """Use the comparisons' `margin` (from ratings) in the loss when present."""
    holdout_fraction: float = Field(0.0, ge=0, lt=1)
    """Share of the training comparisons (chosen by a hash of the prompt) that train a second, held-out reward
    model instead of this one (`DIR/reward/holdout/`, the same settings). With no gold judge (real data) it is
    the check on over-optimisation: it scores the RL stage's monitor answers (`monitor_holdout_reward_score`),
    and `stages.ppo.select_best: holdout_reward` keeps the checkpoint it rates best. 0: none (half the cost)."""
    holdout_init_from: Optional[str] = None
    """Checkpoint the held-out reward model starts from (the tokenizer is the reward model's); None: the one SFT
    started from (the run's pretrain output, or `stages.sft.init_from`). A different start than the reward
    model's matters: one fine-tuned from the same SFT checkpoint shares its blind spots, and a policy that
    fools one fools both (on the demo, degenerate replies such as "iviviv" score above correct answers with both)."""
    lora: LoraConfig = LoraConfig()
    """LoRA instead of full fine-tuning."""
    trust_remote_code: bool = False
    """Allow model code shipped inside a checkpoint."""


class RLCommon(TrainCommon):
    """What every RL algorithm of the `ppo` stage shares: the policy, the data, sampling, evaluation."""

    policy: Optional[str] = None
    """Causal-LM checkpoint dir to optimise; None means the run's SFT output."""
    reward_model: Optional[str] = None
    """Sequence-classification checkpoint dir (num_labels=1); None means the run's reward output."""
    prompts: Optional[str] = None
    """JSONL, one `{"prompt": str}` or `{"messages": [...]}` per line; None uses the run's prompts."""
    eval_prompts: Optional[str] = None
    """Held-out prompts for the reward/gold monitor; None uses the run's eval prompts when present."""
    lora: LoraConfig = LoraConfig()
    """LoRA on the policy instead of training all its weights (merged into the saved checkpoint). With
    PPO the reference is then the policy with its adapter disabled, not a second copy; the value model
    still trains in full."""
    learning_rate: float = Field(1e-5, gt=0)
    """Policy learning rate."""
    max_new_tokens: int = Field(48, gt=0)
    """Longest sampled reply."""
    max_prompt_length: int = Field(128, gt=0)
    """Prompts longer than this (in tokens) are truncated from the left."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature; log-probs are computed from logits divided by it."""
    top_k: int = Field(0, ge=0)
    """Top-k sampling (0 = off)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling (1 = off)."""
    num_eval_prompts: int = Field(64, gt=0)
    """Held-out prompts the monitor scores."""
    generation_batch_size: Optional[int] = Field(None, gt=0)
    """Prompts per `generate` call during rollouts and evals; None = the whole rollout batch at once."""
    trust_remote_code: bool = False
    """Allow model code shipped inside a checkpoint."""


class OnlineRLCommon(RLCommon):
    """Algorithms that sample replies from the policy during training and score them with the reward model."""

    rollout_batch_size: int = Field(16, gt=0)
    """Prompts per update (per process)."""
    ppo_epochs: int = Field(4, gt=0)
    """Passes over each rollout batch."""
    num_minibatches: int = Field(1, gt=0)
    """Minibatches per pass over a rollout batch (each an optimizer step)."""
    kl_coef: float = Field(0.05, ge=0)
    """KL penalty coefficient toward the reference (PPO: per token, the initial value when adaptive;
    GRPO / RLOO: TRL's `beta`)."""
    cliprange: float = Field(0.2, gt=0)
    """Policy ratio clip (TRL's `epsilon` for GRPO / RLOO)."""
    normalize_reward: bool = True
    """Normalise raw rewards with the mean/std the reward stage saved (reward_stats.json)."""
    missing_eot_penalty: Optional[float] = -1.0
    """Reward added to replies that end without the end-of-turn token; None = off."""


class PPOConfig(OnlineRLCommon):
    """chatsmith's PPO on accelerate: policy from SFT, frozen reference, value model, frozen reward model."""

    algorithm: Literal["ppo"] = "ppo"
    """`ppo` (chatsmith's own), `grpo`, `rloo` (TRL's trainers, the reward model as reward function)
    or `dpo` (TRL's DPOTrainer on the comparisons); each has its own settings."""
    value_learning_rate: Optional[float] = None
    """Value-model learning rate; None means the policy's."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """KL estimator for the per-token penalty."""
    adaptive_kl: bool = False
    """Adapt kl_coef toward `target_kl` (Ziegler et al.)."""
    target_kl: float = Field(6.0, gt=0)
    """Target sequence KL for the adaptive controller."""
    kl_horizon: int = Field(10000, gt=0)
    """Horizon of the adaptive controller."""
    kl_limit: Optional[float] = None
    """Sequence KL above which to act (see `kl_limit_action`); None = no limit."""
    kl_limit_action: Literal["warn", "stop"] = "warn"
    """What to do when KL exceeds kl_limit."""
    gamma: float = Field(1.0, ge=0, le=1)
    """GAE discount."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE lambda."""
    cliprange_value: float = Field(0.2, gt=0)
    """Value clip."""
    vf_coef: float = Field(0.1, ge=0)
    """Value-loss weight."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean, unit variance per batch."""
    value_init: Literal["reward", "zero"] = "reward"
    """Value model from the reward model, or from the policy with a zero-initialised head."""
    eval_steps: int = Field(10, gt=0)
    """Score the held-out prompts (reward model + gold judge) every this many updates."""
    select_best: Literal["last", "gold", "reward", "holdout_reward"] = "last"
    """Which checkpoint becomes the stage output: the last, or the best on the monitor's dev prompts by gold
    score (needs a gold judge: the demo world's own held-out prompts), by the reward model's score (which the
    policy optimises: it favours the most over-optimised), or by the held-out reward model's
    (`stages.reward.holdout_fraction` > 0; for real runs)."""
    keep_updates: bool = False
    """Also write the policy of every monitor evaluation (each `eval_steps` update and the last) as a loadable
    checkpoint, `DIR/ppo/updates/update-N/`, to judge each one afterwards (`make demo-overopt`)."""
    logprobs_from_generation: bool = True
    """Take the rollout log-probs from the logits `generate` already computed (saves one policy
    forward per update). Turn off under bf16, where KV-cached and full-forward logits differ enough
    to move the first PPO ratio away from 1."""
    adam_eps: float = Field(1e-5, gt=0)
    """AdamW epsilon (1e-5 as in the "N implementation details of RLHF with PPO")."""
    entropy_warn_below: float = Field(0.05, ge=0)
    """Warn (entropy collapse) when the mean per-token entropy of sampled replies falls below this."""
    ratio_warn_above: float = Field(5.0, gt=1)
    """Warn (extreme ratios) when any token's PPO ratio exceeds this, or falls below its inverse."""
    length_drift_warn: float = Field(2.0, gt=1)
    """Warn (length drift) when the mean reply length moves by more than this factor from the first update's."""

    @model_validator(mode="after")
    def _minibatches_divide(self):
        if self.rollout_batch_size % self.num_minibatches:
            raise cross_field_error(
                ("rollout_batch_size", "num_minibatches"),
                f"rollout_batch_size={self.rollout_batch_size} prompts do not split into num_minibatches={self.num_minibatches} equal minibatches",
            )
        minibatch = self.rollout_batch_size // self.num_minibatches
        if minibatch % self.gradient_accumulation_steps:
            raise cross_field_error(
                ("rollout_batch_size", "num_minibatches", "gradient_accumulation_steps"),
                f"a minibatch of {minibatch} prompts does not split into gradient_accumulation_steps={self.gradient_accumulation_steps} micro-batches",
            )
        return self


class GroupBaselineCommon(OnlineRLCommon):
    """GRPO and RLOO (TRL's trainers): `num_generations` replies per prompt, each judged against the
    others of its group instead of a value model. One update is `ppo_epochs` passes (TRL's
    `num_iterations`) of `num_minibatches` optimizer steps, so `max_steps` (updates) becomes
    max_steps * ppo_epochs * num_minibatches TRL steps."""

    num_generations: int = Field(4, ge=2)
    """Replies sampled per prompt; each is judged against the others of its group."""

    @model_validator(mode="after")
    def _replies_divide(self):
        replies = self.rollout_batch_size * self.num_generations
        micro_steps = self.num_minibatches * self.gradient_accumulation_steps
        if replies % micro_steps:
            raise cross_field_error(
                ("rollout_batch_size", "num_generations", "num_minibatches", "gradient_accumulation_steps"),
                f"rollout_batch_size x num_generations = {replies} replies do not split into num_minibatches x "
                f"gradient_accumulation_steps = {micro_steps} equal micro-batches",
            )
        return self


class GRPOConfig(GroupBaselineCommon):
    """TRL's GRPOTrainer with the reward model as the reward function."""

    algorithm: Literal["grpo"] = "grpo"
    """See `PPOConfig.algorithm`."""


class RLOOConfig(GroupBaselineCommon):
    """TRL's RLOOTrainer with the reward model as the reward function."""

    algorithm: Literal["rloo"] = "rloo"
    """See `PPOConfig.algorithm`."""


class DPOConfig(RLCommon, TRLDataConfig):
    """TRL's DPOTrainer straight from the labelers' comparisons (the reward stage's training data, or
    `data.comparisons`); the reward model, when there is one, only scores the evaluation. `max_steps`
    counts optimizer steps of `batch_size` comparisons."""

    algorithm: Literal["dpo"] = "dpo"
    """See `PPOConfig.algorithm`."""
    beta: float = Field(0.1, gt=0)
    """Strength of the implicit KL penalty to the reference (TRL's `beta`)."""
