"""Exact resume after kill -9: the re-run continues from the last save and ends with weights equal
(torch.equal) to an uninterrupted run — SFT and reward (HF Trainer resume, mid-epoch, gradient
accumulation 2), pretrain as a 2-process DDP job killed with all its ranks, and PPO through the CLI.
(The single-process pretrain and PPO stage tests live in tests/test_pretrain.py, tests/test_ppo_stage.py.)"""

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
    _kill_and_resume(tmp_path, "pretrain", overrides, lambda d: (d / "resume" / "counters.json").exists(),
                     expect_resumed="resuming from step 15")
