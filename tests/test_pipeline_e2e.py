"""The whole chain on a tiny demo world through the real CLI: every stage's files, lineage, re-run
skips, checkpoints load in plain transformers and generate through the chat template."""

import json
import time

import pytest

from tiny import DEMO, TINY, chatsmith

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "demo"
    result = chatsmith("run", DEMO, "--out", out, *TINY)
    assert "| stage |" in result.stdout  # the per-stage table is printed
    return out


def test_every_stage_writes_its_contract(run_dir):
    for name, keys in {
        "pretrain": ["eval_loss", "bits_per_byte"],
        "sft": ["end_of_turn_rate_greedy", "fact_accuracy_seen", "fact_accuracy_pretrain_only", "gold_score_greedy",
                "gold_score_chat", "gold_score_t1", "gold_score_greedy_ci95"],
        "reward": ["pairwise_accuracy"],
        "ppo": ["gold_score_greedy", "gold_score_chat", "gold_score_t1", "end_of_turn_rate_greedy", "kl_to_sft",
                "gold_score_greedy_sft", "gold_score_chat_sft", "gold_minus_sft_greedy_ci95", "gold_minus_sft_chat_ci95",
                "reward_score_greedy", "monitor_kl_to_sft"],
    }.items():
        stage = run_dir / name
        for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "metrics.jsonl", "eval.json", "chatsmith.json"]:
            assert (stage / f).exists(), f"{name}/{f}"
        assert not (stage / "resume").exists()
        assert not list(stage.glob("*.bin")) and not list(stage.glob("*.pt"))
        metrics = json.loads((stage / "eval.json").read_text())
        assert all(metrics.get(k) is not None for k in keys), (name, metrics)
        rows = [json.loads(l) for l in (stage / "metrics.jsonl").read_text().splitlines()]
        assert rows and all("step" in r and "time_s" in r for r in rows)
    sft = json.loads((run_dir / "sft" / "eval.json").read_text())
    assert sft["eval_prompts_test"] >= 48
    low, high = sft["gold_score_greedy_ci95"]
    assert low <= sft["gold_score_greedy"] <= high


def test_manifest_records_lineage(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = manifest["stages"]
    assert [stages[n]["status"] for n in ("pretrain", "sft", "reward", "ppo")] == ["done"] * 4
    assert stages["sft"]["inputs"]["init_from"]["path"] == str(run_dir / "pretrain")
    assert stages["sft"]["inputs"]["init_from"]["sha256"] == stages["pretrain"]["output_sha256"]
    assert stages["ppo"]["inputs"]["reward_model"]["sha256"] == stages["reward"]["output_sha256"]
    meta = json.loads((run_dir / "ppo" / "chatsmith.json").read_text())
    assert meta["parents"]["policy"]["sha256"] == stages["sft"]["output_sha256"]
    assert (run_dir / "recipe.yaml").exists()


def test_reward_data_went_through_labeling_ingest(run_dir):
    summary = json.loads((run_dir / "labels" / "ingest" / "summary.json").read_text())
    assert summary["read"] == summary["accepted"] + summary["rejected"] and summary["accepted"] > 0
    assert (run_dir / "labels" / "label_studio_export.json").exists()
    assert (run_dir / "labels" / "build" / "comparisons_train.jsonl").exists()


def test_report_has_table_plots_and_samples(run_dir):
    report = (run_dir / "report.md").read_text()
    assert "| pretrain |" in report and "| ppo |" in report
    assert "![ppo](plots/ppo.png)" in report and (run_dir / "plots" / "ppo.png").stat().st_size > 1000
    assert "- sft:" in report and "- base:" in report


def test_checkpoints_load_in_plain_transformers(run_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    for name in ("pretrain", "sft", "ppo"):
        tokenizer = AutoTokenizer.from_pretrained(run_dir / name)
        model = AutoModelForCausalLM.from_pretrained(run_dir / name)
        eos_ids = model.generation_config.eos_token_id  # SFT and PPO: the chat format's stop tokens, as a list
        assert tokenizer.eos_token_id in (eos_ids if isinstance(eos_ids, list) else [eos_ids])
        ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the river of Alford?"}],
                                            add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=40, do_sample=False)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        if name != "pretrain":  # SFT taught the end-of-turn token; generation stops on it
            assert tokenizer.eos_token_id in new and new[-1] == tokenizer.eos_token_id, tokenizer.decode(new)
    reward = AutoModelForSequenceClassification.from_pretrained(run_dir / "reward")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "reward")
    enc = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                                        return_tensors="pt", return_dict=True)
    assert reward(**enc).logits.shape == (1, 1)
    assert torch.isfinite(reward(**enc).logits).all()


def test_rerun_skips_finished_stages_quickly(run_dir):
    before = {p: p.stat().st_mtime_ns for p in run_dir.glob("*/model.safetensors")}
    started = time.perf_counter()
    result = chatsmith("run", DEMO, "--out", run_dir, *TINY)
    elapsed = time.perf_counter() - started
    assert result.stdout.count("done, skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("*/model.safetensors")} == before
    assert elapsed < 5, f"a no-op re-run took {elapsed:.1f}s"  # it stats inputs instead of hashing them again


def test_changed_config_reruns_that_stage_and_later(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    # a recipe change to the reward stage re-runs reward and, through the new reward hash, ppo
    result = chatsmith("run", DEMO, "--out", copy, *TINY, "stages.reward.learning_rate=1e-4", "stages.ppo.max_steps=1")
    assert "pretrain: done, skipped" in result.stdout and "sft: done, skipped" in result.stdout
    assert "reward: running (its config changed)" in result.stdout
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["stages"]["ppo"]["reason"].startswith(("inputs changed", "its config changed"))


def test_chat_repl_streams_multi_turn(run_dir):
    result = chatsmith("chat", run_dir / "sft", "--greedy", "--max-new-tokens", "20",
                       input="What is the river of Alford?\nAnd its dish?\n/exit\n")
    assert result.stdout.count("assistant> ") == 2
