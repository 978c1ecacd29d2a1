"""SFT and reward stages on tiny models: assistant-only loss, LoRA as an option, weights change,
pairwise accuracy and reward statistics."""

import json

import pytest
import torch

from stages.common import write_jsonl

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": f"What is the river of {town}?"},
                  {"role": "assistant", "content": f"The river of {town} is the {river}."}]}
    for town, river in [("Alder", "Sorrel"), ("Brim", "Tallow"), ("Corvi", "Umber"), ("Dunmere", "Vell")]
] * 8


def _comparisons(n=32):
    rows = []
    for i in range(n):
        town = ["Alder", "Brim", "Corvi", "Dunmere"][i % 4]
        rows.append({"prompt": [{"role": "user", "content": f"What is the river of {town}? ({i})"}],
                     "chosen": [{"role": "assistant", "content": f"The river of {town} is the Sorrel."}],
                     "rejected": [{"role": "assistant", "content": "Ugh, whatever. Look it up yourself."}],
                     "margin": 1.0})
    return rows


def _weights(path):
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_assistant_only_loss_masks_the_prompt(tiny_assets):
    """The chat template marks exactly the assistant's reply and its end-of-turn token for the loss."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["tokenizer"])
    enc = tokenizer.apply_chat_template(CONVERSATIONS[0]["messages"], return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    trained = [t for t, m in zip(ids, mask) if m]
    assert tokenizer.decode(trained) == "The river of Alder is the Sorrel.<|end|>"
    assert trained[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_stage(tiny_assets, tmp_path, lora):
    from transformers import AutoModelForCausalLM

    from stages import sft
    from stages.config import LoraConfig, SFTStageConfig

    write_jsonl(tmp_path / "train.jsonl", CONVERSATIONS)
    config = SFTStageConfig(max_steps=6, save_steps=3, logging_steps=2, batch_size=8, learning_rate=5e-3,
                            lora=LoraConfig(enabled=lora, r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    out = tmp_path / "sft"
    metrics = sft.run(config, init_from=tiny_assets["policy"], train_data=tmp_path / "train.jsonl",
                      eval_data=tmp_path / "train.jsonl", output_dir=out, meta={"parents": {"x": 1}})
    assert metrics["steps"] == 6 and metrics["eval_loss"] > 0
    before, after = _weights(tiny_assets["policy"]), _weights(out)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if lora:  # merged adapter: only the adapted projections moved
        assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)
    else:
        assert len(changed) > len(before) // 2
    model = AutoModelForCausalLM.from_pretrained(out)  # a plain transformers model, no adapter files
    from transformers import AutoTokenizer

    assert not (out / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id]  # end-of-turn = document EOS here
    assert json.loads((out / "chat_format.json").read_text())["end_of_turn"] == tokenizer.eos_token == "<|end|>"
    assert json.loads((out / "chatsmith.json").read_text())["parents"] == {"x": 1}
    assert not (out / "resume").exists()
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]


def test_reward_stage_learns_comparisons(tiny_assets, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from stages.config import RewardStageConfig
    from stages.rlhf import reward

    write_jsonl(tmp_path / "train.jsonl", _comparisons(48))
    write_jsonl(tmp_path / "eval.jsonl", _comparisons(16))
    config = RewardStageConfig(max_steps=12, save_steps=6, logging_steps=4, batch_size=8, learning_rate=3e-3)
    out = tmp_path / "reward"
    metrics = reward.run(config, init_from=tiny_assets["policy"], train_data=tmp_path / "train.jsonl",
                         eval_data=tmp_path / "eval.jsonl", output_dir=out)
    assert metrics["pairwise_accuracy"] == 1.0  # an easy, consistent preference
    stats = json.loads((out / "reward_stats.json").read_text())
    assert stats["std"] > 0 and stats["count"] == 96
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1


def test_reward_data_errors_name_the_line(tmp_path):
    from stages.rlhf.reward import comparisons

    write_jsonl(tmp_path / "bad.jsonl", [_comparisons(1)[0], {"prompt": "x", "chosen": "y"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: a comparison needs \['rejected'\]"):
        comparisons(tmp_path / "bad.jsonl", use_margin=True)
