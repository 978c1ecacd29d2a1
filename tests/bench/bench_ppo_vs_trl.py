"""PPO speed and memory: chatsmith's PPO stage against TRL 1.12's `trl.experimental.ppo.PPOTrainer`.

TRL removed its PPO in 1.13, so its side runs in a separate venv, `.venv-trl112` (created here when
missing: torch 2.13.0 CPU, trl 1.12.0, transformers 5.23.0, accelerate 1.15.0, datasets 5.2.0).
Both sides get, in one run of this script:
  - the same tiny policy and reward model (the demo's width-192, 4-layer Llama, built once from a
    config with a tokenizer trained here; the value model starts from the reward model on both),
  - the same prompts (demo-world questions through the chat template, same token ids),
  - the same settings: 8 prompts per update, 32 new tokens, 4 PPO epochs, 1 minibatch, k1 KL at
    0.05, temperature 1, linear LR schedule, `--updates` updates.
Each side runs as its own subprocess (a small script that builds its config and calls the
trainer, as a user's would), after one untimed warm-up import so neither pays for .pyc compilation.
Measured per side: seconds per update in steady state (update 2 .. N-1: the first pays one-off
costs, and chatsmith's last also runs its reward/gold monitor and writes its resume state), the
whole process's wall time (start-up and both sides' final save included; chatsmith's also includes
its SFT-baseline and final eval on 8 held-out prompts, which TRL does not do), and peak memory
(ru_maxrss of the child). Prints both, the ratios (aim: chatsmith >= 2x faster on both, peak memory
no higher) and chatsmith's time split per update (generate / score / train, from its metrics.jsonl).

    .venv/bin/python tests/bench/bench_ppo_vs_trl.py [--updates 10] [--threads 1] [--repeats 1]
"""

from __future__ import annotations

# Only the standard library at module level: this file is also each side's child script, and its
# imports would count toward that side's start-up time.
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRL_VENV = REPO / ".venv-trl112"
TRL_PINS = ["trl==1.12.0", "transformers==5.23.0", "accelerate==1.15.0", "datasets==5.2.0"]

PROMPTS_PER_UPDATE = 8
NEW_TOKENS = 32
PPO_EPOCHS = 4
MINIBATCHES = 1
LEARNING_RATE = 1e-5
KL_COEF = 0.05
SEED = 0


# ------------------------------------------------------------------------------------- set-up (parent)


def ensure_trl_venv() -> Path:
    python = TRL_VENV / "bin" / "python"
    probe = [str(python), "-c", "import trl, sys; from trl.experimental.ppo import PPOTrainer; sys.exit(trl.__version__ != '1.12.0')"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {TRL_VENV} (torch 2.13.0 CPU + trl 1.12.0) ...", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)  # based on the base interpreter
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # pinned first: unpinned, pip picks a CUDA build
    subprocess.run([*pip, *TRL_PINS], check=True)
    subprocess.run(probe, check=True)
    return python


def build_assets(root: Path) -> None:
    """Tokenizer, policy, reward model and prompts, written once and read by both sides."""
    sys.path.insert(0, str(REPO))
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from pipeline.demo.config import WorldConfig
    from pipeline.demo.world import World
    from stages.common import write_jsonl
    from stages.tokenizer import train_tokenizer

    world = World.build(WorldConfig())
    tokenizer = train_tokenizer(world.pretrain_documents(), vocab_size=1024)

    def config(**extra):
        return LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=192, intermediate_size=512, num_hidden_layers=4,
            num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=512, tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None, **extra,
        )

    torch.manual_seed(SEED)
    policy = LlamaForCausalLM(config())
    policy.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    reward = LlamaForSequenceClassification(config(num_labels=1))
    for path, model in ((root / "policy", policy), (root / "reward", reward)):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    write_jsonl(root / "prompts.jsonl", ({"prompt": r["prompt"]} for r in world.rlhf_prompts()[:512]))
    write_jsonl(root / "eval_prompts.jsonl", ({"prompt": r["prompt"]} for r in world.eval_prompts()[:PROMPTS_PER_UPDATE]))


def run_side(name: str, python: str, assets: Path, out: Path, updates: int, env: dict) -> dict:
    """Run one side as a child process; its wall time and peak RSS come from the parent's view."""
    cmd = [python, str(Path(__file__).resolve()), "--child", name, "--assets", str(assets), "--out", str(out), "--updates", str(updates)]
    started = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log_lines = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{name} side failed ({process.returncode}):\n{log_lines[-5000:]}")
    result = json.loads((out / "bench_timings.json").read_text())
    ends = result["update_ends"]
    assert len(ends) == updates, f"{name}: {len(ends)} updates timed, expected {updates}"
    intervals = [b - a for a, b in zip(ends, ends[1:])]  # intervals[i] = duration of update i + 2
    steady = intervals[: max(1, len(intervals) - 1)]  # updates 2 .. N-1
    return {
        "s_per_update": statistics.mean(steady),
        "s_per_update_median": statistics.median(steady),
        "first_update_s": result["first_update_s"],
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "split": result.get("split"),
    }


# -------------------------------------------------------------------------------------- the two sides


def child_chatsmith(assets: Path, out: Path, updates: int) -> None:
    sys.path.insert(0, str(REPO))
    from stages.config import PPOConfig
    from stages.rlhf import ppo

    config = PPOConfig(
        max_steps=updates, save_steps=updates, eval_steps=updates, logging_steps=1, num_eval_prompts=PROMPTS_PER_UPDATE,
        rollout_batch_size=PROMPTS_PER_UPDATE, batch_size=PROMPTS_PER_UPDATE, max_new_tokens=NEW_TOKENS,
        ppo_epochs=PPO_EPOCHS, num_minibatches=MINIBATCHES, learning_rate=LEARNING_RATE, lr_scheduler="linear",
        kl_coef=KL_COEF, kl_estimator="k1", temperature=1.0, missing_eot_penalty=-1.0, normalize_reward=False,
        value_init="reward", seed=SEED,
    )
    ppo.run(config, policy=assets / "policy", reward_model=assets / "reward", prompts=assets / "prompts.jsonl",
            eval_prompts=assets / "eval_prompts.jsonl", output_dir=out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    updates_rows = [r for r in rows if r["step"] >= 1 and "time_train_s" in r]
    steady = updates_rows[1:-1] or updates_rows
    split = {k: statistics.mean(r[f"time_{k}_s"] for r in steady) for k in ("generate", "score", "train")}
    baseline_end = next(r["time_s"] for r in rows if r["step"] == 0)
    ends = [r["time_s"] for r in updates_rows]
    (out / "bench_timings.json").write_text(json.dumps({"update_ends": ends, "first_update_s": ends[0] - baseline_end, "split": split}))


def child_trl(assets: Path, out: Path, updates: int) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(assets / "policy", padding_side="left")

    def encode(path: Path) -> Dataset:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True) for r in rows]
        return Dataset.from_dict({"input_ids": [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]})

    ends: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    timer = Timer()
    args = PPOConfig(
        output_dir=str(out), per_device_train_batch_size=PROMPTS_PER_UPDATE, gradient_accumulation_steps=1,
        num_mini_batches=MINIBATCHES, num_ppo_epochs=PPO_EPOCHS, response_length=NEW_TOKENS,
        total_episodes=PROMPTS_PER_UPDATE * updates, local_rollout_forward_batch_size=PROMPTS_PER_UPDATE,
        num_sample_generations=0, stop_token="eos", temperature=1.0, missing_eos_penalty=1.0, kl_coef=KL_COEF,
        kl_estimator="k1", learning_rate=LEARNING_RATE, lr_scheduler_type="linear", use_cpu=True, bf16=False,
        save_strategy="no", logging_steps=1, report_to="none", seed=SEED, disable_tqdm=True,
    )
    common = dict(dtype=torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(assets / "policy", **common)
    reference = AutoModelForCausalLM.from_pretrained(assets / "policy", **common)
    reward = AutoModelForSequenceClassification.from_pretrained(assets / "reward", num_labels=1, **common)
    value = AutoModelForSequenceClassification.from_pretrained(assets / "reward", num_labels=1, **common)
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer, model=policy, ref_model=reference, reward_model=reward, value_model=value,
        train_dataset=encode(assets / "prompts.jsonl"), eval_dataset=encode(assets / "eval_prompts.jsonl"), callbacks=[timer],
    )
    trainer.train()
    trainer.save_model(str(out / "final"))
    (out / "bench_timings.json").write_text(json.dumps({"update_ends": ends, "first_update_s": ends[0] - timer.begin}))


def warm_up(python: str, modules: str, env: dict) -> None:
    """Import each side's stack once, untimed, so .pyc compilation and a cold page cache count for neither."""
    subprocess.run([python, "-c", f"import {modules}"], env=env, check=True, capture_output=True)


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads for both sides")
    parser.add_argument("--repeats", type=int, default=1, help="run each side this many times (alternating); best of each")
    parser.add_argument("--child", choices=["chatsmith", "trl"])
    parser.add_argument("--assets", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        (child_chatsmith if args.child == "chatsmith" else child_trl)(args.assets, args.out, args.updates)
        return
    if args.updates < 4:
        parser.error("--updates must be at least 4 (steady state excludes the first and last)")

    trl_python = str(ensure_trl_venv())
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    sides = {"chatsmith": (sys.executable, "stages.rlhf.ppo, transformers, accelerate"), "trl": (trl_python, "trl.experimental.ppo, datasets")}
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        root = Path(tmp)
        build_assets(root / "assets")
        for python, modules in sides.values():
            warm_up(python, modules, {**env, "PYTHONPATH": str(REPO)} if python == sys.executable else env)
        results: dict[str, list[dict]] = {name: [] for name in sides}
        for repeat in range(args.repeats):
            for name, (python, _) in sides.items():
                side_env = {**env, "PYTHONPATH": str(REPO)} if name == "chatsmith" else env
                result = run_side(name, python, root / "assets", root / f"{name}-{repeat}", args.updates, side_env)
                results[name].append(result)
                print(f"  {name:9s} run {repeat + 1}: {result['s_per_update']:.3f} s/update, wall {result['wall_s']:.1f} s, "
                      f"peak {result['peak_rss_mb']:.0f} MB", flush=True)

    best = {name: min(runs, key=lambda r: r["s_per_update"]) for name, runs in results.items()}
    ours, theirs = best["chatsmith"], best["trl"]
    print(f"\nPPO, {args.updates} updates x {PROMPTS_PER_UPDATE} prompts, {NEW_TOKENS} new tokens, {PPO_EPOCHS} epochs, "
          f"{MINIBATCHES} minibatch, {args.threads} thread(s); width-192 4-layer Llama policy and reward model")
    print(f"{'':28s}{'chatsmith':>12s}{'TRL 1.12':>12s}{'ratio TRL/chatsmith':>22s}")
    for label, key, unit in (("seconds per update (mean)", "s_per_update", "s"), ("seconds per update (median)", "s_per_update_median", "s"),
                             ("first update", "first_update_s", "s"), ("process wall time", "wall_s", "s"), ("peak memory (RSS)", "peak_rss_mb", "MB")):
        print(f"{label:28s}{ours[key]:>11.2f}{unit[0]}{theirs[key]:>11.2f}{unit[0]}{theirs[key] / ours[key]:>21.2f}x")
    split = ours["split"]
    total = sum(split.values())
    print("chatsmith time split per update: " + ", ".join(f"{k} {v:.3f} s ({100 * v / total:.0f}%)" for k, v in split.items()))
    speed, wall, memory = theirs["s_per_update"] / ours["s_per_update"], theirs["wall_s"] / ours["wall_s"], ours["peak_rss_mb"] / theirs["peak_rss_mb"]
    print(f"aim: >= 2x faster per update [{'met' if speed >= 2 else 'NOT met'}: {speed:.2f}x], >= 2x on wall time "
          f"[{'met' if wall >= 2 else 'NOT met'}: {wall:.2f}x], memory no higher [{'met' if memory <= 1 else 'NOT met'}: {memory:.2f}x of TRL's]")


if __name__ == "__main__":
    main()
