"""Overrides that shrink the demo recipe to a tiny world and tiny models (seconds per stage on CPU)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "tiny-cpu.yaml"

TINY = [
    "data.world.towns=12", "data.world.docs_per_town=6", "data.world.general_docs=10",
    "data.world.rlhf_prompts=64", "data.world.comparison_prompts=32", "data.world.sft_per_fact=2",
    "tokenizer.vocab_size=400",
    "stages.pretrain.model={architecture: llama, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128}",
    "stages.pretrain.seq_len=64", "stages.pretrain.batch_size=8", "stages.pretrain.max_steps=30",
    "stages.pretrain.save_steps=10", "stages.pretrain.logging_steps=5", "stages.pretrain.warmup_steps=2",
    "stages.sft.max_steps=80", "stages.sft.batch_size=8", "stages.sft.save_steps=40", "stages.sft.logging_steps=10",
    "stages.sft.learning_rate=2e-3",
    "stages.reward.max_steps=8", "stages.reward.batch_size=8", "stages.reward.save_steps=4", "stages.reward.logging_steps=2",
    "stages.ppo.max_steps=3", "stages.ppo.rollout_batch_size=8", "stages.ppo.max_new_tokens=12", "stages.ppo.save_steps=1",
    "stages.ppo.eval_steps=2", "stages.ppo.num_eval_prompts=16", "stages.ppo.batch_size=8",
    "eval.max_new_tokens=16", "eval.report_samples=2",
]


def env():
    e = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def chatsmith(*args, check=True, timeout=600, **kw):
    """Run the real CLI in a subprocess."""
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=REPO, env=env(),
                            capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"chatsmith {' '.join(map(str, args))} exited {result.returncode}\n{result.stderr[-4000:]}")
    return result
