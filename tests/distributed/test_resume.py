"""Exact resume after kill -9: the re-run continues from the last save and ends with weights equal
(torch.equal) to an uninterrupted run — SFT and reward (HF Trainer resume, mid-epoch, gradient
accumulation 2), pretrain as a 2-process DDP job killed with all its ranks, and PPO through the CLI.
Under DeepSpeed ZeRO-2 and ZeRO-3 (2 CPU processes), pretrain and PPO resume through accelerate's
save_state/load_state with each rank's optimizer shard; SFT and reward under ZeRO-2 through the Trainer's
DeepSpeed checkpoints. The kill is the stages' test hook (`CHATSMITH_TEST_KILL_AFTER_SAVE=N`: every process of
the stage SIGKILLs itself right after its N-th save), not a race against a polling loop.
(The single-process pretrain and PPO stage tests live in tests/test_pretrain.py, tests/test_ppo_stage.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import DEMO, TINY, assert_equal_weights, cli, free_port, losses, manifest, run_until_killed_after_save, weights


def _kill_and_resume(tmp_path, stage: str, overrides: list[str], *, kill_after_save: int, expect_resumed: str,
                     saved=lambda stage_dir: True):
    """An uninterrupted run, then one killed right after save `kill_after_save` and run again: same weights, same
    logged losses. `saved(stage_dir)` checks what the killed run left in `resume/`."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    cli("stage", stage, DEMO, "--out", whole, *TINY, *overrides)
    launched = any(o.startswith("launch.num_processes=") and o != "launch.num_processes=1" for o in overrides)
    run_until_killed_after_save("stage", stage, DEMO, "--out", cut, *TINY, *overrides, save=kill_after_save,
                                log=tmp_path / "killed.log", launched=launched)
    # killed with the CLI, nobody recorded an end; killed ranks, the CLI recorded the failure
    assert manifest(cut)[stage]["status"] == ("failed" if launched else "running")
    assert not (cut / stage / "model.safetensors").exists()
    assert saved(cut / stage), f"{cut / stage / 'resume'} does not hold the save the stage was killed after"
    result = cli("stage", stage, DEMO, "--out", cut, *TINY, *overrides)
    assert expect_resumed in result.stdout + result.stderr, "the re-run did not continue from the last save"
    assert_equal_weights(whole / stage, cut / stage)
    assert losses(whole / stage) == losses(cut / stage)
    assert manifest(cut)[stage]["status"] == "done"
    return whole, cut


def _trainer_checkpoint(step: int):
    """resume/ holds the Trainer's checkpoint-`step`, complete (trainer_state.json is written last), and no later one."""
    def saved(stage_dir: Path) -> bool:
        names = sorted(p.name for p in (stage_dir / "resume").glob("checkpoint-*"))
        return names == [f"checkpoint-{step}"] and (stage_dir / "resume" / names[0] / "trainer_state.json").exists()
    return saved


@pytest.mark.slow
def test_sft_resumes_exactly_after_kill(tiny_assets, tmp_path):
    # 8 conversations per step, accumulation 2: 16 per optimizer step; the kill lands mid-epoch
    overrides = [f"stages.sft.init_from={tiny_assets['policy']}", "stages.sft.max_steps=12", "stages.sft.save_steps=5",
                 "stages.sft.batch_size=4", "stages.sft.gradient_accumulation_steps=2", "stages.sft.logging_steps=1"]
    _kill_and_resume(tmp_path, "sft", overrides, kill_after_save=1, saved=_trainer_checkpoint(5),
                     expect_resumed="resuming from step 5")


@pytest.mark.slow
def test_reward_resumes_exactly_after_kill(tiny_assets, tmp_path):
    # the demo's comparisons are sampled from init_from; 8 pairs per step, accumulation 2, killed mid-epoch
    overrides = [f"stages.reward.init_from={tiny_assets['policy']}", "stages.reward.max_steps=8", "stages.reward.save_steps=3",
                 "stages.reward.batch_size=4", "stages.reward.gradient_accumulation_steps=2", "stages.reward.logging_steps=1"]
    _kill_and_resume(tmp_path, "reward", overrides, kill_after_save=1, saved=_trainer_checkpoint(3),
                     expect_resumed="resuming from step 3")


@pytest.mark.slow
@pytest.mark.distributed
def test_pretrain_two_processes_resumes_exactly_after_kill(tmp_path):
    port = free_port()
    overrides = ["stages.pretrain.max_steps=40", "stages.pretrain.save_steps=15", "stages.pretrain.logging_steps=5",
                 "stages.pretrain.gradient_accumulation_steps=2", "stages.pretrain.batch_size=4",
                 "launch.config=ddp", "launch.num_processes=2", f"launch.main_process_port={port}"]
    _kill_and_resume(tmp_path, "pretrain", overrides, kill_after_save=1, saved=_own_loop_saved("ddp", 15),
                     expect_resumed="resuming from step 15")


# ------------------------------------------------------------------------------- under DeepSpeed ZeRO

def _zero(config: str) -> list[str]:
    return [f"launch.config={config}", "launch.num_processes=2", f"launch.main_process_port={free_port()}"]


def _own_loop_saved(backend: str, step: int):
    """A complete resume/ of pretrain or PPO (state.json is written last) at `step`; under DeepSpeed it holds
    DeepSpeed's per-rank optimizer shards."""
    def saved(stage_dir: Path) -> bool:
        state = stage_dir / "resume" / "state.json"
        if not state.exists():
            return False
        written = json.loads(state.read_text())
        return (written["backend"] == ("deepspeed" if backend.startswith("zero") else "torch")
                and written["world_size"] == 2 and written["counters"].get("step", written["counters"].get("trainer", {}).get("step")) == step)
    return saved


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("config", ["zero2", "zero3"])
def test_pretrain_resumes_exactly_under_zero_after_kill(config, tmp_path):
    # A logged loss is the mean over its window since the last log: saves fall on log steps so windows match.
    overrides = ["stages.pretrain.max_steps=24", "stages.pretrain.save_steps=10", "stages.pretrain.logging_steps=5",
                 "stages.pretrain.batch_size=4", *_zero(config)]
    _, cut = _kill_and_resume(tmp_path, "pretrain", overrides, kill_after_save=1, saved=_own_loop_saved(config, 10),
                              expect_resumed="resuming from step 10")
    assert not (cut / "pretrain" / "resume").exists()  # removed once the stage is done


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("config", ["zero3"])
def test_ppo_resumes_exactly_under_zero_after_kill(config, tiny_assets, tmp_path):
    """Under ZeRO-3 the policy's parameters are sharded: generation gathers them, and resume reloads each rank's
    shard of parameters and optimizer state; the final weights are gathered whole into model.safetensors. (ZeRO-2's
    save_state/load_state path is the one pretrain's ZeRO-2 test above resumes through; PPO under ZeRO-2 is
    tests/test_ppo_zero2.py. ZeRO-3 only here keeps `make test` within its time.)"""
    from stages.common import write_jsonl

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": f"What is the river of Alder? ({i})"} for i in range(24)])
    overrides = ["data.source=files", f"stages.ppo.policy={tiny_assets['policy']}", f"stages.ppo.reward_model={tiny_assets['reward']}",
                 f"stages.ppo.prompts={prompts}", "stages.ppo.rollout_batch_size=4", "stages.ppo.max_new_tokens=6",
                 "stages.ppo.ppo_epochs=2", "stages.ppo.num_minibatches=2", "stages.ppo.max_steps=5", "stages.ppo.save_steps=2",
                 "stages.ppo.eval_steps=5", "stages.ppo.num_eval_prompts=4", "stages.ppo.batch_size=4",
                 "stages.ppo.learning_rate=1e-3", *_zero(config)]
    whole, cut = _kill_and_resume(tmp_path, "ppo", overrides, kill_after_save=1, saved=_own_loop_saved(config, 2),
                                  expect_resumed="ppo: resuming from update 2")
    assert len(losses(whole / "ppo", "policy_loss")) == 5
    assert losses(whole / "ppo", "policy_loss") == losses(cut / "ppo", "policy_loss")
    # training moved the policy: equal weights are not two copies of the start
    start, end = weights(tiny_assets["policy"]), weights(whole / "ppo")
    assert any(not torch.equal(start[k], end[k]) for k in start)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_trainer_stages_resume_exactly_under_zero2_after_kill(stage, tiny_assets, tmp_path):
    """SFT and reward (HF Trainer) as 2-process DeepSpeed ZeRO-2 jobs killed right after their first save: the
    Trainer reloads DeepSpeed's checkpoint (each rank's optimizer shard, its RNG state) and the data position,
    and the final weights equal the uninterrupted run's. On the user's files, with no held-out prompts, so no
    behaviour evaluation runs: the resume is what is tested."""
    from stages.common import write_jsonl

    question = ["What is the river of {t}?", "What do people in {t} eat?"]
    towns = [("Alder", "Sorrel", "barley soup"), ("Brim", "Tallow", "plum cake"), ("Corvi", "Umber", "fish stew")]
    if stage == "sft":
        rows = [{"messages": [{"role": "user", "content": question[i % 2].format(t=t)},
                              {"role": "assistant", "content": f"The river of {t} is the {r}." if i % 2 == 0 else f"People in {t} eat {d}."}]}
                for i, (t, r, d) in enumerate(towns * 8)]
    else:
        rows = [{"prompt": question[0].format(t=t), "chosen": f"The {r}.", "rejected": "I do not know."} for t, r, _ in towns * 8]
    data = tmp_path / f"{stage}.jsonl"
    write_jsonl(data, rows)
    overrides = ["data.source=files", f"data.{'sft' if stage == 'sft' else 'comparisons'}={data}",
                 f"stages.{stage}.init_from={tiny_assets['policy']}", f"stages.{stage}.max_steps=6",
                 f"stages.{stage}.save_steps=3", f"stages.{stage}.batch_size=2", f"stages.{stage}.gradient_accumulation_steps=2",
                 f"stages.{stage}.logging_steps=1", *_zero("zero2")]
    whole, _ = _kill_and_resume(tmp_path, stage, overrides, kill_after_save=1, saved=_deepspeed_trainer_checkpoint(3),
                                expect_resumed=f"{stage}: resuming from step 3")
    assert len(losses(whole / stage)) == 6
    start, end = weights(tiny_assets["policy"]), weights(whole / stage)
    assert any(not torch.equal(start[k], end[k]) for k in start if k in end)


def _deepspeed_trainer_checkpoint(step: int):
    """The Trainer's checkpoint-`step` under DeepSpeed: DeepSpeed's own folder with both ranks' optimizer shards
    and both ranks' RNG states."""
    def saved(stage_dir: Path) -> bool:
        checkpoint = stage_dir / "resume" / f"checkpoint-{step}"
        shards = list(checkpoint.glob(f"global_step{step}/*optim_states.pt"))
        return (_trainer_checkpoint(step)(stage_dir) and len(shards) == 2
                and all((checkpoint / f"rng_state_{rank}.pth").exists() for rank in (0, 1)))
    return saved
