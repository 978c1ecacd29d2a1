"""PPO stage: move the SFT assistant toward replies the reward model prefers, held near SFT by a KL penalty.

In:   a causal-LM policy checkpoint (SFT), a sequence-classification reward model (num_labels=1,
      optionally with `reward_stats.json` {"mean", "std"}), a JSONL of prompts, optionally held-out
      prompts and a gold scorer `(rows, replies) -> [float]`.
Out:  `output_dir` = a Hugging Face checkpoint of the policy, plus `metrics.jsonl` (one line per
      update), `eval.json`, and `resume/` while the stage runs (kept with `keep_resume`).

    chatsmith stage ppo recipes/tiny-cpu.yaml --out runs/demo    # or part of `chatsmith run`

One update: take `rollout_batch_size` prompts from a seeded, shuffled stream; sample replies with a
KV cache (left padding); run the reference, value and reward models once each over the batch;
per-token reward = -kl_coef * KL(policy || reference) plus the (normalised) reward-model score at
the last token of prompt + reply (and `missing_eot_penalty` if the reply never ended); GAE;
`ppo_epochs` passes of `num_minibatches` minibatches, each `gradient_accumulation_steps` micro-batches.
The policy and value model are wrapped in one module so accelerate (DDP / DeepSpeed) sees one model
and one optimizer (two parameter groups, one LR schedule over max_steps * ppo_epochs * num_minibatches
optimizer steps). Sizes: a training micro-batch is rollout_batch_size / num_minibatches /
gradient_accumulation_steps replies; `batch_size` is the chunk size of the no-grad scoring passes
(reference, value, reward) and evals; `generation_batch_size` the prompts per `generate` call.

Exactness: sampling is re-seeded from (seed, update, process) before each update and minibatch order
from (seed, update), so a run resumed from `resume/` draws the same samples as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from stages.common import (
    MetricsLog,
    check_chat_format,
    make_accelerator,
    prompt_messages,
    read_jsonl,
    render_prompt,
    save_checkpoint,
    torch_dtype,
    write_json_atomic,
)
from stages.config import PPOStageConfig
from stages.rlhf import ppo_core as core

log = logging.getLogger("chatsmith.ppo")

GoldScorer = Callable[[list[dict], list[str]], list[float]]
MIN_FINAL_EVAL_PROMPTS = 100


class PPOStopped(RuntimeError):
    """A guard stopped the stage (non-finite numbers, KL over the limit). The message says where
    the last good state is."""


# --------------------------------------------------------------------------------------------- models


def _backbone(model):
    return getattr(model, model.base_model_prefix)


def _disable_dropout(model) -> None:
    # PPO's ratio is only 1 at the start of an update if the forward pass is deterministic.
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PolicyAndValue(torch.nn.Module):
    """Policy and value model as one module: one `accelerator.prepare`, one optimizer, and a forward
    that DDP / DeepSpeed see (so gradients of both are synchronised)."""

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(self, input_ids, attention_mask, position_ids, *, reply_length: int, policy: bool = True, value: bool = True):
        logits = values = None
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        if policy:
            # logits at positions P-1 .. P+T-2 predict the T reply tokens; skip the prompt's lm_head.
            logits = self.policy(**inputs, logits_to_keep=reply_length + 1).logits[:, :-1]
        if value:
            hidden = _backbone(self.value_model)(**inputs).last_hidden_state[:, -reply_length - 1 : -1]
            values = self.value_model.score(hidden).squeeze(-1).float()
        return logits, values


def _load_models(config: PPOStageConfig, policy_path: Path, reward_path: Path):
    import copy

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    # Trained models keep fp32 weights (accelerate autocasts under bf16); frozen ones may be bf16.
    frozen_dtype = torch_dtype(config.bf16)
    common = dict(dtype=torch.float32, trust_remote_code=config.trust_remote_code)
    if config.attn_implementation:
        common["attn_implementation"] = config.attn_implementation
    policy = AutoModelForCausalLM.from_pretrained(str(policy_path), **common)
    if config.lora.enabled:
        from peft import get_peft_model

        from stages.trl_common import peft_config

        policy = get_peft_model(policy, peft_config(config.lora, task_type="CAUSAL_LM"))
        reference = AdapterDisabled(policy)
    else:
        reference = copy.deepcopy(policy).to(frozen_dtype)
    reward = AutoModelForSequenceClassification.from_pretrained(str(reward_path), **common)
    if reward.config.num_labels != 1:
        raise ValueError(f"{reward_path}: a reward model has num_labels=1, this one has {reward.config.num_labels}")
    if config.value_init == "reward":
        value = copy.deepcopy(reward)
        reward.to(frozen_dtype)
    else:
        value = AutoModelForSequenceClassification.from_pretrained(str(policy_path), num_labels=1, **common)
        torch.nn.init.zeros_(value.score.weight)
        if getattr(value.score, "bias", None) is not None:
            torch.nn.init.zeros_(value.score.bias)
    lora = config.lora.enabled  # the reference is then the policy itself: not frozen, dropout already off
    for model in (policy, reward, value) if lora else (policy, reference, reward, value):
        _disable_dropout(model)
    for frozen in (reward,) if lora else (reference, reward):
        frozen.eval().requires_grad_(False)
    if config.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        value.gradient_checkpointing_enable()
    return policy, reference, reward, value


class AdapterDisabled:
    """With LoRA, the reference model: the policy with its adapter switched off (the SFT weights),
    not a second copy. Offers what the stage asks of a reference: call, generate, train/eval mode."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def __call__(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model.generate(*args, **kwargs)

    def parameters(self):
        return self.peft_model.parameters()

    @property
    def training(self) -> bool:
        return self.peft_model.training

    def train(self, mode: bool = True):
        self.peft_model.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, *args, **kwargs):
        return self  # moved with the policy


def _saveable(policy):
    """The policy as a plain transformers model for the output checkpoint: a LoRA adapter merged in."""
    return policy.merge_and_unload() if hasattr(policy, "merge_and_unload") else policy


def _load_tokenizer(policy_path: Path, reward_path: Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(policy_path), trust_remote_code=trust_remote_code)
    if tokenizer.chat_template:
        check_chat_format(tokenizer, where=f"ppo policy {policy_path}")
    else:
        log.warning("%s has no chat template: prompts are given to the model as plain text", policy_path)
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{policy_path}: the tokenizer has no EOS token to end replies with")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    if any((reward_path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        reward_tokenizer = AutoTokenizer.from_pretrained(str(reward_path), trust_remote_code=trust_remote_code)
        if reward_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                f"the reward model {reward_path} uses a different vocabulary from the policy {policy_path}; "
                "chatsmith scores replies token for token, so both must share the tokenizer"
            )
    return tokenizer


@contextlib.contextmanager
def _policy_for_generation(accelerator, wrapper):
    """The unwrapped policy, whole. The one place stage code touches DeepSpeed: under ZeRO-3 the
    parameters are sharded and `generate` needs them gathered."""
    unwrapped = accelerator.unwrap_model(wrapper).policy
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(unwrapped.parameters())):
            yield unwrapped
    else:
        yield unwrapped


# ----------------------------------------------------------------------------------------- prompts


def _encode_prompts(tokenizer, rows: list[dict], max_length: int) -> list[list[int]]:
    encoded = []
    for row in rows:
        text = render_prompt(tokenizer, prompt_messages(row))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        encoded.append(ids[-max_length:])  # keep the end: the generation prompt must stay
    return encoded


def _left_pad(sequences: list[list[int]], pad_id: int):
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq) :] = torch.tensor(seq)
            attention_mask[row, width - len(seq) :] = 1
    return input_ids, attention_mask


class PromptStream:
    """An endless stream of prompt indices: each pass over the data in a fresh seeded shuffle.
    Position `i` of the stream is a pure function of (seed, i), so resuming needs only `i`."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self._epoch, self._order = -1, None

    def take(self, start: int, count: int) -> list[int]:
        out = []
        for position in range(start, start + count):
            epoch, index = divmod(position, self.size)
            if epoch != self._epoch:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._epoch, self._order = epoch, torch.randperm(self.size, generator=generator).tolist()
            out.append(self._order[index])
        return out


# ---------------------------------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    """One batch of prompt + reply with everything PPO needs, computed once."""

    input_ids: torch.Tensor  # (B, P + T): prompt left-padded, reply right-padded
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_width: int
    reply: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) 1.0 on reply tokens up to and including end-of-turn
    ended: torch.Tensor  # (B,) the reply emitted end-of-turn
    logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    scores_raw: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> dict:
        """A micro-batch, with columns that are padding in every chosen row cut away."""
        attention = self.attention_mask[index]
        reply_length = max(int(self.mask[index].sum(-1).max()), 1)
        first = int((attention[:, : self.prompt_width].sum(0) > 0).float().argmax())
        stop = self.prompt_width + reply_length
        return {
            "input_ids": self.input_ids[index, first:stop],
            "attention_mask": attention[:, first:stop],
            "position_ids": self.position_ids[index, first:stop],
            "reply": self.reply[index, :reply_length],
            "mask": self.mask[index, :reply_length],
            "reply_length": reply_length,
        }


def _reply_mask(reply: torch.Tensor, eot_id: int):
    is_eot = reply == eot_id
    ended = is_eot.any(-1)
    # 1 up to and including the first end-of-turn token; everything after it is padding.
    after_eot = (is_eot.long().cumsum(-1) - is_eot.long()) > 0
    return (~after_eot).float(), ended


def _generate(model, tokenizer, prompts: list[list[int]], config: PPOStageConfig, *, sample: bool, keep_logits: bool, chunk: int):
    """Batched KV-cached generation. Returns (prompt_ids, prompt_mask, reply, (logprobs, entropy) or None);
    with `keep_logits`, log-probs and entropies of the reply tokens come from the logits generate
    computed anyway (divided by the temperature), reduced on the device chunk by chunk."""
    eot_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt_ids, prompt_mask = _left_pad(prompts, pad_id)
    device = next(model.parameters()).device
    replies, logits = [], []
    was_training = model.training
    model.eval()  # generate ignores the KV cache under gradient checkpointing in train mode
    try:
        for start in range(0, len(prompts), chunk):
            ids = prompt_ids[start : start + chunk].to(device)
            attention = prompt_mask[start : start + chunk].to(device)
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=attention,
                    max_new_tokens=config.max_new_tokens,
                    do_sample=sample,
                    temperature=config.temperature if sample else None,
                    top_k=config.top_k if sample else None,
                    top_p=config.top_p if sample else None,
                    eos_token_id=eot_id,
                    pad_token_id=pad_id,
                    use_cache=True,
                    return_dict_in_generate=True,
                    output_logits=keep_logits,
                )
            reply = out.sequences[:, ids.shape[1] :]
            replies.append(reply.cpu())
            if keep_logits:
                step_logits = torch.stack(out.logits, dim=1)
                logits.append((
                    core.logprobs_from_logits(step_logits, reply, temperature=config.temperature).cpu(),
                    core.entropy_from_logits(step_logits, temperature=config.temperature).cpu(),
                ))
                del step_logits, out
    finally:
        model.train(was_training)
    width = max(r.shape[1] for r in replies)
    reply = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1]), value=pad_id) for r in replies])
    token_stats = None
    if keep_logits:
        token_stats = tuple(torch.cat([torch.nn.functional.pad(part[i], (0, width - part[i].shape[1])) for part in logits]) for i in (0, 1))
    return prompt_ids, prompt_mask, reply, token_stats


def _assemble(prompt_ids, prompt_mask, reply, eot_id) -> Rollout:
    mask, ended = _reply_mask(reply, eot_id)
    attention_mask = torch.cat([prompt_mask, mask.long()], dim=1)
    return Rollout(
        input_ids=torch.cat([prompt_ids, reply], dim=1),
        attention_mask=attention_mask,
        position_ids=_positions(attention_mask),
        prompt_width=prompt_ids.shape[1],
        reply=reply,
        mask=mask,
        ended=ended,
    )


@torch.no_grad()
def _sequence_scores(model, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """A sequence classifier's score at the last real token of each row (prompt + reply)."""
    hidden = _backbone(model)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).last_hidden_state
    last = (attention_mask * torch.arange(attention_mask.shape[1], device=attention_mask.device)).argmax(-1)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return model.score(hidden[rows, last]).squeeze(-1).float()


@torch.no_grad()
def _reply_logits(model, input_ids, attention_mask, position_ids, reply_length: int) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, logits_to_keep=reply_length + 1)
    return out.logits[:, :-1].float()


def _in_chunks(batch_size: int, total: int):
    for start in range(0, total, batch_size):
        yield slice(start, min(start + batch_size, total))


# ------------------------------------------------------------------------------------------- state


def _clone_state(state: dict) -> dict:
    # Fresh contiguous CPU copies: safetensors refuses tied (shared-storage) tensors.
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}


def _save_safetensors(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(_clone_state(state), str(tmp))
    os.replace(tmp, path)


def _load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _find_resume(resume_dir: Path) -> Path | None:
    for candidate in (resume_dir, resume_dir.with_name(resume_dir.name + ".old")):
        if (candidate / "state.json").exists():
            return candidate
    return None


def _config_fingerprint(config: PPOStageConfig) -> str:
    # Knobs that may change between an interrupted run and its continuation without breaking exactness.
    free = {"max_steps", "save_steps", "logging_steps", "keep_resume", "eval_steps", "num_eval_prompts"}
    settings = {k: v for k, v in config.model_dump(mode="json").items() if k not in free}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- stage


class _PPO:
    """The stage's state and steps; `run` below drives it top to bottom."""

    def __init__(self, config, accelerator, tokenizer, models, train_prompts, eval_prompts, eval_rows, reward_stats, gold_scorer, output_dir):
        self.config = config
        self.accelerator = accelerator
        self.tokenizer = tokenizer
        policy, self.reference, self.reward_model, value = models
        self.train_prompts = train_prompts
        self.eval_prompts, self.eval_rows = eval_prompts, eval_rows
        self.reward_stats = reward_stats
        self.gold_scorer = gold_scorer
        self.output_dir = output_dir
        self.resume_dir = output_dir / "resume"
        self.eot_id = tokenizer.eos_token_id
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.stream = PromptStream(len(train_prompts), config.seed)
        self.kl = core.KLController(config.kl_coef, adaptive=config.adaptive_kl, target=config.target_kl, horizon=config.kl_horizon)
        self.minibatch_size = config.rollout_batch_size // config.num_minibatches
        self.micro_size = self.minibatch_size // config.gradient_accumulation_steps
        self.chunk = config.generation_batch_size or config.rollout_batch_size
        self.num_monitor = min(config.num_eval_prompts, len(eval_prompts))
        self.evaluator = HeldOutEval(config, accelerator, tokenizer, eval_prompts, eval_rows, reward_model=self.reward_model, gold_scorer=gold_scorer)
        self.state = {"step": 0, "best": None, "first_reply_length": None, "sft_eval": None, "last_good_step": 0}

        from transformers import get_scheduler

        self.wrapper = PolicyAndValue(policy, value)
        self.reference.to(accelerator.device)
        self.reward_model.to(accelerator.device)
        groups = [
            {"params": [p for p in policy.parameters() if p.requires_grad], "lr": config.learning_rate},
            {"params": [p for p in value.parameters() if p.requires_grad], "lr": config.value_learning_rate or config.learning_rate},
        ]
        # fused: one kernel over all parameters instead of a dozen ops per tensor (~5x faster step on CPU).
        self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay, eps=config.adam_eps, fused=True)
        total_steps = config.max_steps * config.ppo_epochs * config.num_minibatches
        # Not given to accelerate.prepare: its scheduler wrapper steps once per process per step.
        self.scheduler = get_scheduler(config.lr_scheduler, self.optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=total_steps)

    # ---- resume

    def load_resume(self) -> bool:
        found = _find_resume(self.resume_dir)
        if found is None:
            return False
        state = json.loads((found / "state.json").read_text())
        if state["config_fingerprint"] != _config_fingerprint(self.config):
            log.warning("resuming from %s with different PPO settings: the run will not equal an uninterrupted one", found)
        self.wrapper.policy.load_state_dict(_load_safetensors(found / "policy.safetensors"))
        self.wrapper.value_model.load_state_dict(_load_safetensors(found / "value.safetensors"))
        self.optimizer.load_state_dict(torch.load(found / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl.load_state_dict(state["kl_controller"])
        self.state = state["trainer"]
        log.info("resumed PPO from %s at update %d", found, self.state["step"])
        return True

    def save_resume(self) -> None:
        """Everything an interrupted run needs, written to `resume.tmp` and renamed into place."""
        accelerator = self.accelerator
        full = accelerator.get_state_dict(self.wrapper)  # collective under ZeRO-3: every rank calls it
        optimizer_state = self.optimizer.state_dict()
        if accelerator.is_main_process:
            tmp = self.resume_dir.with_name("resume.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            _save_safetensors({k[len("policy.") :]: v for k, v in full.items() if k.startswith("policy.")}, tmp / "policy.safetensors")
            _save_safetensors({k[len("value_model.") :]: v for k, v in full.items() if k.startswith("value_model.")}, tmp / "value.safetensors")
            torch.save(optimizer_state, tmp / "optimizer.pt")
            best = self.resume_dir / "best_policy.safetensors"
            if best.exists():
                shutil.copy2(best, tmp / best.name)
            self.state["last_good_step"] = self.state["step"]
            write_json_atomic(
                tmp / "state.json",
                {
                    "config_fingerprint": _config_fingerprint(self.config),
                    "scheduler": self.scheduler.state_dict(),
                    "kl_controller": self.kl.state_dict(),
                    "trainer": self.state,
                    "prompts_consumed": self.state["step"] * self.config.rollout_batch_size * self.world,
                },
            )
            old = self.resume_dir.with_name("resume.old")
            shutil.rmtree(old, ignore_errors=True)
            if self.resume_dir.exists():
                self.resume_dir.rename(old)
            tmp.rename(self.resume_dir)
            shutil.rmtree(old, ignore_errors=True)
        self.state["last_good_step"] = self.state["step"]
        accelerator.wait_for_everyone()

    # ---- rollout

    def rollout(self, step: int) -> Rollout:
        config = self.config
        start = (step - 1) * config.rollout_batch_size * self.world + self.rank * config.rollout_batch_size
        indices = self.stream.take(start, config.rollout_batch_size)
        prompts = [self.train_prompts[i] for i in indices]
        with _policy_for_generation(self.accelerator, self.wrapper) as policy:
            prompt_ids, prompt_mask, reply, token_stats = _generate(
                policy, self.tokenizer, prompts, config, sample=True, keep_logits=config.logprobs_from_generation, chunk=self.chunk
            )
        batch = _assemble(prompt_ids, prompt_mask, reply, self.eot_id)
        if token_stats is not None:
            batch.logprobs, batch.entropy = token_stats
        return batch

    @torch.no_grad()
    def score(self, batch: Rollout) -> None:
        """Reference log-probs, values and reward-model scores: one pass of each model over the batch."""
        device, width = self.accelerator.device, batch.reply.shape[1]
        parts = {"ref": [], "values": [], "scores": [], "logprobs": [], "entropy": []}
        for rows in _in_chunks(self.config.batch_size, batch.reply.shape[0]):
            inputs = dict(input_ids=batch.input_ids[rows].to(device), attention_mask=batch.attention_mask[rows].to(device), position_ids=batch.position_ids[rows].to(device))
            ref_logits = _reply_logits(self.reference, **inputs, reply_length=width)
            reply = batch.reply[rows].to(device)
            parts["ref"].append(core.logprobs_from_logits(ref_logits, reply, temperature=self.config.temperature).cpu())
            need_policy = batch.logprobs is None
            logits, values = self.wrapper(**inputs, reply_length=width, policy=need_policy, value=True)
            parts["values"].append(values.cpu())
            if need_policy:
                parts["logprobs"].append(core.logprobs_from_logits(logits, reply, temperature=self.config.temperature).cpu())
                parts["entropy"].append(core.entropy_from_logits(logits, temperature=self.config.temperature).cpu())
            parts["scores"].append(_sequence_scores(self.reward_model, **inputs).cpu())
        batch.ref_logprobs = torch.cat(parts["ref"])
        batch.values = torch.cat(parts["values"]) * batch.mask
        batch.scores_raw = torch.cat(parts["scores"])
        if batch.logprobs is None:
            batch.logprobs, batch.entropy = torch.cat(parts["logprobs"]), torch.cat(parts["entropy"])

    # ---- one PPO update

    def advantages(self, batch: Rollout, stats: dict):
        config = self.config
        scores = batch.scores_raw
        if self.reward_stats is not None:
            scores = (scores - self.reward_stats["mean"]) / self.reward_stats["std"]
        stats["reward_normalized"] = scores.mean()
        if config.missing_eot_penalty is not None:
            scores = torch.where(batch.ended, scores, scores + config.missing_eot_penalty)
        kl = core.kl_estimate(batch.logprobs, batch.ref_logprobs, config.kl_estimator) * batch.mask
        rewards = core.token_rewards(kl, scores, batch.mask, kl_coef=self.kl.value)
        advantages, returns = core.gae(rewards, batch.values, batch.mask, gamma=config.gamma, lam=config.lam)
        if config.whiten_advantages:
            advantages = core.masked_whiten(advantages, batch.mask)
        sequence_kl = kl.sum(-1)
        stats.update(
            reward=scores.mean(),
            kl=sequence_kl.mean(),
            kl_coef=self.kl.value,
            non_score_reward=(-self.kl.value * sequence_kl).mean(),
            entropy=core.masked_mean(batch.entropy, batch.mask),
            explained_variance=core.explained_variance(batch.values, returns, batch.mask),
            returns_mean=core.masked_mean(returns, batch.mask),
        )
        return advantages, returns

    def train(self, batch: Rollout, advantages, returns, step: int, stats: dict) -> None:
        config, accelerator, device = self.config, self.accelerator, self.accelerator.device
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        totals: dict[str, float] = {}
        count, ratio_max, ratio_min = 0, 0.0, float("inf")
        self.wrapper.train()
        for _epoch in range(config.ppo_epochs):
            order = torch.randperm(config.rollout_batch_size, generator=generator)
            for start in range(0, config.rollout_batch_size, self.micro_size):
                index = order[start : start + self.micro_size]
                rows = batch.rows(index)
                width = rows["reply_length"]
                with accelerator.accumulate(self.wrapper):
                    logits, values = self.wrapper(
                        rows["input_ids"].to(device), rows["attention_mask"].to(device), rows["position_ids"].to(device), reply_length=width
                    )
                    logprobs = core.logprobs_from_logits(logits, rows["reply"].to(device), temperature=config.temperature)
                    mask = rows["mask"].to(device)
                    out = core.ppo_losses(
                        logprobs=logprobs,
                        old_logprobs=batch.logprobs[index, :width].to(device),
                        advantages=advantages[index, :width].to(device),
                        values=values,
                        old_values=batch.values[index, :width].to(device),
                        returns=returns[index, :width].to(device),
                        mask=mask,
                        cliprange=config.cliprange,
                        cliprange_value=config.cliprange_value,
                    )
                    loss = out["policy_loss"] + config.vf_coef * out["value_loss"]
                    if not torch.isfinite(loss):
                        raise _Unstable(f"non-finite loss ({loss.item()}) at update {step}")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        norm = accelerator.clip_grad_norm_(self.wrapper.parameters(), config.max_grad_norm)
                        if norm is not None and not torch.isfinite(torch.as_tensor(norm)):
                            raise _Unstable(f"non-finite gradient norm at update {step}")
                        totals["grad_norm"] = totals.get("grad_norm", 0.0) + float(norm if norm is not None else 0.0)
                    self.optimizer.step()
                    if accelerator.sync_gradients:
                        self.scheduler.step()
                    self.optimizer.zero_grad()
                for key in ("policy_loss", "value_loss", "clip_frac", "value_clip_frac", "approx_kl", "ratio_mean"):
                    totals[key] = totals.get(key, 0.0) + float(out[key].detach())
                ratio_max = max(ratio_max, float(out["ratio_max"]))
                ratio_min = min(ratio_min, float(out["ratio_min"]))
                count += 1
        optimizer_steps = config.ppo_epochs * config.num_minibatches
        stats.update({k: v / (optimizer_steps if k == "grad_norm" else count) for k, v in totals.items()})
        stats.update(ratio_max=ratio_max, ratio_min=ratio_min, lr=self.scheduler.get_last_lr()[0])

    # ---- evaluation

    def evaluate(self, model, count: int, *, with_kl: bool = False) -> dict:
        return self.evaluator.evaluate(model, count, reference=self.reference if with_kl else None)


class HeldOutEval:
    """The held-out evaluation PPO and its alternatives (`stages.rlhf.alternatives`) share: greedy
    replies to the first `count` held-out prompts, scored by the reward model (raw; skipped without
    one) and the gold scorer, and optionally the KL to a reference. Per-prompt results are gathered
    over processes and returned as lists in prompt order."""

    def __init__(self, config: PPOStageConfig, accelerator, tokenizer, prompts: list[list[int]], rows: list[dict], *, reward_model, gold_scorer):
        self.config, self.accelerator, self.tokenizer = config, accelerator, tokenizer
        self.prompts, self.rows = prompts, rows
        self.reward_model, self.gold_scorer = reward_model, gold_scorer
        self.eot_id = tokenizer.eos_token_id
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.chunk = max(config.generation_batch_size or config.rollout_batch_size, config.batch_size)

    def evaluate(self, model, count: int, *, reference=None) -> dict:
        """With a `reference`, also the KL of `model` to it (see `_kl_to_reference`)."""
        indices = list(range(count))[self.rank :: self.world]
        results = []
        if indices:
            prompts = [self.prompts[i] for i in indices]
            prompt_ids, prompt_mask, reply, _ = _generate(model, self.tokenizer, prompts, self.config, sample=False, keep_logits=False, chunk=self.chunk)
            batch = _assemble(prompt_ids, prompt_mask, reply, self.eot_id)
            device = self.accelerator.device
            scores = [None] * len(indices)
            if self.reward_model is not None:
                scores = torch.cat([
                    _sequence_scores(self.reward_model, batch.input_ids[r].to(device), batch.attention_mask[r].to(device), batch.position_ids[r].to(device)).cpu()
                    for r in _in_chunks(self.config.batch_size, len(indices))
                ]).tolist()
            texts = [self._decode(row, ended) for row, ended in zip(batch.reply.tolist(), batch.ended.tolist())]
            gold = self.gold_scorer([self.rows[i] for i in indices], texts) if self.gold_scorer else [None] * len(indices)
            kl = self._kl_to_reference(model, reference, prompts) if reference is not None else [None] * len(indices)
            for j, i in enumerate(indices):
                results.append((i, None if scores[j] is None else float(scores[j]), None if gold[j] is None else float(gold[j]), bool(batch.ended[j]), int(batch.mask[j].sum()), kl[j]))
        gathered = self.accelerator.gather_for_metrics(results, use_gather_object=True) if self.world > 1 else results
        gathered = sorted(gathered)
        return {
            "reward": [r[1] for r in gathered],
            "gold": [r[2] for r in gathered],
            "ended": [r[3] for r in gathered],
            "length": [r[4] for r in gathered],
            "kl": [r[5] for r in gathered],
        }

    def _decode(self, tokens: list[int], ended: bool) -> str:
        if ended:
            tokens = tokens[: tokens.index(self.eot_id)]
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    @torch.no_grad()
    def _kl_to_reference(self, model, reference, prompts: list[list[int]]) -> list[float]:
        """KL(policy || SFT) per prompt: one reply sampled from the policy (the training temperature),
        and along it the exact per-token KL between the two next-token distributions, summed over the
        reply. Its mean over prompts is an unbiased, low-variance estimate of the sequence-level KL."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + 17)
            prompt_ids, prompt_mask, reply, _ = _generate(model, self.tokenizer, prompts, self.config, sample=True, keep_logits=False, chunk=self.chunk)
        batch = _assemble(prompt_ids, prompt_mask, reply, self.eot_id)
        device, width, out = self.accelerator.device, reply.shape[1], []
        for rows in _in_chunks(self.config.batch_size, len(prompts)):
            inputs = dict(input_ids=batch.input_ids[rows].to(device), attention_mask=batch.attention_mask[rows].to(device), position_ids=batch.position_ids[rows].to(device), reply_length=width)
            log_p = torch.log_softmax(_reply_logits(model, **inputs) / self.config.temperature, -1)
            log_q = torch.log_softmax(_reply_logits(reference, **inputs) / self.config.temperature, -1)
            per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
            out.extend((per_token.cpu() * batch.mask[rows]).sum(-1).tolist())
        return out


def eval_report(final: dict, sft: dict, *, gold: bool, reward: bool) -> dict:
    """eval.json's shared keys from `HeldOutEval` results of the trained policy (with KL) and of SFT."""
    result = {
        **_summary(final),
        "kl_to_sft": _mean(final["kl"]),
        **{f"{k}_sft": v for k, v in _summary(sft).items()},
        "num_eval_prompts": len(final["reward"]),
    }
    dropped = ("gold_score",) * (not gold) + ("reward_score",) * (not reward)
    return {k: v for k, v in result.items() if not k.startswith(dropped)}


class _Unstable(Exception):
    """Internal: a guard tripped inside an update."""


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _summary(results: dict, count: int | None = None) -> dict:
    take = (lambda xs: xs[:count]) if count is not None else (lambda xs: xs)
    return {
        "gold_score": _mean(take(results["gold"])),
        "reward_score": _mean(take(results["reward"])),
        "end_of_turn_rate": _mean([float(e) for e in take(results["ended"])]),
        "reply_length": _mean(take(results["length"])),
    }


def _read_reward_stats(reward_path: Path, enabled: bool) -> dict | None:
    path = reward_path / "reward_stats.json"
    if not enabled or not path.exists():
        if enabled:
            log.warning("%s has no reward_stats.json: rewards are used unnormalised", reward_path)
        return None
    stats = json.loads(path.read_text())
    mean, std = float(stats["mean"]), float(stats["std"])
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"{path}: needs a finite mean and a positive std, got {stats}")
    return {"mean": mean, "std": std}


def prompt_rows(config: PPOStageConfig, prompts: str | Path, eval_prompts: str | Path | None) -> tuple[list[dict], list[dict]]:
    """Training and held-out prompt records; without eval prompts, the last training prompts are held out."""
    train_rows = read_jsonl(prompts)
    eval_source = eval_prompts if eval_prompts is not None else config.eval_prompts
    if eval_source is not None:
        eval_rows = read_jsonl(eval_source)
    else:
        held_out = max(1, min(MIN_FINAL_EVAL_PROMPTS, len(train_rows) // 5))
        log.warning("no eval prompts given: holding out the last %d training prompts for evaluation", held_out)
        train_rows, eval_rows = train_rows[:-held_out], train_rows[-held_out:]
    eval_rows = eval_rows[: max(MIN_FINAL_EVAL_PROMPTS, config.num_eval_prompts)]
    if not train_rows or not eval_rows:
        raise ValueError(f"{config.algorithm} needs training and eval prompts: got {len(train_rows)} and {len(eval_rows)}")
    return train_rows, eval_rows


def _check_config(config: PPOStageConfig, gold_scorer) -> None:
    if config.rollout_batch_size % config.num_minibatches:
        raise ValueError(f"rollout_batch_size ({config.rollout_batch_size}) must divide by num_minibatches ({config.num_minibatches})")
    minibatch = config.rollout_batch_size // config.num_minibatches
    if minibatch % config.gradient_accumulation_steps:
        raise ValueError(
            f"each minibatch ({minibatch} prompts) must divide by gradient_accumulation_steps ({config.gradient_accumulation_steps})"
        )
    if config.select_best == "gold" and gold_scorer is None:
        raise ValueError("select_best='gold' needs a gold_scorer")


def run(
    config: PPOStageConfig,
    *,
    policy: str | Path,
    reward_model: str | Path | None,
    prompts: str | Path,
    output_dir: str | Path,
    eval_prompts: str | Path | None = None,
    gold_scorer: GoldScorer | None = None,
    meta: dict | None = None,
    comparisons: str | Path | None = None,
) -> dict:
    """Run the PPO stage (resuming from `output_dir/resume` if present) and return the eval dict.

    eval.json keys: gold_score, gold_score_sft (only with a gold_scorer), reward_score and
    reward_score_sft (raw reward-model score of greedy replies), end_of_turn_rate(_sft),
    reply_length(_sft), kl_to_sft (see `HeldOutEval._kl_to_reference`), num_eval_prompts, steps,
    selected_step. All means over the same held-out prompts (at least 100 when there are that many).

    `config.algorithm` other than "ppo" runs GRPO, RLOO or DPO instead (`stages.rlhf.alternatives`),
    with the same outputs; DPO trains on `comparisons` and needs no reward model.
    """
    if config.algorithm != "ppo":
        from stages.rlhf import alternatives

        return alternatives.run(config, policy=policy, reward_model=reward_model, prompts=prompts, output_dir=output_dir,
                                eval_prompts=eval_prompts, gold_scorer=gold_scorer, meta=meta, comparisons=comparisons)

    if reward_model is None:
        raise ValueError("PPO needs a reward model (stages.ppo.reward_model)")
    _check_config(config, gold_scorer)
    policy_path, reward_path, output_dir = Path(policy), Path(reward_model), Path(output_dir)
    accelerator = make_accelerator(  # CPU-aware: see STACK_NOTES and stages.common.make_accelerator
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision="bf16" if config.bf16 and torch.cuda.is_available() else "no",
    )
    torch.manual_seed(config.seed)
    tokenizer = _load_tokenizer(policy_path, reward_path, config.trust_remote_code)
    train_rows, eval_rows = prompt_rows(config, prompts, eval_prompts)
    trainer = _PPO(
        config,
        accelerator,
        tokenizer,
        _load_models(config, policy_path, reward_path),
        _encode_prompts(tokenizer, train_rows, config.max_prompt_length),
        _encode_prompts(tokenizer, eval_rows, config.max_prompt_length),
        eval_rows,
        _read_reward_stats(reward_path, config.normalize_reward),
        gold_scorer,
        output_dir,
    )
    resumed = trainer.load_resume()
    if accelerator.state.deepspeed_plugin is not None:  # no prepared DataLoader: DeepSpeed can't infer these
        accelerator.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=trainer.micro_size, gradient_clipping=config.max_grad_norm)
    trainer.wrapper, trainer.optimizer = accelerator.prepare(trainer.wrapper, trainer.optimizer)
    metrics = MetricsLog(output_dir / "metrics.jsonl", resume_step=trainer.state["step"] if resumed else 0, enabled=accelerator.is_main_process)

    if trainer.state["sft_eval"] is None:
        trainer.state["sft_eval"] = trainer.evaluate(trainer.reference, len(eval_rows))
        baseline = _summary(trainer.state["sft_eval"], trainer.num_monitor)
        metrics.log(0, **{f"eval_{k}": v for k, v in baseline.items()})

    try:
        _train_loop(trainer, metrics)
    except _Unstable as error:
        _stop(trainer, str(error), meta)
    return _finish(trainer, metrics, meta)


def _train_loop(trainer: _PPO, metrics: MetricsLog) -> None:
    from tqdm.auto import tqdm

    config, accelerator = trainer.config, trainer.accelerator
    progress = tqdm(total=config.max_steps, initial=trainer.state["step"], desc="ppo", disable=not accelerator.is_main_process)
    while trainer.state["step"] < config.max_steps:
        step = trainer.state["step"] + 1
        # Sampling randomness is a pure function of (seed, update, process): resume draws the same replies.
        torch.manual_seed(int.from_bytes(hashlib.sha256(f"{config.seed}/{step}/{trainer.rank}".encode()).digest()[:7], "little"))
        stats, warnings = {}, []
        started = time.perf_counter()
        batch = trainer.rollout(step)
        generated = time.perf_counter()
        trainer.score(batch)
        if not torch.isfinite(batch.scores_raw).all():
            raise _Unstable(f"non-finite reward-model scores at update {step}")
        advantages, returns = trainer.advantages(batch, stats)
        if not (torch.isfinite(advantages).all() and torch.isfinite(batch.logprobs).all() and torch.isfinite(batch.ref_logprobs).all()):
            raise _Unstable(f"non-finite log-probs or advantages at update {step}")
        scored = time.perf_counter()
        trainer.train(batch, advantages, returns, step, stats)
        trained = time.perf_counter()

        lengths = batch.mask.sum(-1)
        stats.update(
            reward_raw=batch.scores_raw.mean(),
            reply_length=lengths.mean(),
            end_of_turn_rate=batch.ended.float().mean(),
        )
        stats = _reduce(accelerator, stats)
        trainer.kl.update(stats["kl"], config.rollout_batch_size * trainer.world)
        _check_guards(trainer, stats, step, warnings)
        stats.update(time_generate_s=generated - started, time_score_s=scored - generated, time_train_s=trained - scored)

        trainer.state["step"] = step
        if step % config.eval_steps == 0 or step == config.max_steps:
            stats.update(_monitor(trainer, step))
        if warnings:
            stats["warnings"] = warnings
        row = metrics.log(step, **stats)
        progress.update(1)
        progress.set_postfix({k: f"{row[k]:.2f}" for k in ("reward_raw", "kl") if isinstance(row.get(k), float)})
        if step % config.logging_steps == 0 or step == config.max_steps:
            log.info("ppo update %d/%d: %s", step, config.max_steps, {k: row[k] for k in ("reward_raw", "kl", "entropy", "reply_length", "time_s") if k in row})
        if step % config.save_steps == 0 or step == config.max_steps:
            trainer.save_resume()
    progress.close()


def _reduce(accelerator, stats: dict) -> dict:
    keys = list(stats)
    values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64)
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values.to(accelerator.device), reduction="mean").cpu()
    return dict(zip(keys, values.tolist()))


def _check_guards(trainer: _PPO, stats: dict, step: int, warnings: list) -> None:
    config = trainer.config
    for key in ("policy_loss", "value_loss", "kl", "reward_raw"):
        if not math.isfinite(stats[key]):
            raise _Unstable(f"non-finite {key} at update {step}")
    if config.kl_limit is not None and stats["kl"] > config.kl_limit:
        message = f"KL to the reference {stats['kl']:.3f} is above kl_limit {config.kl_limit} at update {step}"
        if config.kl_limit_action == "stop":
            raise _Unstable(message)
        warnings.append(message)
    if stats["entropy"] < config.entropy_warn_below:
        warnings.append(f"entropy collapse: mean token entropy {stats['entropy']:.4f} < {config.entropy_warn_below}")
    if stats["ratio_max"] > config.ratio_warn_above or stats["ratio_min"] < 1 / config.ratio_warn_above:
        warnings.append(f"extreme PPO ratios: min {stats['ratio_min']:.3g}, max {stats['ratio_max']:.3g}")
    first = trainer.state["first_reply_length"]
    if first is None:
        trainer.state["first_reply_length"] = stats["reply_length"]
    elif first > 0 and not (1 / config.length_drift_warn <= stats["reply_length"] / first <= config.length_drift_warn):
        warnings.append(f"reply length drift: {stats['reply_length']:.1f} tokens vs {first:.1f} at the first update")
    for message in warnings:
        log.warning("ppo update %d: %s", step, message)


def _monitor(trainer: _PPO, step: int) -> dict:
    """Reward-hacking monitor: the fixed held-out prompts scored by the reward model and the gold
    scorer; keeps the best policy by the configured criterion under resume/."""
    with _policy_for_generation(trainer.accelerator, trainer.wrapper) as policy:
        summary = _summary(trainer.evaluate(policy, trainer.num_monitor))
    config = trainer.config
    if config.select_best != "last":
        score = summary["gold_score" if config.select_best == "gold" else "reward_score"]
        best = trainer.state["best"]
        if best is None or score > best["score"]:
            trainer.state["best"] = {"score": score, "step": step}
            state = trainer.accelerator.get_state_dict(trainer.wrapper)
            if trainer.accelerator.is_main_process:
                trainer.resume_dir.mkdir(parents=True, exist_ok=True)
                policy_state = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
                _save_safetensors(policy_state, trainer.resume_dir / "best_policy.safetensors")
    return {f"eval_{k}": v for k, v in summary.items()}


def _stop(trainer: _PPO, reason: str, meta: dict | None):
    """A guard tripped: write the last good policy (from resume/) as the output checkpoint, stop loudly."""
    accelerator, last_good = trainer.accelerator, trainer.state["last_good_step"]
    found = _find_resume(trainer.resume_dir)
    if found is not None and accelerator.is_main_process:
        policy = accelerator.unwrap_model(trainer.wrapper).policy
        policy.load_state_dict(_load_safetensors(found / "policy.safetensors"))
        stage_meta = {**(meta or {}), "stage": "ppo", "config": trainer.config.model_dump(mode="json"), "stopped": reason, "step": last_good}
        save_checkpoint(_saveable(policy), trainer.tokenizer, trainer.output_dir, meta=stage_meta)
    accelerator.wait_for_everyone()
    where = (
        f"the last good state (update {last_good}) is in {trainer.resume_dir} and written as the checkpoint {trainer.output_dir}"
        if found is not None
        else "no resumable state was saved yet (save_steps not reached)"
    )
    raise PPOStopped(f"PPO stopped: {reason}; {where}")


def _finish(trainer: _PPO, metrics: MetricsLog, meta: dict | None) -> dict:
    # The whole policy (gathered under ZeRO-3) for the final evaluation, and its weights for the checkpoint.
    full = trainer.accelerator.get_state_dict(trainer.wrapper)  # collective under ZeRO-3: every rank calls it
    weights = {k[len("policy.") :]: v for k, v in (full or {}).items() if k.startswith("policy.")}  # None off the main rank
    with _policy_for_generation(trainer.accelerator, trainer.wrapper) as policy:
        return _finish_with(trainer, policy, meta, weights)


def _finish_with(trainer: _PPO, policy, meta: dict | None, weights: dict) -> dict:
    config, accelerator = trainer.config, trainer.accelerator
    selected = trainer.state["step"]
    best = trainer.state["best"]
    if config.select_best != "last" and best is not None and best["step"] != selected:
        weights = _load_safetensors(trainer.resume_dir / "best_policy.safetensors")
        policy.load_state_dict(weights)
        selected = best["step"]
        log.info("ppo output: the policy of update %d (best %s score %.4f)", selected, config.select_best, best["score"])

    final = trainer.evaluate(policy, len(trainer.eval_rows), with_kl=True)
    result = {
        **eval_report(final, trainer.state["sft_eval"], gold=trainer.gold_scorer is not None, reward=True),
        "steps": trainer.state["step"],
        "selected_step": selected,
    }
    if accelerator.is_main_process:
        stage_meta = {**(meta or {}), "stage": "ppo", "config": config.model_dump(mode="json"), "selected_step": selected}
        # With LoRA the adapter is merged and the model's own weights are saved (`weights` are the adapter's keys).
        save_checkpoint(_saveable(policy), trainer.tokenizer, trainer.output_dir, meta=stage_meta, state_dict=None if config.lora.enabled else weights)
        write_json_atomic(trainer.output_dir / "eval.json", result)
        if not config.keep_resume:
            shutil.rmtree(trainer.resume_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    return result
