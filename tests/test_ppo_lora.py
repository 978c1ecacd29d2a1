"""LoRA in the PPO stage: the reference is the policy with its adapter disabled (no second copy), and the
output is a plain, merged causal-LM checkpoint."""

from __future__ import annotations

import json

import torch

from judges import monitor
from stages.common import write_jsonl
from stages.config import LoraConfig, PPOConfig

LORA = LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])


def test_reference_is_the_policy_with_adapter_disabled(tiny_assets):
    from transformers import AutoModelForCausalLM

    from stages.rlhf.models import AdapterDisabled, load_ppo_models, load_rl_tokenizer

    torch.set_num_threads(1)
    config = PPOConfig(lora=LORA)
    _, chat_format = load_rl_tokenizer(tiny_assets["policy"], tiny_assets["reward"], False)
    policy, reference, _, _ = load_ppo_models(config, tiny_assets["policy"], tiny_assets["reward"], chat_format)
    assert isinstance(reference, AdapterDisabled) and reference.peft_model is policy
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_()  # a trained adapter: the policy now differs from SFT
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    sft = AutoModelForCausalLM.from_pretrained(tiny_assets["policy"]).eval()
    with torch.no_grad():
        expected = sft(ids).logits
        torch.testing.assert_close(reference(input_ids=ids).logits, expected)
        assert not torch.allclose(policy(input_ids=ids).logits, expected)
    assert all(p.requires_grad for n, p in policy.named_parameters() if "lora_" in n)  # the reference froze nothing


def test_lora_ppo_writes_a_merged_checkpoint(tiny_assets, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from stages.rlhf import ppo

    torch.set_num_threads(1)
    write_jsonl(tmp_path / "prompts.jsonl", ({"prompt": f"What is the emblem of town {i}?"} for i in range(16)))
    write_jsonl(tmp_path / "eval.jsonl", ({"prompt": f"Which river runs through town {i}?", "split": "dev"} for i in range(4)))
    config = PPOConfig(lora=LORA, max_steps=2, save_steps=1, eval_steps=2, rollout_batch_size=4, batch_size=4,
                            max_new_tokens=6, ppo_epochs=2, learning_rate=1e-2, num_eval_prompts=4)
    out = tmp_path / "ppo"
    result = ppo.run(config, policy=tiny_assets["policy"], reward_model=tiny_assets["reward"], prompts=tmp_path / "prompts.jsonl",
                     output_dir=out, monitor=monitor(tmp_path / "eval.jsonl", reward_model=tiny_assets["reward"]))
    assert result["monitor_kl_to_sft"] > 0 and json.loads((out / "eval.json").read_text()) == result
    before, after = load_file(str(tiny_assets["policy"] / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()  # merged: no adapter keys
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(any(m in k for m in LORA.target_modules) for k in changed)
    AutoModelForCausalLM.from_pretrained(out)
