"""`make bench-real-rlhf`: a small real RLHF run on public human data, through chatsmith's own CLI, and its report.

    .venv/bin/python tests/bench/real_rlhf.py [--hh FILE] [--oa FILE] [--model DIR] [--out runs/real-rlhf] [--full-size] [--record]

The recipe is `recipes/smollm2-135m-hh.yaml` (the full size, what a GPU runs); on CPU this script applies the
smaller sizes of `CPU_SIZES` as overrides (printed with the report). Nothing is downloaded: the checkpoint comes from
`make real-model`, the two data files from the user (a missing one is named with the command that fetches it).

1. Inputs (OUT/inputs/): the HH pairs through `chatsmith labels ingest --format hh-rlhf` and `chatsmith labels build`
   (split by prompt, its opening human turn, into train and test); PPO's prompts are the train side's prompts, the
   evaluation's the test side's (dev: PPO's monitor; test: the figures below). On CPU the pairs and prompts are
   those within the CPU lengths, and fewer of them.
2. `chatsmith stage sft|reward|ppo RECIPE --out OUT/run ...`, one process per stage (its peak RSS and time), then
   `chatsmith run` (the stages are done: it adds the arena and report.md).
3. The report, with 95% bootstrap CIs (by prompt):
   - the reward model's and the held-out reward model's pairwise accuracy on test-side HH pairs, beside published
     accuracies of full-data reward models on HH (`PUBLISHED`);
   - PPO against SFT on the test prompts: win rate judged by the held-out reward model (trained on a disjoint half
     of the train side's prompts, from the base checkpoint), KL to SFT, mean reply length, answers side by side;
   - whether the PPO checkpoint keeps the ChatML template and stops at `<|im_end|>`.
   It prints a markdown block; `--json FILE` writes it with the figures, and `--record` makes it the README's
   (`tests/bench/real_rlhf.json` and README.md's `real-rlhf` block, together: a test checks that they agree).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import real_data  # noqa: E402
from real_model import default_model_dir, readme_from_results, save_figures  # noqa: E402

RECIPE = REPO / "recipes" / "smollm2-135m-hh.yaml"
README_BLOCK = "real-rlhf"
RESULTS = HERE / "real_rlhf.json"
HH_EVAL_FRACTION = 0.25
"""Share of HH prompts (by opening human turn) on the test side."""
SIDE_BY_SIDE = 3

FULL_SIZES = {"pairs_max_tokens": None, "train_pairs": None, "eval_pairs": None, "prompt_max_tokens": 512,
              "dev_prompts": 64, "test_prompts": 256}
CPU_SIZES = {"pairs_max_tokens": 192, "train_pairs": 576, "eval_pairs": 240, "prompt_max_tokens": 128,
             "dev_prompts": 8, "test_prompts": 32}
"""What the inputs are cut to (None: everything): pairs whose chosen and rejected conversations fit `pairs_max_tokens`,
the first `train_pairs` / `eval_pairs` of them, prompts of at most `prompt_max_tokens` tokens."""
# Steps, not epochs: a TRL stage's max_steps overrides its num_train_epochs. SFT: 32 steps of 4 (~1.5 epochs of
# the ~86 training conversations); reward: 36 steps of 8 (~1 epoch of each model's ~288 pairs); PPO: 20 updates of 8.
# Sized to ~40 minutes on 2 quiet cores from a first run at a third of these sizes (8ca057d: 20.7 minutes; SFT 8.5 s
# a step, reward 9 s, PPO 41 s an update; each stage's evaluation 1.5-4 minutes), leaving the 60-minute budget room.
CPU_OVERRIDES = [
    "stages.sft.max_steps=32", "stages.sft.batch_size=4", "stages.sft.max_length=384", "stages.sft.bf16=false",
    "stages.sft.save_steps=1000", "stages.sft.logging_steps=2",
    "stages.reward.max_steps=36", "stages.reward.batch_size=8", "stages.reward.max_length=192",
    "stages.reward.bf16=false", "stages.reward.save_steps=1000", "stages.reward.logging_steps=2",
    "stages.ppo.max_steps=20", "stages.ppo.rollout_batch_size=8", "stages.ppo.num_minibatches=1", "stages.ppo.ppo_epochs=2",
    "stages.ppo.max_new_tokens=48", "stages.ppo.max_prompt_length=128", "stages.ppo.eval_steps=10",
    "stages.ppo.num_eval_prompts=8", "stages.ppo.save_steps=10", "stages.ppo.bf16=false", "stages.ppo.batch_size=8",
    "eval.max_new_tokens=48", "eval.batch_size=32",
]

SMOKE_SIZES = {"pairs_max_tokens": 192, "train_pairs": 24, "eval_pairs": 12, "prompt_max_tokens": 64, "dev_prompts": 4,
               "test_prompts": 6}
SMOKE_OVERRIDES = ["stages.sft.max_steps=2", "stages.reward.max_steps=2", "stages.ppo.max_steps=2", "stages.ppo.eval_steps=2",
                   "stages.ppo.num_eval_prompts=4", "stages.ppo.max_new_tokens=12", "eval.max_new_tokens=12"]
"""`--smoke`: minutes, to check the script and the wiring, not a measurement."""

PUBLISHED = [
    ("RewardBench's HH harmless subset (`anthropic_harmless`), OpenAssistant/reward-model-deberta-v3-large-v2 (435M, "
     "trained on WebGPT, summarize-from-feedback, synthetic pairs and Anthropic's HH data): 0.564-0.591 across the "
     "revisions of RewardBench's results", "https://huggingface.co/datasets/allenai/reward-bench-results/blob/"
     "5d7913defc1aa3e66358f9c543e6879285eb766b/pref-sets/OpenAssistant/reward-model-deberta-v3-large-v2.json"),
    ("RewardBench's `anthropic_harmless` / `anthropic_helpful`, weqweasdas/hh_rlhf_rm_open_llama_3b (3B, full "
     "fine-tuning on ~106K HH helpful pairs): 0.454 / 0.667", "https://huggingface.co/datasets/allenai/"
     "reward-bench-results/blob/0583a5f7ea810b1eba9102bdeb3514ed256fa7e0/pref-sets/weqweasdas/hh_rlhf_rm_open_llama_3b.json"),
    ("The same 3B model's own card: 0.7548 on its held-out HH helpful pairs (<= 512 tokens)",
     "https://huggingface.co/weqweasdas/hh_rlhf_rm_open_llama_3b"),
    ("sileod/deberta-v3-large-tasksource-rlhf-reward-model, its card: validation accuracy 0.7516 on Anthropic/hh-rlhf "
     "(helpful and harmless together), against 0.6925 for OpenAssistant/reward-model-deberta-v3-large-v2",
     "https://huggingface.co/sileod/deberta-v3-large-tasksource-rlhf-reward-model"),
]
"""Published pairwise accuracies of reward models trained on far more data than this run, with their sources: what
the held-out accuracy here stands beside (other pairs, other sizes, other models; HH's harmless split is the hard one)."""


# ------------------------------------------------------------------------------------------ inputs


def chatsmith(*args: str, log: Path | None = None) -> dict:
    """Run the `chatsmith` CLI; returns its wall time, CPU time and peak RSS (this child's)."""
    command = [str(Path(sys.executable).with_name("chatsmith")), *args]
    started = time.perf_counter()
    handle = open(log, "a") if log else None
    try:
        process = subprocess.Popen(command, stdout=handle or subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        output = None if handle else process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        if handle:
            handle.close()
    if os.waitstatus_to_exitcode(status) != 0:
        tail = log.read_text()[-4000:] if log else output[-4000:]
        raise SystemExit(f"chatsmith {' '.join(args[:2])} failed:\n{tail}")
    return {"wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def prepare_inputs(hh: Path, model_dir: Path, inputs: Path, sizes: dict) -> dict:
    """OUT/inputs/: HH split by prompt with chatsmith's own ingest and build, cut to `sizes`; the prompts of each side."""
    from transformers import AutoTokenizer

    from stages.common import read_jsonl, write_jsonl

    inputs.mkdir(parents=True, exist_ok=True)
    log = inputs / "chatsmith.log"
    if not (inputs / "hh-build" / "comparisons_eval.jsonl").exists():
        chatsmith("labels", "ingest", "--format", "hh-rlhf", str(hh), "--out", str(inputs / "hh-ingest"), log=log)
        chatsmith("labels", "build", str(inputs / "hh-ingest"), "--out", str(inputs / "hh-build"),
                  "--eval-fraction", str(HH_EVAL_FRACTION), "--seed", "0", log=log)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def tokens(messages: list[dict], *, prompt: bool) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt, return_dict=True)["input_ids"])

    def fits(row: dict) -> bool:
        limit = sizes["pairs_max_tokens"]
        return limit is None or max(tokens(row["prompt"] + row[k], prompt=False) for k in ("chosen", "rejected")) <= limit

    counts = {}
    for side, limit in (("train", sizes["train_pairs"]), ("eval", sizes["eval_pairs"])):
        rows = read_jsonl(inputs / "hh-build" / f"comparisons_{side}.jsonl")
        kept = [r for r in rows if fits(r)][:limit]
        write_jsonl(inputs / f"comparisons_{side}.jsonl", kept)
        counts[f"pairs_{side}_built"], counts[f"pairs_{side}"] = len(rows), len(kept)

    def prompts(side: str) -> list[dict]:
        seen, out = set(), []
        for row in read_jsonl(inputs / "hh-build" / f"comparisons_{side}.jsonl"):
            key = json.dumps(row["prompt"], sort_keys=True)
            if key not in seen and tokens(row["prompt"], prompt=True) <= sizes["prompt_max_tokens"]:
                seen.add(key)
                out.append({"id": f"hh-{side}-{len(out)}", "messages": row["prompt"]})
        return out

    train_prompts, held_out = prompts("train"), prompts("eval")
    random.Random(0).shuffle(held_out)
    dev = [{**r, "split": "dev"} for r in held_out[: sizes["dev_prompts"]]]
    test = [{**r, "split": "test"} for r in held_out[sizes["dev_prompts"] : sizes["dev_prompts"] + sizes["test_prompts"]]]
    write_jsonl(inputs / "prompts.jsonl", train_prompts)
    write_jsonl(inputs / "eval_prompts.jsonl", dev + test)
    counts.update(prompts_train=len(train_prompts), prompts_dev=len(dev), prompts_test=len(test))
    return counts


def path_overrides(model_dir: Path, oa: Path, inputs: Path) -> list[str]:
    return [f"tokenizer.from_checkpoint={model_dir}", f"stages.sft.init_from={model_dir}",
            f"data.labels=[{{format: oasst, path: {oa}}}]", f"data.prompts={inputs / 'prompts.jsonl'}",
            f"data.eval_prompts={inputs / 'eval_prompts.jsonl'}",
            f"stages.reward.data={inputs / 'comparisons_train.jsonl'}", f"stages.reward.eval_data={inputs / 'comparisons_eval.jsonl'}"]


# ------------------------------------------------------------------------------------------ report


def answers(stage_dir: Path) -> dict[str, dict]:
    from stages.common import read_jsonl

    return {str(line["id"]): line for line in read_jsonl(stage_dir / "eval_answers.jsonl") if line.get("split") == "test"}


def holdout_win_rate(run: Path, test_rows: list[dict]) -> dict:
    """PPO against SFT on the test prompts, judged by the held-out reward model: per prompt, the share of its replies
    (greedy: one; chat default: two samples, same seeds on both sides) the judge scores higher than SFT's (ties count
    half); the mean over prompts with a bootstrap CI by prompt. Also mean reply lengths (tokens) and their difference."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.eval.stats import mean_ci, paired_difference_ci
    from stages.rlhf.reward import score

    judge_dir = run / "reward" / "holdout"
    model = AutoModelForSequenceClassification.from_pretrained(str(judge_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(judge_dir))
    sft, ppo = answers(run / "sft"), answers(run / "ppo")
    ids = [r["id"] for r in test_rows]
    messages = {r["id"]: r["messages"] for r in test_rows}
    out = {}
    for decoding in ("greedy", "chat"):
        conversations, keys = [], []
        for prompt_id in ids:
            for side, lines in (("sft", sft), ("ppo", ppo)):
                for sample, reply in enumerate(lines[prompt_id]["replies"][decoding]):
                    conversations.append(messages[prompt_id] + [{"role": "assistant", "content": reply["reply"]}])
                    keys.append((prompt_id, side, sample))
        scores = dict(zip(keys, score(model, tokenizer, conversations, batch_size=16)))
        wins, lengths = [], {"sft": [], "ppo": []}
        for prompt_id in ids:
            samples = len(ppo[prompt_id]["replies"][decoding])
            verdicts = []
            for sample in range(samples):
                a, b = scores[(prompt_id, "ppo", sample)], scores[(prompt_id, "sft", sample)]
                verdicts.append(1.0 if a > b else 0.5 if a == b else 0.0)
            wins.append(sum(verdicts) / samples)
            for side, lines in (("sft", sft), ("ppo", ppo)):
                replies = lines[prompt_id]["replies"][decoding]
                lengths[side].append(sum(r["length"] for r in replies) / len(replies))
        rate, low, high = mean_ci(wins, clusters=ids)
        diff = paired_difference_ci(lengths["ppo"], lengths["sft"], clusters=ids)
        out[decoding] = {"win_rate": rate, "win_rate_ci95": [low, high],
                         "reply_length_ppo": list(mean_ci(lengths["ppo"], clusters=ids)),
                         "reply_length_sft": list(mean_ci(lengths["sft"], clusters=ids)),
                         "reply_length_ppo_minus_sft": list(diff), "prompts": len(ids)}
    return out


def pair_accuracy(reward_dir: Path) -> dict:
    """Pairwise accuracy on the test-side pairs the stage scored (reward_dir/eval_pairs.jsonl), CI by prompt."""
    from pipeline.eval.stats import mean_ci
    from stages.common import read_jsonl

    pairs = read_jsonl(reward_dir / "eval_pairs.jsonl")
    wins = [float(p["chosen_score"] > p["rejected_score"]) for p in pairs]
    accuracy, low, high = mean_ci(wins, clusters=[json.dumps(p["prompt"], sort_keys=True) for p in pairs])
    return {"accuracy": accuracy, "ci95": [low, high], "pairs": len(pairs)}


def chatml_check(run: Path, test_rows: list[dict], *, count: int = 8, max_new_tokens: int = 256) -> dict:
    """The PPO checkpoint as a user loads it (plain transformers, its own generation_config): its template, EOS and
    stop tokens, and greedy replies to the first `count` test prompts, decoded with their special tokens: they must
    end at <|im_end|>."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages.chat_format import read_chat_format

    ppo, sft = run / "ppo", run / "sft"
    tokenizer = AutoTokenizer.from_pretrained(str(ppo), padding_side="left")
    base = AutoTokenizer.from_pretrained(str(sft))
    chat_format = read_chat_format(ppo)
    model = AutoModelForCausalLM.from_pretrained(str(ppo)).eval()
    rows = test_rows[:count]
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True) for r in rows]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():  # no eos_token_id passed: the checkpoint's generation_config decides where replies stop
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)[:, batch["input_ids"].shape[1]:]
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    replies = [row.tolist() for row in out]
    ended = [end_of_turn in reply for reply in replies]
    document_eos = tokenizer.convert_tokens_to_ids(chat_format.document_eos) if chat_format and chat_format.document_eos else None
    ends = ["<|im_end|>" if e else "document EOS" if document_eos in reply else f"{max_new_tokens}-token cap"
            for e, reply in zip(ended, replies)]
    first = next((i for i, e in enumerate(ended) if e), 0)
    shown = replies[first][: replies[first].index(end_of_turn) + 1] if ended[first] else replies[first]
    generation = json.loads((ppo / "generation_config.json").read_text())
    return {"chat_template_is_sft_template": tokenizer.chat_template == base.chat_template,
            "chatml": "<|im_start|>" in (tokenizer.chat_template or ""), "eos_token": tokenizer.eos_token,
            "generation_eos_token_id": generation.get("eos_token_id"),
            "chat_format_end_of_turn": chat_format.end_of_turn if chat_format else None,
            "chat_format_document_eos": chat_format.document_eos if chat_format else None,
            "greedy_replies_ending_in_im_end": [sum(ended), len(rows)], "greedy_reply_ends": ends, "max_new_tokens": max_new_tokens,
            "example": {"prompt": rows[first]["messages"][-1]["content"], "reply": tokenizer.decode(shown, skip_special_tokens=False)}}


def side_by_side(run: Path, test_rows: list[dict]) -> list[dict]:
    """The first `SIDE_BY_SIDE` test prompts (in the evaluation's order) that are one short human turn: greedy replies."""
    sft, ppo = answers(run / "sft"), answers(run / "ppo")
    picked = [r for r in test_rows if len(r["messages"]) == 1 and len(r["messages"][0]["content"]) <= 100][:SIDE_BY_SIDE]
    return [{"prompt": r["messages"][0]["content"], "sft": sft[r["id"]]["greedy"], "ppo": ppo[r["id"]]["greedy"]} for r in picked]


def markdown(report: dict) -> str:
    def ci(value, interval, digits=3):
        return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"

    sizes, counts, times = report["sizes"], report["counts"], report["stages"]
    reward, holdout = report["reward_accuracy"], report["holdout_accuracy"]
    lines = [
        f"Generated by `tests/bench/real_rlhf.py` ({report['size_name']}; commit {report['commit']}), "
        f"`recipes/smollm2-135m-hh.yaml` from SmolLM2-135M-Instruct (`make real-model`), seed 0, one run; 95% bootstrap "
        f"CIs by prompt. Data: {counts['sft_rows']} OpenAssistant demonstrations for SFT; HH harmless-base pairs split by "
        f"prompt ({HH_EVAL_FRACTION:.0%} of prompts on the test side), of which {counts['pairs_train']} train-side pairs "
        f"(half the prompts for the reward model, half for the held-out one) and {counts['pairs_eval']} test-side pairs"
        + (f" (pairs ≤ {sizes['pairs_max_tokens']} tokens)" if sizes["pairs_max_tokens"] else "")
        + f"; PPO on {counts['prompts_train']} train-side prompts (≤ {sizes['prompt_max_tokens']} tokens), evaluated on "
        f"{counts['prompts_test']} test-side prompts ({counts['prompts_dev']} more for PPO's monitor).", "",
        "| figure | value [95% CI] |", "|---|---|",
        f"| reward model, pairwise accuracy on {reward['pairs']} held-out HH pairs | {ci(reward['accuracy'], reward['ci95'])} |",
        f"| held-out reward model (the judge below), same pairs | {ci(holdout['accuracy'], holdout['ci95'])} |",
    ]
    for decoding, label in (("greedy", "greedy"), ("chat", "chat default, T=0.7, 2 samples")):
        w = report["win_rate"][decoding]
        lines.append(f"| PPO vs SFT win rate, judged by the held-out reward model ({label}) | {ci(w['win_rate'], w['win_rate_ci95'])} |")
    kl = report["kl_to_sft"]
    lines.append(f"| KL(PPO ‖ SFT) on the test prompts (nats per reply, T=1) | {ci(kl['value'], kl['ci95'])} |")
    for decoding in ("greedy", "chat"):
        w = report["win_rate"][decoding]
        lines.append(f"| mean reply length, tokens ({decoding}): SFT / PPO / PPO − SFT | {w['reply_length_sft'][0]:.1f} / "
                     f"{w['reply_length_ppo'][0]:.1f} / {ci(w['reply_length_ppo_minus_sft'][0], w['reply_length_ppo_minus_sft'][1:], 1)} |")
    check = report["chatml"]
    lines += ["", f"PPO checkpoint: ChatML template {'kept (same as SFT)' if check['chat_template_is_sft_template'] else 'CHANGED'}, "
              f"EOS `{check['eos_token']}`, generation stops on {check['generation_eos_token_id']} "
              f"(`{check['chat_format_end_of_turn']}`, `{check['chat_format_document_eos']}`); greedy replies to "
              f"{check['greedy_replies_ending_in_im_end'][1]} test prompts (at most {check['max_new_tokens']} new tokens, the "
              f"checkpoint's own generation config) that end at `<|im_end|>`: {check['greedy_replies_ending_in_im_end'][0]}. "
              f"The first of them, as generated (\"{check['example']['prompt']}\"): "
              f"`{json.dumps(check['example']['reply'], ensure_ascii=False)[1:-1]}`", ""]
    lines += ["Published pairwise accuracies of reward models trained on far more HH data (other pairs, models and sizes):", ""]
    lines += [f"- {text} ([source]({url}))" for text, url in PUBLISHED] + [""]
    total = report["wall_s"]
    per_stage = ", ".join(f"{k} {v['wall_s'] / 60:.1f}" for k, v in times.items())
    lines += [f"Time: {total / 60:.1f} min in all ({per_stage} min; "
              f"stages include their evaluation), {report['cpu_s'] / 60:.1f} CPU-minutes (with both cores to itself: about "
              f"{report['cpu_s'] / 120:.0f} min, if it kept both busy); load average "
              f"{report['load_before']} before, {report['load_after']} after. Peak RSS per stage: "
              + ", ".join(f"{k} {v['peak_rss_mb'] / 1024:.1f} GB" for k, v in times.items()) + ".", "",
              "Answers side by side (greedy; the first test prompts of one short human turn):", ""]
    for row in report["side_by_side"]:
        lines += [f"- **Prompt:** {row['prompt']}", f"  - SFT: {row['sft'].strip()[:300]}", f"  - PPO: {row['ppo'].strip()[:300]}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hh", type=Path, default=real_data.default_path(real_data.HH), help="harmless-base/test.jsonl.gz")
    parser.add_argument("--oa", type=Path, default=real_data.default_path(real_data.OA), help="en_100_tree.jsonl")
    parser.add_argument("--model", type=Path, default=None, help="the checkpoint of `make real-model`")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "real-rlhf")
    parser.add_argument("--full-size", action="store_true", help="the recipe's own sizes (a GPU run), no CPU overrides")
    parser.add_argument("--json", type=Path, help="also write the figures and the markdown block here")
    parser.add_argument("--record", action="store_true",
                        help=f"make this run the README's: write {RESULTS.relative_to(REPO)} and README.md's {README_BLOCK} block")
    parser.add_argument("--readme-from-json", action="store_true",
                        help=f"measure nothing: put the markdown block of {RESULTS.relative_to(REPO)} into README.md")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, measures nothing")
    parser.add_argument("overrides", nargs="*", help="more key=value overrides for every stage")
    args = parser.parse_args()
    if args.readme_from_json:
        readme_from_results(README_BLOCK, RESULTS, "real_rlhf")
        return

    model_dir = args.model or default_model_dir()
    problems = [] if (model_dir / "model.safetensors").exists() else [
        f"{model_dir}: no checkpoint; build it with: make real-model"]
    problems += real_data.missing({real_data.HH: args.hh, real_data.OA: args.oa})
    if problems:
        sys.exit("real_rlhf: " + "\n  ".join(["missing inputs:", *problems]))
    sizes = FULL_SIZES if args.full_size else SMOKE_SIZES if args.smoke else CPU_SIZES
    inputs, run = args.out / "inputs", args.out / "run"
    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    started = time.perf_counter()
    counts = prepare_inputs(args.hh, model_dir, inputs, sizes)
    overrides = [*path_overrides(model_dir, args.oa, inputs), *([] if args.full_size else CPU_OVERRIDES),
                 *(SMOKE_OVERRIDES if args.smoke else []), *args.overrides]
    print(f"real_rlhf: inputs {counts}; running {RECIPE.name} into {run}", flush=True)
    stages = {}
    for name in ("sft", "reward", "ppo"):
        stages[name] = chatsmith("stage", name, str(RECIPE), "--out", str(run), *overrides, log=args.out / f"{name}.log")
        print(f"  {name}: {stages[name]}", flush=True)
    stages["arena + report"] = chatsmith("run", str(RECIPE), "--out", str(run), *overrides, log=args.out / "run.log")
    from stages.common import read_jsonl

    held_out = read_jsonl(inputs / "eval_prompts.jsonl")
    test_rows = [r for r in held_out if r["split"] == "test"]
    ppo_eval = json.loads((run / "ppo" / "eval.json").read_text())
    counts["sft_rows"] = sum(1 for _ in open(run / "labels" / "build" / "sft_train.jsonl"))
    report = {
        "full_size": args.full_size, "size_name": "full size" if args.full_size else "smoke sizes" if args.smoke else "CPU sizes",
        "sizes": sizes, "overrides": overrides, "counts": counts,
        "reward_accuracy": pair_accuracy(run / "reward"), "holdout_accuracy": pair_accuracy(run / "reward" / "holdout"),
        "win_rate": holdout_win_rate(run, test_rows),
        "kl_to_sft": {"value": ppo_eval["kl_to_sft"], "ci95": ppo_eval["kl_to_sft_ci95"]},
        "chatml": chatml_check(run, test_rows), "side_by_side": side_by_side(run, test_rows), "stages": stages,
    }
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF)]
    report.update(wall_s=round(time.perf_counter() - started, 1), cpu_s=round(sum(u.ru_utime + u.ru_stime for u in usage), 1),
                  smoke=args.smoke,
                  load_before=load_before, load_after=" / ".join(f"{x:.1f}" for x in os.getloadavg()),
                  commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip())
    report["markdown"] = markdown(report)
    print("\n" + report["markdown"])
    save_figures(report, README_BLOCK, RESULTS, json_path=args.json, record=args.record)


if __name__ == "__main__":
    main()
