"""GRPO, RLOO and DPO: the alternatives to chatsmith's PPO, from the same data and with the same outputs.

In:   what the PPO stage takes (the runner calls `run` here when `stages.ppo.algorithm` is grpo, rloo or dpo):
      a causal-LM policy checkpoint (SFT), prompts JSONL, the held-out monitor (`pipeline.eval.monitor.Monitor`:
      held-out rows and judges, the held-out reward model among them when the reward stage trained one); plus
      - GRPO / RLOO: the reward model (sequence classifier), the reward function of TRL's trainer;
      - DPO: the comparisons JSONL `{"prompt": [messages], "chosen": [..], "rejected": [..]}` (the reward
        stage's training data); no reward model in training (given one, the eval still reports its score).
Out:  the PPO stage's run directory: `output_dir` = a HF causal-LM checkpoint with the tokenizer and chat
      template, `metrics.jsonl` (TRL's log lines; `step` is TRL's optimizer step), `eval.json` with PPO's
      `monitor_*` keys (the same monitor's `report`), `resume/` while running.

    chatsmith stage ppo recipes/tiny-cpu.yaml --out runs/demo stages.ppo.algorithm=grpo

GRPO and RLOO sample `num_generations` replies for each of `rollout_batch_size` prompts per update and use
the other replies of the group as the baseline instead of a value model (`GRPOConfig`, `RLOOConfig`);
DPO (`DPOConfig`) learns from the comparisons directly.

The reward function is a Python callable rather than TRL's reward-model path: TRL would decode each
reply, re-render prompt + reply through the chat template (which closes the reply with end-of-turn even
when the policy never emitted it) and re-tokenize. The callable scores the token ids the policy really
generated, at the last token of prompt + reply, normalised and penalised exactly as PPO's reward is.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stages.chat_format import stop_token_ids
from stages.checkpoint import merged, save_checkpoint
from stages.common import prompt_messages, write_json_atomic
from stages.config import DPOConfig, GRPOConfig, RLOOConfig
from stages.rlhf.models import load_policy, load_reward_model, load_rl_tokenizer
from stages.rlhf.rollout import (encode_prompts, in_chunks, left_pad, monitor_rows, positions, read_reward_stats, sequence_scores,
                                 shaped_scores)
from stages.trl_common import finish, metrics_callback, peft_config, resume_point, run_trainer, training_kwargs

TRLAlgorithmConfig = GRPOConfig | RLOOConfig | DPOConfig


def run(
    config: TRLAlgorithmConfig,
    *,
    policy: str | Path,
    reward_model: str | Path | None,
    prompts: str | Path,
    output_dir: str | Path,
    monitor,
    meta: dict | None = None,
    comparisons: str | Path | None = None,
) -> dict:
    """Train with `config.algorithm` (grpo, rloo or dpo) and return the eval dict (PPO's keys + steps)."""
    if config.algorithm in ("grpo", "rloo") and reward_model is None:
        raise ValueError(f"{config.algorithm} needs a reward model (stages.ppo.reward_model)")
    if config.algorithm == "dpo" and comparisons is None:
        raise ValueError("dpo needs comparisons (the reward stage's training data, or data.comparisons)")
    policy_path, output_dir = Path(policy), Path(output_dir)
    reward_path = Path(reward_model) if reward_model is not None else None

    torch.manual_seed(config.seed)
    tokenizer, chat_format = load_rl_tokenizer(policy_path, reward_path or policy_path, config.trust_remote_code)
    train_rows, eval_rows = monitor_rows(config, prompts, monitor.rows)
    model = load_policy(config, policy_path, chat_format)
    reward = load_reward_model(config, reward_path) if reward_path is not None else None

    resume_from, resume_step = resume_point(output_dir)
    callbacks = [metrics_callback(output_dir, resume_step=resume_step)]
    if config.algorithm == "dpo":
        trainer = _dpo_trainer(config, model, tokenizer, comparisons, output_dir, callbacks)
    else:
        score = RewardModelScore(reward, tokenizer, config, read_reward_stats(reward_path, config.normalize_reward),
                                 stop_ids=stop_token_ids(chat_format))
        trainer = _online_trainer(config, model, tokenizer, score, train_rows, output_dir, callbacks)
    accelerator = trainer.accelerator
    if reward is not None:
        reward.to(accelerator.device)
        monitor.attach_reward_model(reward, tokenizer)

    def evaluate(policy_model, reference=None) -> dict:
        return monitor.evaluate(policy_model, eval_rows, config=config, accelerator=accelerator, tokenizer=tokenizer,
                                stop_ids=stop_token_ids(chat_format), reference=reference)

    # The SFT baseline: the trainer loads a resumed checkpoint only in train(), and a fresh LoRA adapter is a no-op.
    sft_eval = evaluate(model)

    run_trainer(trainer, resume_from, resume_step)

    final_model = merged(trainer.model)
    reference = load_policy(config, policy_path, chat_format).to(accelerator.device).eval().requires_grad_(False)
    final_eval = evaluate(final_model, reference)
    result = {
        **monitor.report(final_eval, sft_eval),
        "algorithm": config.algorithm,
        "steps": trainer.state.global_step,
    }
    if accelerator.is_main_process:
        stage_meta = {**(meta or {}), "stage": "ppo", "algorithm": config.algorithm, "config": config.model_dump(mode="json")}
        save_checkpoint(final_model, tokenizer, output_dir, meta=stage_meta, chat_format=chat_format)
        write_json_atomic(output_dir / "eval.json", result)
        finish(output_dir, keep_resume=config.keep_resume)
    accelerator.wait_for_everyone()
    return result


class RewardModelScore:
    """TRL reward function: the reward model's score at the last token of prompt + reply, on the token
    ids the policy generated (cut after the first stop token), normalised with the reward stage's statistics
    and with `missing_eot_penalty` for replies that never ended, as PPO's reward is."""

    __name__ = "reward_model"  # TRL names its logged reward columns after the function

    def __init__(self, model, tokenizer, config: GRPOConfig | RLOOConfig, reward_stats: dict | None, *,
                 stop_ids: list[int]):
        self.model, self.tokenizer, self.config, self.reward_stats = model, tokenizer, config, reward_stats
        self.stop_ids = list(stop_ids)

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list, completion_ids: list[list[int]], **_) -> list[float]:
        tokenizer, config = self.tokenizer, self.config
        # A reply ends at its first stop token (end-of-turn or document EOS); a pad equal to one may follow it.
        stops = [next((i for i, t in enumerate(ids) if t in self.stop_ids), None) for ids in completion_ids]
        completion_ids = [ids if stop is None else ids[: stop + 1] for ids, stop in zip(completion_ids, stops)]
        prompt_ids, prompt_mask = left_pad(encode_prompts(tokenizer, [{"prompt": p} for p in prompts], config.max_prompt_length), tokenizer.pad_token_id)
        # Replies right-padded after their last token.
        lengths = torch.tensor([len(ids) for ids in completion_ids])
        reply = torch.full((len(completion_ids), max(1, int(lengths.max()))), tokenizer.pad_token_id, dtype=torch.long)
        for row, ids in enumerate(completion_ids):
            reply[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask = torch.cat([prompt_mask, (torch.arange(reply.shape[1]) < lengths[:, None]).long()], dim=1)
        input_ids, position_ids = torch.cat([prompt_ids, reply], dim=1), positions(attention_mask)
        device = next(self.model.parameters()).device
        scores = torch.cat([
            sequence_scores(self.model, input_ids[r].to(device), attention_mask[r].to(device), position_ids[r].to(device)).cpu()
            for r in in_chunks(config.batch_size, len(completion_ids))
        ])
        ended = torch.tensor([stop is not None for stop in stops])
        return shaped_scores(scores, ended, reward_stats=self.reward_stats, missing_eot_penalty=config.missing_eot_penalty).tolist()


# ------------------------------------------------------------------------------------------- trainers


def _online_trainer(config: GRPOConfig | RLOOConfig, model, tokenizer, score: RewardModelScore, train_rows: list[dict], output_dir: Path, callbacks):
    """GRPO or RLOO: one update = `rollout_batch_size` prompts x `num_generations` replies, reused for
    `ppo_epochs` passes of `num_minibatches` optimizer steps."""
    from datasets import Dataset

    if config.algorithm == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer

    replies = config.rollout_batch_size * config.num_generations
    micro_steps = config.num_minibatches * config.gradient_accumulation_steps  # per update and pass (the config checks they divide)
    steps_per_update = config.ppo_epochs * config.num_minibatches
    args = Config(
        **{
            **training_kwargs(config, output_dir=output_dir),
            "max_steps": config.max_steps * steps_per_update,
            "save_steps": config.save_steps * steps_per_update,
            "logging_steps": config.logging_steps * steps_per_update,
            "per_device_train_batch_size": replies // micro_steps,
        },
        steps_per_generation=micro_steps,
        num_generations=config.num_generations,
        num_iterations=config.ppo_epochs,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        beta=config.kl_coef,
        epsilon=config.cliprange,
        disable_dropout=True,
        num_train_epochs=10_000,  # max_steps decides
    )
    dataset = Dataset.from_list([{"prompt": prompt_messages(row)} for row in train_rows])
    return Trainer(model=model, reward_funcs=score, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks,
                   peft_config=peft_config(config.lora, task_type="CAUSAL_LM"))


def _dpo_trainer(config: DPOConfig, model, tokenizer, comparisons: str | Path, output_dir: Path, callbacks):
    """DPO straight from the labelers' comparisons; TRL keeps a frozen copy of the policy as the reference
    (with LoRA: the policy with its adapter disabled)."""
    from trl import DPOConfig, DPOTrainer

    from stages.rlhf.reward import comparisons as read_comparisons

    args = DPOConfig(
        **training_kwargs(config, output_dir=output_dir),
        beta=config.beta,
        max_length=config.max_prompt_length + config.max_new_tokens,
        disable_dropout=True,
        num_train_epochs=10_000,  # max_steps decides
        dataset_num_proc=config.dataset_num_proc,
    )
    dataset = read_comparisons(comparisons, use_margin=False)
    return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks,
                      peft_config=peft_config(config.lora, task_type="CAUSAL_LM"))
