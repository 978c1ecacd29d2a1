"""Exact resume after kill -9: the re-run continues from the last save and ends with weights equal
(torch.equal) to an uninterrupted run — SFT and reward (HF Trainer resume, mid-epoch, gradient
accumulation 2), pretrain as a 2-process DDP job killed with all its ranks, and PPO through the CLI.
Under DeepSpeed ZeRO-2 and ZeRO-3 (2 CPU processes), pretrain and PPO resume through accelerate's
save_state/load_state with each rank's optimizer shard. (The single-process pretrain and PPO stage tests
live in tests/test_pretrain.py, tests/test_ppo_stage.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import DEMO, TINY, assert_equal_weights, cli, free_port, kill_group_when, losses, manifest, start


def _complete_checkpoint(stage_dir: Path, step: int):
    return lambda: (stage_dir / "resume" / f"checkpoint-{step}" / "trainer_state.json").exists()


def _kill_and_resume(tmp_path, stage: str, overrides: list[str], ready, *, expect_resumed: str):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    cli("stage", stage, DEMO, "--out", whole, *TINY, *overrides)
    proc = start("stage", stage, DEMO, "--out", cut, *TINY, *overrides, log=tmp_path / "killed.log")
    kill_group_when(proc, lambda: ready(cut / stage))
    assert manifest(cut)[stage]["status"] == "running"
    assert not (cut / stage / "model.safetensors").exists()
    result = cli("stage", stage, DEMO, "--out", cut, *TINY, *overrides)
    assert expect_resumed in result.stdout + result.stderr, "the re-run did not continue from the last save"
    assert_equal_weights(whole / stage, cut / stage)
    assert losses(whole / stage) == losses(cut / stage)
    assert manifest(cut)[stage]["status"] == "done"
    return whole, cut


@pytest.mark.slow
def test_sft_resumes_exactly_after_kill(tiny_assets, tmp_path):
    # 8 conversations per step, accumulation 2: 16 per optimizer step; the kill lands mid-epoch
    overrides = [f"stages.sft.init_from={tiny_assets['policy']}", "stages.sft.max_steps=12", "stages.sft.save_steps=5",
                 "stages.sft.batch_size=4", "stages.sft.gradient_accumulation_steps=2", "stages.sft.logging_steps=1"]
    _kill_and_resume(tmp_path, "sft", overrides, lambda d: (d / "resume" / "checkpoint-5" / "trainer_state.json").exists(),
                     expect_resumed="resuming from step 5")


@pytest.mark.slow
def test_reward_resumes_exactly_after_kill(tiny_assets, tmp_path):
    # the demo's comparisons are sampled from init_from; 8 pairs per step, accumulation 2, killed mid-epoch
    overrides = [f"stages.reward.init_from={tiny_assets['policy']}", "stages.reward.max_steps=8", "stages.reward.save_steps=3",
                 "stages.reward.batch_size=4", "stages.reward.gradient_accumulation_steps=2", "stages.reward.logging_steps=1"]
    _kill_and_resume(tmp_path, "reward", overrides, lambda d: (d / "resume" / "checkpoint-3" / "trainer_state.json").exists(),
                     expect_resumed="resuming from step 3")


@pytest.mark.slow
@pytest.mark.distributed
def test_pretrain_two_processes_resumes_exactly_after_kill(tmp_path):
    port = free_port()
    overrides = ["stages.pretrain.max_steps=40", "stages.pretrain.save_steps=15", "stages.pretrain.logging_steps=5",
                 "stages.pretrain.gradient_accumulation_steps=2", "stages.pretrain.batch_size=4",
                 "launch.config=ddp", "launch.num_processes=2", f"launch.main_process_port={port}"]
    _kill_and_resume(tmp_path, "pretrain", overrides, lambda d: (d / "resume" / "state.json").exists(),
                     expect_resumed="resuming from step 15")


# ------------------------------------------------------------------------------- under DeepSpeed ZeRO

def _zero(config: str) -> list[str]:
    return [f"launch.config={config}", "launch.num_processes=2", f"launch.main_process_port={free_port()}"]


def _saved_under_deepspeed(stage_dir: Path) -> bool:
    """A complete resume/ (state.json is written last) holding DeepSpeed's per-rank optimizer shards."""
    state = stage_dir / "resume" / "state.json"
    return state.exists() and json.loads(state.read_text())["backend"] == "deepspeed"


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("config", ["zero2", "zero3"])
def test_pretrain_resumes_exactly_under_zero_after_kill(config, tmp_path):
    # A logged loss is the mean over its window since the last log: saves fall on log steps so windows match.
    overrides = ["stages.pretrain.max_steps=24", "stages.pretrain.save_steps=10", "stages.pretrain.logging_steps=5",
                 "stages.pretrain.batch_size=4", *_zero(config)]
    _, cut = _kill_and_resume(tmp_path, "pretrain", overrides, _saved_under_deepspeed, expect_resumed="resuming from step 10")
    assert not (cut / "pretrain" / "resume").exists()  # removed once the stage is done


@pytest.mark.slow
@pytest.mark.distributed
def test_ppo_resumes_exactly_under_zero2_after_kill(tiny_assets, tmp_path):
    from stages.common import write_jsonl

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": f"What is the river of Alder? ({i})"} for i in range(24)])
    overrides = ["data.source=files", f"stages.ppo.policy={tiny_assets['policy']}", f"stages.ppo.reward_model={tiny_assets['reward']}",
                 f"stages.ppo.prompts={prompts}", "stages.ppo.rollout_batch_size=4", "stages.ppo.max_new_tokens=6",
                 "stages.ppo.ppo_epochs=2", "stages.ppo.num_minibatches=2", "stages.ppo.max_steps=5", "stages.ppo.save_steps=2",
                 "stages.ppo.eval_steps=5", "stages.ppo.num_eval_prompts=4", "stages.ppo.batch_size=4",
                 "stages.ppo.learning_rate=1e-3", *_zero("zero2")]
    whole, cut = _kill_and_resume(tmp_path, "ppo", overrides, _saved_under_deepspeed, expect_resumed="ppo: resuming from update 2")
    assert losses(whole / "ppo", "policy_loss") == losses(cut / "ppo", "policy_loss") and len(losses(whole / "ppo", "policy_loss")) == 5
