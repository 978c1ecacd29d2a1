"""The models of the RL stage: loading the policy, reference, reward and value models, and the
policy + value module PPO trains as one.

- `load_rl_tokenizer`: the policy's tokenizer and chat format (plain text when it has no chat template),
  checked against the reward model's vocabulary.
- `load_ppo_models`: policy (trained), reference (frozen copy, or the policy with its LoRA adapter
  disabled), reward model (frozen), value model (from the reward model or the policy).
- `PolicyAndValue`: one module, one optimizer, one `accelerator.prepare` for DDP / DeepSpeed.
- `load_policy`, `load_reward_model`: for the TRL-trained algorithms (GRPO, RLOO, DPO).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from stages.chat_format import ChatFormat, configure_generation
from stages.common import load_chat_tokenizer, torch_dtype
from stages.config import PPOConfig, RLCommon
from stages.rlhf.rollout import backbone, disable_dropout
from stages.trl_common import peft_config

log = logging.getLogger("chatsmith.rlhf")


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
            hidden = backbone(self.value_model)(**inputs).last_hidden_state[:, -reply_length - 1 : -1]
            values = self.value_model.score(hidden).squeeze(-1).float()
        return logits, values


def load_ppo_models(config: PPOConfig, policy_path: Path, reward_path: Path, chat_format: ChatFormat):
    import copy

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    # Trained models keep fp32 weights (accelerate autocasts under bf16); frozen ones may be bf16.
    frozen_dtype = torch_dtype(config.bf16)
    common = dict(dtype=torch.float32, trust_remote_code=config.trust_remote_code)
    if config.attn_implementation:
        common["attn_implementation"] = config.attn_implementation
    policy = AutoModelForCausalLM.from_pretrained(str(policy_path), **common)
    configure_generation(policy, chat_format)  # the saved PPO checkpoint stops where the rollouts did
    if config.lora.enabled:
        from peft import get_peft_model

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
        disable_dropout(model)
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
    def device(self):
        return self.peft_model.device

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


def load_rl_tokenizer(policy_path: Path, reward_path: Path, trust_remote_code: bool) -> tuple[object, ChatFormat]:
    """The policy's tokenizer and chat format (`chat_format.json` when SFT wrote one). A policy without a chat
    template is used as plain text: prompts as written, a reply ends at its EOS (`plain_text_format`)."""
    from transformers import AutoTokenizer

    tokenizer, chat_format = load_chat_tokenizer(policy_path, where=f"ppo policy {policy_path}",
                                                 trust_remote_code=trust_remote_code, plain_text=True)
    if chat_format.source == "plain":
        log.warning("%s has no chat template: prompts are given to the model as plain text", policy_path)
    if any((reward_path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        reward_tokenizer = AutoTokenizer.from_pretrained(str(reward_path), trust_remote_code=trust_remote_code)
        if reward_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                f"the reward model {reward_path} uses a different vocabulary from the policy {policy_path}; "
                "chatsmith scores replies token for token, so both must share the tokenizer"
            )
    return tokenizer, chat_format


def load_policy(config: RLCommon, path: Path, chat_format: ChatFormat):
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=torch_dtype(config.bf16), trust_remote_code=config.trust_remote_code)
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    # TRL's trainers stop generation on the model's generation config: the end-of-turn token and document EOS.
    configure_generation(model, chat_format)
    return model


def load_reward_model(config: RLCommon, path: Path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch_dtype(config.bf16), trust_remote_code=config.trust_remote_code)
    if model.config.num_labels != 1:
        raise ValueError(f"{path}: a reward model has num_labels=1, this one has {model.config.num_labels}")
    disable_dropout(model)
    return model.eval().requires_grad_(False)
