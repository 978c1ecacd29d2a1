"""The PPO stage under DeepSpeed ZeRO-2 with 2 CPU processes (`accelerate launch`): both ranks really
see world size 2 and draw different prompts, the run finishes, and the output checkpoint loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOWNS = ["Alder", "Brim", "Corvi", "Dunmere"]

ENTRY = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    from pipeline.eval.monitor import Monitor
    from stages.config import PPOConfig
    from stages.rlhf import ppo

    assets, out = json.loads(sys.argv[1]), sys.argv[2]
    seen = []
    original = ppo.PPOTrainer.rollout
    def rollout(self, step):
        start = (step - 1) * self.config.rollout_batch_size * self.world + self.rank * self.config.rollout_batch_size
        seen.append({
            "step": step, "rank": self.rank, "accelerate_world": self.world, "torch_world": dist.get_world_size(),
            "engine": type(self.wrapper).__name__, "zero_stage": self.accelerator.state.deepspeed_plugin.zero_stage,
            "prompts": self.stream.take(start, self.config.rollout_batch_size),
        })
        return original(self, step)
    ppo.PPOTrainer.rollout = rollout
    config = PPOConfig(max_steps=2, save_steps=1, eval_steps=2, rollout_batch_size=4, batch_size=4, max_new_tokens=6,
                            ppo_epochs=2, num_minibatches=2, learning_rate=1e-3, num_eval_prompts=4, seed=0)
    ppo.run(config, policy=assets["policy"], reward_model=assets["reward"], prompts=assets["prompts"], output_dir=out,
            monitor=Monitor.for_prompts(assets["eval_prompts"], reward_model=assets["reward"], batch_size=4))
    with open(f"{out}.rank{dist.get_rank()}.json", "w") as handle:
        json.dump(seen, handle)
    """
)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_ppo_zero2_two_cpu_processes(tiny_assets, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    with open(tmp_path / "prompts.jsonl", "w") as handle:
        for i in range(32):
            handle.write(json.dumps({"prompt": f"What is the emblem of {TOWNS[i % 4]}? ({i})"}) + "\n")
    with open(tmp_path / "eval.jsonl", "w") as handle:
        for i in range(4):
            handle.write(json.dumps({"prompt": f"Which river runs through {TOWNS[i]}?", "split": "dev"}) + "\n")
    # A custom loop needs integers here (accelerate.prepare refuses "auto" without a Trainer):
    # micro-batch = rollout_batch_size / num_minibatches / gradient_accumulation_steps = 4 / 2 / 1.
    (tmp_path / "zero2.json").write_text(json.dumps({
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
        "zero_allow_untested_optimizer": True, "zero_optimization": {"stage": 2}, "steps_per_print": 1000000,
    }))
    (tmp_path / "accelerate.yaml").write_text(textwrap.dedent(f"""\
        compute_environment: LOCAL_MACHINE
        distributed_type: DEEPSPEED
        deepspeed_config:
          deepspeed_config_file: {tmp_path / "zero2.json"}
          zero3_init_flag: false
        use_cpu: true
        num_processes: 2
        num_machines: 1
        machine_rank: 0
        main_process_ip: 127.0.0.1
        main_process_port: {29500 + os.getpid() % 1000}
        """))
    (tmp_path / "entry.py").write_text(ENTRY)
    assets = {"policy": str(tiny_assets["policy"]), "reward": str(tiny_assets["reward"]),
              "prompts": str(tmp_path / "prompts.jsonl"), "eval_prompts": str(tmp_path / "eval.jsonl")}
    out = tmp_path / "ppo"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "accelerate.yaml")]
    done = subprocess.run([*launcher, str(tmp_path / "entry.py"), json.dumps(assets), str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1)]
    for rank, seen in enumerate(ranks):
        assert [s["step"] for s in seen] == [1, 2]
        for s in seen:
            assert s["rank"] == rank and s["accelerate_world"] == 2 and s["torch_world"] == 2
            assert s["engine"] == "DeepSpeedEngine" and s["zero_stage"] == 2
    for step in range(2):  # each rank drew its own share of the prompt stream
        assert not set(ranks[0][step]["prompts"]) & set(ranks[1][step]["prompts"])

    assert json.loads((out / "eval.json").read_text())["steps"] == 2
    model = AutoModelForCausalLM.from_pretrained(out)
    before, after = load_file(str(tiny_assets["policy"] / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any(not (before[k] == after[k]).all() for k in before)
    assert model.config.vocab_size == AutoModelForCausalLM.from_pretrained(tiny_assets["policy"]).config.vocab_size
