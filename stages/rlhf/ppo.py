"""PPO stage: move the SFT assistant toward replies the reward model prefers, held near SFT by a KL penalty.

In:   a causal-LM policy checkpoint (SFT), a sequence-classification reward model (num_labels=1,
      optionally with `reward_stats.json` {"mean", "std"}), a JSONL of prompts, and a held-out monitor (the
      runner's `pipeline.eval.monitor.Monitor`: its held-out rows and judges — the reward model, a held-out reward
      model, a gold judge — score the policy's greedy replies every `eval_steps`; `select_best` picks by them).
Out:  `output_dir` = a Hugging Face checkpoint of the policy, plus `metrics.jsonl` (one line per
      update), `eval.json`, `resume/` while the stage runs (kept with `keep_resume`), and with `keep_updates` the
      policy of every monitor evaluation as a checkpoint, `updates/update-N/` (an output only: never read back).

    chatsmith stage ppo recipes/tiny-cpu.yaml --out runs/demo    # or part of `chatsmith run`

One update: take `rollout_batch_size` prompts from a seeded, shuffled stream; sample replies with a
KV cache (left padding); run the reference, value and reward models once each over the batch;
per-token reward = -kl_coef * KL(policy || reference) plus the (normalised) reward-model score at
the last token of prompt + reply (and `missing_eot_penalty` if the reply never ended: no end-of-turn token or
document EOS); GAE;
`ppo_epochs` passes of `num_minibatches` minibatches, each `gradient_accumulation_steps` micro-batches.
The policy and value model are one module (`models.PolicyAndValue`), so accelerate (DDP / DeepSpeed)
sees one model and one optimizer (two parameter groups, one LR schedule over
max_steps * ppo_epochs * num_minibatches optimizer steps). Sizes: a training micro-batch is
rollout_batch_size / num_minibatches / gradient_accumulation_steps replies; `batch_size` is the chunk
size of the no-grad scoring passes and evals; `generation_batch_size` the prompts per `generate` call.

Exactness: sampling is re-seeded from (seed, update, process) before each update and minibatch order
from (seed, update), so a run resumed from `resume/` (`stages.checkpoint.ResumeState`, DeepSpeed's
sharded state under ZeRO) draws the same samples as an uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch

from stages.chat_format import ChatFormat, stop_token_ids
from stages.checkpoint import ResumeState, make_scheduler, merged, read_safetensors, save_checkpoint, write_safetensors
from stages.common import MetricsLog, write_json_atomic
from stages.config import PPOConfig
from stages.distributed import full_state_dict, gathered, make_accelerator, set_deepspeed_micro_batch
from stages.rlhf import ppo_core as core
from stages.rlhf.models import PolicyAndValue, load_ppo_models, load_rl_tokenizer
from stages.rlhf.rollout import (PromptStream, Rollout, assemble, encode_prompts, generate, in_chunks, monitor_rows,
                                 read_reward_stats, reply_logits, sequence_scores, shaped_scores)

log = logging.getLogger("chatsmith.ppo")
BEST_POLICY = "best_policy.safetensors"
UPDATES = "updates"
SELECTION_JUDGES = {"gold": "gold", "reward": "reward", "holdout_reward": "holdout_reward"}
"""`select_best` -> the monitor's judge whose mean score it maximises."""


class PPOStopped(RuntimeError):
    """A guard stopped the stage (non-finite numbers, KL over the limit). The message says where
    the last good state is."""


class Unstable(Exception):
    """A guard tripped inside an update."""


def run(config: PPOConfig, *, policy: str | Path, reward_model: str | Path, prompts: str | Path, output_dir: str | Path,
        monitor, meta: dict | None = None) -> dict:
    """Run the PPO stage (resuming from `output_dir/resume` if present) and return the eval dict.

    eval.json keys (the monitor's `report`, on its held-out prompts, greedy): `<judge>_score` and `<judge>_score_sft`
    for each of the monitor's judges, end_of_turn_rate(_sft), reply_length(_sft), kl_to_sft, num_eval_prompts, all
    prefixed `monitor_`; plus steps and selected_step."""
    judge = SELECTION_JUDGES.get(config.select_best)
    if judge is not None and judge not in monitor.judges:
        raise ValueError(f"select_best={config.select_best!r} needs a {judge} judge in the monitor "
                         f"(gold: the demo world's held-out prompts; holdout_reward: the reward stage's holdout_fraction > 0)")
    policy_path, reward_path = Path(policy), Path(reward_model)
    accelerator = make_accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                                   mixed_precision="bf16" if config.bf16 and torch.cuda.is_available() else "no",
                                   report_to=config.report_to, output_dir=output_dir)
    torch.manual_seed(config.seed)
    tokenizer, chat_format = load_rl_tokenizer(policy_path, reward_path, config.trust_remote_code)
    train_rows, eval_rows = monitor_rows(config, prompts, monitor.rows, warn=log.warning)
    trainer = PPOTrainer(config, accelerator=accelerator, tokenizer=tokenizer, chat_format=chat_format,
                         models=load_ppo_models(config, policy_path, reward_path, chat_format),
                         train_prompts=encode_prompts(tokenizer, train_rows, config.max_prompt_length),
                         eval_rows=eval_rows, reward_stats=read_reward_stats(reward_path, config.normalize_reward),
                         monitor=monitor, output_dir=Path(output_dir))
    resumed = trainer.load_resume()
    metrics = MetricsLog(trainer.output_dir / "metrics.jsonl", resume_step=trainer.state["step"] if resumed else 0,
                         enabled=accelerator.is_main_process, accelerator=accelerator)
    if trainer.state["sft_eval"] is None:
        trainer.state["sft_eval"] = trainer.evaluate(trainer.reference, trainer.eval_rows)
        baseline = monitor.summary(trainer.state["sft_eval"], trainer.num_monitor)
        metrics.log(0, **{f"eval_{k}": v for k, v in baseline.items()})
    try:
        train_loop(trainer, metrics)
    except Unstable as error:
        trainer.stop(str(error), meta)
    finally:
        metrics.close()  # finishes the trackers
    return trainer.finish(meta)


def train_loop(trainer: PPOTrainer, metrics: MetricsLog) -> None:
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
            raise Unstable(f"non-finite reward-model scores at update {step}")
        advantages, returns = trainer.advantages(batch, stats)
        if not (torch.isfinite(advantages).all() and torch.isfinite(batch.logprobs).all() and torch.isfinite(batch.ref_logprobs).all()):
            raise Unstable(f"non-finite log-probs or advantages at update {step}")
        scored = time.perf_counter()
        trainer.train(batch, advantages, returns, step, stats)
        trained = time.perf_counter()

        stats.update(reward_raw=batch.scores_raw.mean(), reply_length=batch.mask.sum(-1).mean(),
                     end_of_turn_rate=batch.ended.float().mean())
        stats = reduce_mean(accelerator, stats)
        trainer.kl.update(stats["kl"], config.rollout_batch_size * trainer.world)
        check_guards(trainer, stats, step, warnings)
        stats.update(time_generate_s=generated - started, time_score_s=scored - generated, time_train_s=trained - scored)

        trainer.state["step"] = step
        if step % config.eval_steps == 0 or step == config.max_steps:
            stats.update(trainer.check(step))
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


def reduce_mean(accelerator, stats: dict) -> dict:
    """Scalar statistics averaged over processes (one collective for all of them)."""
    keys = list(stats)
    values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64)
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values.to(accelerator.device), reduction="mean").cpu()
    return dict(zip(keys, values.tolist()))


def check_guards(trainer: PPOTrainer, stats: dict, step: int, warnings: list) -> None:
    config = trainer.config
    for key in ("policy_loss", "value_loss", "kl", "reward_raw"):
        if not math.isfinite(stats[key]):
            raise Unstable(f"non-finite {key} at update {step}")
    if config.kl_limit is not None and stats["kl"] > config.kl_limit:
        message = f"KL to the reference {stats['kl']:.3f} is above kl_limit {config.kl_limit} at update {step}"
        if config.kl_limit_action == "stop":
            raise Unstable(message)
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


def config_fingerprint(config: PPOConfig) -> str:
    # Knobs that may change between an interrupted run and its continuation without breaking exactness.
    free = {"max_steps", "save_steps", "logging_steps", "keep_resume", "eval_steps", "num_eval_prompts", "keep_updates"}
    settings = {k: v for k, v in config.model_dump(mode="json").items() if k not in free}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class PPOTrainer:
    """The stage's models, optimizer and counters, and the steps of an update; `run` drives it."""

    def __init__(self, config: PPOConfig, *, accelerator, tokenizer, chat_format: ChatFormat, models,
                 train_prompts: list[list[int]], eval_rows: list[dict], reward_stats: dict | None, monitor, output_dir: Path):
        self.config, self.accelerator, self.tokenizer, self.chat_format = config, accelerator, tokenizer, chat_format
        policy, self.reference, self.reward_model, value = models
        self.train_prompts, self.eval_rows = train_prompts, eval_rows
        self.reward_stats, self.monitor = reward_stats, monitor
        self.output_dir = output_dir
        self.stop_ids = stop_token_ids(chat_format)  # a reply ends at the end-of-turn token or the document EOS
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.stream = PromptStream(len(train_prompts), config.seed)
        self.kl = core.KLController(config.kl_coef, adaptive=config.adaptive_kl, target=config.target_kl, horizon=config.kl_horizon)
        self.micro_size = config.rollout_batch_size // config.num_minibatches // config.gradient_accumulation_steps
        self.chunk = config.generation_batch_size or config.rollout_batch_size
        self.num_monitor = min(config.num_eval_prompts, len(eval_rows))
        self.state = {"step": 0, "best": None, "first_reply_length": None, "sft_eval": None, "last_good_step": 0}

        self.reference.to(accelerator.device)
        self.reward_model.to(accelerator.device)
        monitor.attach_reward_model(self.reward_model, tokenizer)  # the monitor's `reward` judge: no second copy
        groups = [
            {"params": [p for p in policy.parameters() if p.requires_grad], "lr": config.learning_rate},
            {"params": [p for p in value.parameters() if p.requires_grad], "lr": config.value_learning_rate or config.learning_rate},
        ]
        # fused: one kernel over all parameters instead of a dozen ops per tensor (~5x faster step on CPU).
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay, eps=config.adam_eps, fused=True)
        # Not given to accelerate.prepare: its scheduler wrapper steps once per process per step.
        self.scheduler = make_scheduler(optimizer, config, config.max_steps * config.ppo_epochs * config.num_minibatches)
        set_deepspeed_micro_batch(accelerator, micro_batch_size=self.micro_size, max_grad_norm=config.max_grad_norm)
        self.wrapper, self.optimizer = accelerator.prepare(PolicyAndValue(policy, value), optimizer)
        self.resume = ResumeState(accelerator, output_dir / "resume")

    def policy(self):
        """The policy, whole (gathered under ZeRO-3), for generation: a context manager."""
        return gathered(self.accelerator, self.accelerator.unwrap_model(self.wrapper).policy)

    def evaluate(self, model, rows: list[dict], *, reference=None) -> dict:
        """The monitor's results for `model` on `rows` (with the KL to `reference` when given)."""
        return self.monitor.evaluate(model, rows, config=self.config, accelerator=self.accelerator, tokenizer=self.tokenizer,
                                     stop_ids=self.stop_ids, reference=reference)

    # ---- resume

    def load_resume(self) -> bool:
        counters = self.resume.load(model=self.wrapper, optimizer=self.optimizer, scheduler=self.scheduler)
        if counters is None:
            return False
        if counters["config_fingerprint"] != config_fingerprint(self.config):
            log.warning("resuming from %s with different PPO settings: the run will not equal an uninterrupted one", self.resume.dir)
        self.kl.load_state_dict(counters["kl_controller"])
        self.state = counters["trainer"]
        self.accelerator.print(f"ppo: resuming from update {self.state['step']} ({self.resume.dir})")
        return True

    def save_resume(self) -> None:
        self.state["last_good_step"] = self.state["step"]
        counters = {"config_fingerprint": config_fingerprint(self.config), "kl_controller": self.kl.state_dict(),
                    "trainer": self.state, "prompts_consumed": self.state["step"] * self.config.rollout_batch_size * self.world}
        self.resume.save(model=self.wrapper, optimizer=self.optimizer, scheduler=self.scheduler, counters=counters,
                         keep=(BEST_POLICY,))

    # ---- one update

    def rollout(self, step: int) -> Rollout:
        config = self.config
        start = (step - 1) * config.rollout_batch_size * self.world + self.rank * config.rollout_batch_size
        prompts = [self.train_prompts[i] for i in self.stream.take(start, config.rollout_batch_size)]
        with self.policy() as policy:
            prompt_ids, prompt_mask, reply, token_stats = generate(
                policy, self.tokenizer, prompts, config, sample=True, keep_logits=config.logprobs_from_generation, chunk=self.chunk,
                stop_ids=self.stop_ids)
        batch = assemble(prompt_ids, prompt_mask, reply, self.stop_ids)
        if token_stats is not None:
            batch.logprobs, batch.entropy = token_stats
        return batch

    @torch.no_grad()
    def score(self, batch: Rollout) -> None:
        """Reference log-probs, values and reward-model scores: one pass of each model over the batch."""
        device, width, temperature = self.accelerator.device, batch.reply.shape[1], self.config.temperature
        need_policy = batch.logprobs is None
        parts = {"ref": [], "values": [], "scores": [], "logprobs": [], "entropy": []}
        for rows in in_chunks(self.config.batch_size, batch.reply.shape[0]):
            inputs = dict(input_ids=batch.input_ids[rows].to(device), attention_mask=batch.attention_mask[rows].to(device),
                          position_ids=batch.position_ids[rows].to(device))
            reply = batch.reply[rows].to(device)
            ref_logits = reply_logits(self.reference, **inputs, reply_length=width)
            parts["ref"].append(core.logprobs_from_logits(ref_logits, reply, temperature=temperature).cpu())
            logits, values = self.wrapper(**inputs, reply_length=width, policy=need_policy, value=True)
            parts["values"].append(values.cpu())
            if need_policy:
                parts["logprobs"].append(core.logprobs_from_logits(logits, reply, temperature=temperature).cpu())
                parts["entropy"].append(core.entropy_from_logits(logits, temperature=temperature).cpu())
            parts["scores"].append(sequence_scores(self.reward_model, **inputs).cpu())
        batch.ref_logprobs = torch.cat(parts["ref"])
        batch.values = torch.cat(parts["values"]) * batch.mask
        batch.scores_raw = torch.cat(parts["scores"])
        if need_policy:
            batch.logprobs, batch.entropy = torch.cat(parts["logprobs"]), torch.cat(parts["entropy"])

    def advantages(self, batch: Rollout, stats: dict):
        config = self.config
        normalized = shaped_scores(batch.scores_raw, batch.ended, reward_stats=self.reward_stats, missing_eot_penalty=None)
        stats["reward_normalized"] = normalized.mean()
        scores = shaped_scores(normalized, batch.ended, reward_stats=None, missing_eot_penalty=config.missing_eot_penalty)
        kl = core.kl_estimate(batch.logprobs, batch.ref_logprobs, config.kl_estimator) * batch.mask
        rewards = core.token_rewards(kl, scores, batch.mask, kl_coef=self.kl.value)
        advantages, returns = core.gae(rewards, batch.values, batch.mask, gamma=config.gamma, lam=config.lam)
        if config.whiten_advantages:
            advantages = core.masked_whiten(advantages, batch.mask)
        sequence_kl = kl.sum(-1)
        stats.update(
            reward=scores.mean(), kl=sequence_kl.mean(), kl_coef=self.kl.value,
            non_score_reward=(-self.kl.value * sequence_kl).mean(), entropy=core.masked_mean(batch.entropy, batch.mask),
            explained_variance=core.explained_variance(batch.values, returns, batch.mask),
            returns_mean=core.masked_mean(returns, batch.mask),
        )
        return advantages, returns

    def train(self, batch: Rollout, advantages, returns, step: int, stats: dict) -> None:
        """`ppo_epochs` passes over the batch in seeded minibatch order; one optimizer step per minibatch."""
        config = self.config
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        totals: dict[str, float] = {}
        count, ratio_max, ratio_min = 0, 0.0, float("inf")
        self.wrapper.train()
        for _epoch in range(config.ppo_epochs):
            order = torch.randperm(config.rollout_batch_size, generator=generator)
            for start in range(0, config.rollout_batch_size, self.micro_size):
                index = order[start : start + self.micro_size]
                out = self.micro_step(batch, advantages, returns, index, step, totals)
                for key in ("policy_loss", "value_loss", "clip_frac", "value_clip_frac", "approx_kl", "ratio_mean"):
                    totals[key] = totals.get(key, 0.0) + float(out[key].detach())
                ratio_max, ratio_min = max(ratio_max, float(out["ratio_max"])), min(ratio_min, float(out["ratio_min"]))
                count += 1
        optimizer_steps = config.ppo_epochs * config.num_minibatches
        stats.update({k: v / (optimizer_steps if k == "grad_norm" else count) for k, v in totals.items()})
        stats.update(ratio_max=ratio_max, ratio_min=ratio_min, lr=self.scheduler.get_last_lr()[0])

    def micro_step(self, batch: Rollout, advantages, returns, index, step: int, totals: dict) -> dict:
        config, accelerator, device = self.config, self.accelerator, self.accelerator.device
        rows = batch.rows(index)
        width = rows["reply_length"]
        with accelerator.accumulate(self.wrapper):
            logits, values = self.wrapper(rows["input_ids"].to(device), rows["attention_mask"].to(device),
                                          rows["position_ids"].to(device), reply_length=width)
            out = core.ppo_losses(
                logprobs=core.logprobs_from_logits(logits, rows["reply"].to(device), temperature=config.temperature),
                old_logprobs=batch.logprobs[index, :width].to(device), advantages=advantages[index, :width].to(device),
                values=values, old_values=batch.values[index, :width].to(device), returns=returns[index, :width].to(device),
                mask=rows["mask"].to(device), cliprange=config.cliprange, cliprange_value=config.cliprange_value,
            )
            loss = out["policy_loss"] + config.vf_coef * out["value_loss"]
            if not torch.isfinite(loss):
                raise Unstable(f"non-finite loss ({loss.item()}) at update {step}")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                norm = accelerator.clip_grad_norm_(self.wrapper.parameters(), config.max_grad_norm)
                if norm is not None and not torch.isfinite(torch.as_tensor(norm)):
                    raise Unstable(f"non-finite gradient norm at update {step}")
                totals["grad_norm"] = totals.get("grad_norm", 0.0) + float(norm if norm is not None else 0.0)
            self.optimizer.step()
            if accelerator.sync_gradients:
                self.scheduler.step()
            self.optimizer.zero_grad()
        return out

    # ---- monitor, stop, finish

    def check(self, step: int) -> dict:
        """Reward-hacking monitor: the fixed held-out prompts scored by every judge of the monitor (reward model,
        held-out reward model, gold judge); keeps the best policy by `select_best` under resume/."""
        with self.policy() as policy:
            result = self.monitor.summary(self.evaluate(policy, self.eval_rows[: self.num_monitor]))
        config = self.config
        if config.select_best != "last":
            score = result[f"{SELECTION_JUDGES[config.select_best]}_score"]
            best = self.state["best"]
            if best is None or score > best["score"]:
                self.state["best"] = {"score": score, "step": step}
                weights = full_state_dict(self.accelerator, self.wrapper, prefix="policy")  # collective under ZeRO-3
                if self.accelerator.is_main_process:
                    self.resume.dir.mkdir(parents=True, exist_ok=True)
                    write_safetensors(weights, self.resume.dir / BEST_POLICY)
        if config.keep_updates:
            self.save_update(step)
        return {f"eval_{k}": v for k, v in result.items()}

    def save_update(self, step: int) -> None:
        """`keep_updates`: this update's policy as a checkpoint, `updates/update-<step>/` (rewritten alike on resume)."""
        weights = full_state_dict(self.accelerator, self.wrapper, prefix="policy")  # collective under ZeRO-3
        if self.accelerator.is_main_process:
            policy = self.accelerator.unwrap_model(self.wrapper).policy
            if self.config.lora.enabled:  # merged in a copy: training goes on with the adapter
                policy, weights = merged(copy.deepcopy(policy)), None
            save_checkpoint(policy, self.tokenizer, self.output_dir / UPDATES / f"update-{step}", chat_format=self.chat_format,
                            meta={"stage": "ppo", "update": step, "config": self.config.model_dump(mode="json")}, state_dict=weights)

    def stop(self, reason: str, meta: dict | None):
        """A guard tripped: write the last good policy (from resume/) as the output checkpoint, stop loudly."""
        last_good = self.state["last_good_step"]
        found = self.resume.find() is not None
        if found:
            self.resume.load(model=self.wrapper, optimizer=self.optimizer, scheduler=self.scheduler)
            stage_meta = {**(meta or {}), "stage": "ppo", "config": self.config.model_dump(mode="json"), "stopped": reason, "step": last_good}
            self.save_output(stage_meta, full_state_dict(self.accelerator, self.wrapper, prefix="policy"))
        self.accelerator.wait_for_everyone()
        where = (f"the last good state (update {last_good}) is in {self.resume.dir} and written as the checkpoint {self.output_dir}"
                 if found else "no resumable state was saved yet (save_steps not reached)")
        raise PPOStopped(f"PPO stopped: {reason}; {where}")

    def finish(self, meta: dict | None) -> dict:
        """The final evaluation (with the KL to SFT) of the selected policy, its checkpoint and eval.json."""
        config = self.config
        weights = full_state_dict(self.accelerator, self.wrapper, prefix="policy")  # collective under ZeRO-3
        selected, best = self.state["step"], self.state["best"]
        with self.policy() as policy:
            if config.select_best != "last" and best is not None and best["step"] != selected:
                weights = read_safetensors(self.resume.dir / BEST_POLICY)
                policy.load_state_dict(weights)
                selected = best["step"]
                log.info("ppo output: the policy of update %d (best %s score %.4f)", selected, config.select_best, best["score"])
            final = self.evaluate(policy, self.eval_rows, reference=self.reference)
            result = {**self.monitor.report(final, self.state["sft_eval"]), "steps": self.state["step"], "selected_step": selected}
            stage_meta = {**(meta or {}), "stage": "ppo", "config": config.model_dump(mode="json"), "selected_step": selected}
            self.save_output(stage_meta, weights, policy=policy)
        if self.accelerator.is_main_process:
            write_json_atomic(self.output_dir / "eval.json", result)
        if not config.keep_resume:
            self.resume.remove()
        self.accelerator.wait_for_everyone()
        return result

    def save_output(self, stage_meta: dict, weights: dict | None, *, policy=None) -> None:
        if not self.accelerator.is_main_process:
            return
        policy = policy if policy is not None else self.accelerator.unwrap_model(self.wrapper).policy
        # With LoRA the adapter is merged and the model's own weights are saved (`weights` are the adapter's keys).
        save_checkpoint(merged(policy), self.tokenizer, self.output_dir, meta=stage_meta, chat_format=self.chat_format,
                        state_dict=None if self.config.lora.enabled else weights)
