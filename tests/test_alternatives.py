"""GRPO, RLOO and DPO as PPO-stage options: each trains a tiny policy for a few steps and writes the
PPO stage's run directory (checkpoint, metrics.jsonl, eval.json with PPO's keys)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from judges import WordJudge, monitor
from pipeline.registry import RL_CONFIGS
from stages.common import read_jsonl, write_jsonl
from stages.config import PPOConfig

TOWNS = ["Alder", "Brim", "Corvi", "Dunmere"]
gold = WordJudge("heron")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("alternatives")
    question = lambda i: f"What is the emblem of {TOWNS[i % 4]}?"  # noqa: E731
    write_jsonl(root / "prompts.jsonl", ({"prompt": question(i)} for i in range(16)))
    write_jsonl(root / "eval.jsonl", ({"prompt": question(i), "id": i, "split": "dev"} for i in range(4)))
    write_jsonl(root / "comparisons.jsonl", (
        {"prompt": [{"role": "user", "content": question(i)}], "chosen": [{"role": "assistant", "content": "It is a heron."}],
         "rejected": [{"role": "assistant", "content": "It is a lynx."}], "margin": 1.0}
        for i in range(8)
    ))
    return root


def _config(algorithm: str, **fields):
    """The algorithm's own config; the online-sampling settings only where the algorithm has them."""
    online = {"rollout_batch_size", "num_generations", "ppo_epochs"}
    kind = RL_CONFIGS[algorithm]
    return kind(algorithm=algorithm, **{k: v for k, v in fields.items() if k not in online or k in kind.model_fields})


def _run(config, *, eval_prompts=None, gold=None, reward_model=None, **kwargs):
    """The stage as the runner calls it: a monitor of the held-out prompts, the reward model and the gold judge."""
    from stages.rlhf import alternatives

    return alternatives.run(config, reward_model=reward_model, **kwargs,
                            monitor=monitor(eval_prompts, reward_model=reward_model, gold=gold))


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "dpo"])
def test_alternative_writes_the_ppo_run_directory(algorithm, tiny_assets, data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = _config(
        algorithm, max_steps=2, save_steps=1, logging_steps=1, rollout_batch_size=4, num_generations=2,
        batch_size=4, max_new_tokens=8, ppo_epochs=1, learning_rate=1e-2, num_eval_prompts=4, seed=0,
    )
    out = tmp_path / algorithm
    result = _run(config, policy=tiny_assets["policy"], reward_model=tiny_assets["reward"], prompts=data / "prompts.jsonl",
                  eval_prompts=data / "eval.jsonl", output_dir=out, gold=gold, meta={"parents": {"policy": "x"}},
                  comparisons=data / "comparisons.jsonl" if algorithm == "dpo" else None)

    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "metrics.jsonl", "eval.json", "chatsmith.json"):
        assert (out / name).exists(), name
    assert not (out / "resume").exists()
    expected = {f"monitor_{k}" for k in ("gold_score", "gold_score_sft", "end_of_turn_rate", "kl_to_sft", "reward_score",
                                         "reward_score_sft", "num_eval_prompts")}
    assert expected <= set(result), expected - set(result)
    assert json.loads((out / "eval.json").read_text()) == result
    assert result["monitor_num_eval_prompts"] == 4 and result["algorithm"] == algorithm
    assert result["monitor_kl_to_sft"] > 0  # the policy moved away from SFT
    meta = json.loads((out / "chatsmith.json").read_text())
    assert meta["stage"] == "ppo" and meta["algorithm"] == algorithm and meta["parents"] == {"policy": "x"}

    rows = read_jsonl(out / "metrics.jsonl")
    assert rows and all("step" in r and "time_s" in r for r in rows)
    before, after = _tensors(tiny_assets["policy"] / "model.safetensors"), _tensors(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).chat_template


def test_dpo_needs_no_reward_model(tiny_assets, data, tmp_path):
    config = _config("dpo", max_steps=1, batch_size=4, max_new_tokens=8, num_eval_prompts=4, learning_rate=1e-3)
    result = _run(config, policy=tiny_assets["policy"], reward_model=None, prompts=data / "prompts.jsonl",
                  eval_prompts=data / "eval.jsonl", output_dir=tmp_path / "dpo", comparisons=data / "comparisons.jsonl")
    assert {"monitor_end_of_turn_rate", "monitor_kl_to_sft", "monitor_num_eval_prompts"} <= set(result)
    assert not any(k.startswith(("monitor_reward_score", "monitor_gold_score")) for k in result)
    with pytest.raises(ValueError, match="comparisons"):
        _run(config, policy=tiny_assets["policy"], reward_model=None, prompts=data / "prompts.jsonl", output_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="reward model"):
        _run(_config("grpo", max_steps=1, batch_size=4), policy=tiny_assets["policy"], reward_model=None,
             prompts=data / "prompts.jsonl", output_dir=tmp_path / "y")


def test_reward_function_scores_generated_ids_like_ppo(tiny_assets):
    """The GRPO/RLOO reward equals PPO's score of the same prompt + reply ids, plus the missing-end penalty."""
    from transformers import AutoTokenizer

    from stages.rlhf import alternatives, rollout
    from stages.rlhf.models import load_reward_model

    config = _config("grpo", normalize_reward=False, missing_eot_penalty=-1.0, batch_size=2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["policy"])
    reward = load_reward_model(config, tiny_assets["reward"])
    prompts = [[{"role": "user", "content": "What is the emblem of Brim?"}], [{"role": "user", "content": "hi"}], [{"role": "user", "content": "Corvi?"}]]
    body = tokenizer(" It is a heron.", add_special_tokens=False)["input_ids"]
    completions = [body + [tokenizer.eos_token_id], body[:2], body]
    score = alternatives.RewardModelScore(reward, tokenizer, config, None, stop_ids=[tokenizer.eos_token_id])
    scores = score(prompts=prompts, completions=[""] * 3, completion_ids=completions)
    # what follows the first stop token (padding that may equal a stop token) is not scored
    padded = score(prompts=prompts[:1], completions=[""], completion_ids=[completions[0] + [tokenizer.pad_token_id] * 2])
    assert padded == pytest.approx(scores[:1], abs=1e-5)
    for prompt, ids, got in zip(prompts, completions, scores):
        full = rollout.encode_prompts(tokenizer, [{"prompt": prompt}], 128)[0] + ids
        mask = torch.ones(1, len(full), dtype=torch.long)
        alone = float(rollout.sequence_scores(reward, torch.tensor([full]), mask, rollout.positions(mask))[0])
        penalty = 0.0 if ids[-1] == tokenizer.eos_token_id else -1.0
        assert got == pytest.approx(alone + penalty, abs=1e-5)


@pytest.mark.parametrize("algorithm", ["grpo", "dpo"])
def test_alternative_with_lora_writes_a_merged_checkpoint(algorithm, tiny_assets, data, tmp_path):
    from stages.config import LoraConfig

    config = _config(
        algorithm, max_steps=2, rollout_batch_size=4, num_generations=2, batch_size=4, max_new_tokens=6, ppo_epochs=1,
        learning_rate=1e-2, num_eval_prompts=4, lora=LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    out = tmp_path / algorithm
    result = _run(config, policy=tiny_assets["policy"], reward_model=tiny_assets["reward"], prompts=data / "prompts.jsonl",
                  eval_prompts=data / "eval.jsonl", output_dir=out, comparisons=data / "comparisons.jsonl")
    assert result["monitor_kl_to_sft"] > 0
    before, after = _tensors(tiny_assets["policy"] / "model.safetensors"), _tensors(out / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)
