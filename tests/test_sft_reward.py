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
    # eval_data is the training data: after 6 steps its loss is below the first steps' training loss
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["steps"] == 6 and 0 < metrics["eval_loss"] < first["loss"], (metrics["eval_loss"], first)
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


def _long_comparisons(n):
    """Comparisons whose rejected reply is longer than the stage tests' max_length (132 tiny tokens)."""
    return [{"prompt": [{"role": "user", "content": f"What is the river of Alder? (long {i})"}],
             "chosen": [{"role": "assistant", "content": "The river of Alder is the Sorrel."}],
             "rejected": [{"role": "assistant", "content": "Well, let me think about it. " * 6}], "margin": 1.0}
            for i in range(n)]


def test_reward_stage_learns_comparisons(tiny_assets, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from stages.config import RewardStageConfig
    from stages.rlhf import reward

    write_jsonl(tmp_path / "train.jsonl", _comparisons(48) + _long_comparisons(4))
    write_jsonl(tmp_path / "eval.jsonl", _comparisons(16) + _long_comparisons(2))
    config = RewardStageConfig(max_steps=12, save_steps=6, logging_steps=4, batch_size=8, learning_rate=3e-3, max_length=64)
    out = tmp_path / "reward"
    metrics = reward.run(config, init_from=tiny_assets["policy"], train_data=tmp_path / "train.jsonl",
                         eval_data=tmp_path / "eval.jsonl", output_dir=out)
    assert metrics["pairwise_accuracy"] == 1.0  # an easy, consistent preference
    # scored as trained: the pairs longer than max_length, which RewardTrainer drops, are left out and counted
    assert (metrics["train_comparisons"], metrics["train_comparisons_dropped"], metrics["train_stats_sample"]) == (52, 4, 48)
    assert (metrics["eval_comparisons"], metrics["eval_comparisons_dropped"]) == (16, 2)
    tokenizer = AutoTokenizer.from_pretrained(out)
    rows = [dict(r) for r in reward.comparisons(tmp_path / "train.jsonl", use_margin=False)]
    assert reward.encode_pairs(tokenizer, rows, max_length=64)[1] == metrics["train_comparisons_dropped"]
    stats = json.loads((out / "reward_stats.json").read_text())
    assert stats["std"] > 0 and stats["count"] == 96
    assert json.loads((out / "eval.json").read_text()) == metrics
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1


def test_sorted_batches_score_as_one_at_a_time(tiny_assets):
    """Batching by length (right padding, longest first) changes no score: each equals its score alone."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from stages.rlhf.reward import score

    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["reward"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_assets["reward"])
    conversations = [[{"role": "user", "content": "What is the river of Brim? " * (i % 3 + 1)},
                      {"role": "assistant", "content": "The river of Brim is the Tallow. " * (i % 5)}] for i in range(13)]
    batched = score(model, tokenizer, conversations, batch_size=4)
    alone = [score(model, tokenizer, [c], batch_size=1)[0] for c in conversations]
    assert len({len(tokenizer.apply_chat_template(c)["input_ids"]) for c in conversations}) > 3  # padding happens
    assert max(abs(a - b) for a, b in zip(batched, alone)) < 1e-5


SHARDED_SCORING = """
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from stages.distributed import make_accelerator
from stages.rlhf.reward import encode, score_ids

accelerator = make_accelerator()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1])
sequences = [encode(tokenizer, [{"role": "user", "content": "river? " * (i % 5 + 1)},
                                {"role": "assistant", "content": "Sorrel. " * (i % 7)}]) for i in range(11)]
sharded = score_ids(model, sequences, pad_token_id=tokenizer.pad_token_id, batch_size=2, accelerator=accelerator)
alone = [score_ids(model, [s], pad_token_id=tokenizer.pad_token_id, batch_size=1)[0] for s in sequences]
with open(sys.argv[2] + f".rank{accelerator.process_index}", "w") as handle:
    json.dump({"world": accelerator.num_processes, "max_diff": max(abs(a - b) for a, b in zip(sharded, alone))}, handle)
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_share_the_scoring(tiny_assets, tmp_path):
    """Each of 2 processes scores its share (11 sequences: unequal shares, padded); both get every score."""
    import socket
    import subprocess
    import sys

    from tiny import REPO, env

    (tmp_path / "score.py").write_text(SHARDED_SCORING)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(port), str(tmp_path / "score.py"), str(tiny_assets["reward"]), str(tmp_path / "out")],
                   cwd=REPO, env=env(), check=True, capture_output=True, timeout=300)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"out.rank{rank}").read_text())
        assert result["world"] == 2 and result["max_diff"] < 1e-5


def test_reward_data_errors_name_the_line(tmp_path):
    from stages.rlhf.reward import comparisons

    write_jsonl(tmp_path / "bad.jsonl", [_comparisons(1)[0], {"prompt": "x", "chosen": "y"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: a comparison needs \['rejected'\]"):
        comparisons(tmp_path / "bad.jsonl", use_margin=True)


def test_held_out_reward_model_trains_on_a_disjoint_share_of_prompts(tiny_assets, tmp_path):
    """`holdout_fraction`: a second reward model in reward/holdout/ from the comparisons of other prompts."""
    from stages.config import RewardStageConfig
    from stages.rlhf import reward

    write_jsonl(tmp_path / "train.jsonl", _comparisons(48))
    write_jsonl(tmp_path / "eval.jsonl", _comparisons(8))
    config = RewardStageConfig(max_steps=4, save_steps=4, logging_steps=2, batch_size=8, learning_rate=3e-3, max_length=64,
                               holdout_fraction=0.5)
    out = tmp_path / "reward"
    metrics = reward.run(config, init_from=tiny_assets["policy"], train_data=tmp_path / "train.jsonl",
                         eval_data=tmp_path / "eval.jsonl", output_dir=out, holdout_init_from=tiny_assets["reward"])
    held = json.loads((out / "holdout" / "eval.json").read_text())
    meta = json.loads((out / "holdout" / "chatsmith.json").read_text())
    assert meta["holdout_init_from"] == str(tiny_assets["reward"])  # another start than the reward model's
    assert metrics["train_comparisons"] + held["train_comparisons"] == 48
    assert 0 < held["train_comparisons"] < 48 and metrics["holdout_train_comparisons"] == held["train_comparisons"]
    assert metrics["holdout_pairwise_accuracy"] == held["pairwise_accuracy"]
    for d in (out, out / "holdout"):
        assert (d / "model.safetensors").exists() and (d / "reward_stats.json").exists() and not (d / "resume").exists()
    # the split is by prompt, from the prompt alone
    dataset = reward.comparisons(tmp_path / "train.jsonl", use_margin=False)
    main, holdout = reward.split_by_prompt(dataset, 0.5)
    assert {str(r["prompt"]) for r in main}.isdisjoint({str(r["prompt"]) for r in holdout})
    again = reward.split_by_prompt(dataset.shuffle(seed=1), 0.5)[1]
    assert sorted(str(r["prompt"]) for r in again) == sorted(str(r["prompt"]) for r in holdout)
    assert _weights(out).keys() == _weights(out / "holdout").keys()


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_a_stage_cut_after_its_last_save_is_not_trained_again(tiny_assets, tmp_path, stage):
    """Killed after the Trainer's save at max_steps but before the stage's end, the next run loads that checkpoint:
    the same weights and step count as the uninterrupted run. (A resumed Trainer takes one more optimizer step before
    it checks max_steps; at a constant learning rate that step changes the weights.)"""
    import shutil

    from stages import sft
    from stages.config import RewardStageConfig, SFTStageConfig
    from stages.rlhf import reward

    if stage == "sft":
        write_jsonl(tmp_path / "data.jsonl", CONVERSATIONS)
        config = SFTStageConfig(max_steps=6, save_steps=3, logging_steps=3, batch_size=8, learning_rate=5e-3,
                                lr_scheduler="constant", keep_resume=True)
        go = lambda out: sft.run(config, init_from=tiny_assets["policy"], train_data=tmp_path / "data.jsonl",
                                 eval_data=tmp_path / "data.jsonl", output_dir=out)
    else:
        write_jsonl(tmp_path / "data.jsonl", _comparisons())
        config = RewardStageConfig(max_steps=6, save_steps=3, logging_steps=3, batch_size=8, learning_rate=5e-3,
                                   lr_scheduler="constant", keep_resume=True)
        go = lambda out: reward.run(config, init_from=tiny_assets["policy"], train_data=tmp_path / "data.jsonl",
                                    eval_data=tmp_path / "data.jsonl", output_dir=out)
    whole = tmp_path / "whole"
    first = go(whole)
    assert first["steps"] == 6  # 32 rows in batches of 8: it ends mid-epoch, where the extra step happened
    # the state a kill after the last save leaves: resume/checkpoint-6 and no finished output
    cut = tmp_path / "cut"
    (cut / "resume").mkdir(parents=True)
    shutil.copytree(whole / "resume" / "checkpoint-6", cut / "resume" / "checkpoint-6")
    again = go(cut)
    assert again["steps"] == 6
    a, b = _weights(whole), _weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
