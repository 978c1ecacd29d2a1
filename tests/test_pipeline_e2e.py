"""The whole chain on a tiny demo world through the real CLI: every stage's files, lineage, re-run
skips, checkpoints load in plain transformers and generate through the chat template."""

import json
import math

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
                "gold_score_chat", "gold_score_t1", "gold_score_greedy_ci95", "fact_accuracy_pair_unseen"],
        "reward": ["pairwise_accuracy", "pairwise_accuracy_ci95", "pairwise_accuracy_gold", "label_gold_agreement",
                   "pairwise_accuracy_gold_ci95", "gold_decided_pairs"],
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
        for key in keys:  # each a number; an interval a [low, high] pair; a rate or an accuracy a share
            value = metrics.get(key)
            if key.endswith("_ci95"):
                assert isinstance(value, list) and len(value) == 2 and value[0] <= value[1], (name, key, value)
            else:
                assert isinstance(value, (int, float)) and math.isfinite(value), (name, key, value)
            if any(word in key for word in ("accuracy", "_rate_", "agreement")):
                assert all(0 <= v <= 1 for v in (value if isinstance(value, list) else [value])), (name, key, value)
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
    assert "![over-optimisation](plots/over_optimisation.png)" in report
    assert (run_dir / "plots" / "over_optimisation.png").stat().st_size > 1000


def test_run_ends_with_an_arena_of_its_checkpoints(run_dir):
    ratings = json.loads((run_dir / "arena" / "ratings.json").read_text())
    assert set(ratings) == {"pretrain", "sft", "ppo"}  # keyed by stage name
    for r in ratings.values():
        assert r["ci95"][0] <= r["rating"] <= r["ci95"][1]
    assert ratings["pretrain"]["rating"] == min(r["rating"] for r in ratings.values())  # it never learned to answer
    summary = json.loads((run_dir / "arena" / "summary.json").read_text())
    sft = json.loads((run_dir / "sft" / "eval.json").read_text())
    # every pair, both orders, 2 samples, on every test prompt
    assert summary["judge"] == "gold" and summary["battles"] == 3 * 2 * 2 * sft["eval_prompts_test"]
    report = (run_dir / "report.md").read_text()
    assert "## Arena" in report and "| pretrain |" in report and "![arena](arena/ratings.png)" in report
    assert (run_dir / "arena" / "ratings.png").stat().st_size > 1000


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


NO_OP_PROBE = """
import json, sys
import stages.checkpoint as checkpoint
hashed = []
original = checkpoint.sha256_file
def counted(path, **kwargs):
    hashed.append(str(path))
    return original(path, **kwargs)
checkpoint.sha256_file = counted
from pipeline.cli import main
code = main(sys.argv[2:])
models = sorted(m for m in sys.modules if m.startswith("transformers.models.") and ".modeling_" in m)
with open(sys.argv[1], "w") as handle:
    json.dump({"code": code, "hashed": hashed, "models": models}, handle)
"""


def test_rerun_of_a_finished_run_does_nothing(run_dir, tmp_path):
    """A no-op re-run: every stage and the arena skipped, no checkpoint re-hashed (the inputs are stat'ed against the
    manifest's stamps), no model class even imported, and the manifest and checkpoints untouched."""
    import subprocess
    import sys

    from tiny import REPO, env

    checkpoints = {p: p.stat().st_mtime_ns for p in run_dir.glob("*/model.safetensors")}
    manifest_before = (run_dir / "manifest.json").read_bytes()
    ratings_before = (run_dir / "arena" / "ratings.json").stat().st_mtime_ns
    report = tmp_path / "probe.json"
    result = subprocess.run([sys.executable, "-c", NO_OP_PROBE, str(report), "run", str(DEMO), "--out", str(run_dir), *TINY],
                            cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done, skipped") == 4 and "running" not in result.stdout, result.stdout
    probe = json.loads(report.read_text())
    assert probe["code"] == 0
    assert not [p for p in probe["hashed"] if p.endswith(".safetensors")], probe["hashed"]
    assert probe["models"] == []
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("*/model.safetensors")} == checkpoints
    assert (run_dir / "manifest.json").read_bytes() == manifest_before
    assert (run_dir / "arena" / "ratings.json").stat().st_mtime_ns == ratings_before


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


def test_rewrite_loop_retrains_sft_and_every_later_stage(run_dir, tmp_path):
    """evaluate -> the worst dev answers -> people rewrite them -> ingest -> re-run: the rewrites join the
    world's SFT data (combined, not replacing it), SFT and every later stage re-run, and the manifest says why."""
    import shutil

    from pipeline.demo.labelers import simulated_rewrites
    from pipeline.demo.world import World
    from pipeline.recipe import load_recipe

    copy = tmp_path / "loop"
    shutil.copytree(run_dir, copy)
    tasks = tmp_path / "tasks"
    result = chatsmith("labels", "tasks", "--from-eval", copy, "--worst", "6", "--out", tasks)  # the latest model: ppo
    assert "6 rewrite tasks from the 6 worst" in result.stdout
    summary = json.loads((tasks / "tasks_summary.json").read_text())
    assert summary["eval_answers"] == str(copy / "ppo" / "eval_answers.jsonl")
    answers = [json.loads(l) for l in (copy / "ppo" / "eval_answers.jsonl").read_text().splitlines()]
    assert summary["skipped"]["test_split"] == sum(a["split"] == "test" for a in answers) > 0  # never the test split
    dev_prompts = {a["prompt"][-1]["content"] if isinstance(a["prompt"], list) else a["prompt"]
                   for a in answers if a["split"] == "dev"}
    task_rows = [json.loads(l) for l in (tasks / "tasks.jsonl").read_text().splitlines()]
    assert {t["prompt"][-1]["content"] for t in task_rows} <= dev_prompts

    world = World.build(load_recipe(copy / "recipe.yaml").data.world)
    rewrites = simulated_rewrites(world, tasks / "tasks.jsonl", tmp_path / "rewrites.json")
    assert rewrites["rewritten"] == 6 - rewrites["filtered"]

    labels = f"data.labels=[{{format: label-studio, path: {tmp_path / 'rewrites.json'}, tasks: {tasks / 'tasks.jsonl'}}}]"
    result = chatsmith("run", DEMO, "--out", copy, *TINY, labels, "stages.ppo.max_steps=1")
    assert "pretrain: done, skipped" in result.stdout
    manifest = json.loads((copy / "manifest.json").read_text())["stages"]
    assert manifest["sft"]["reason"].startswith("inputs changed: ") and "train_data" in manifest["sft"]["reason"]
    assert manifest["sft"]["inputs"]["train_data"]["path"] == str(copy / "labels" / "sft-build" / "sft_train.jsonl")
    assert manifest["reward"]["reason"].startswith("inputs changed") and "init_from" in manifest["reward"]["reason"]
    assert all(manifest[n]["status"] == "done" for n in ("sft", "reward", "ppo"))

    built = json.loads((copy / "labels" / "sft-build" / "build.json").read_text())
    world_rows = sum(1 for _ in (copy / "data" / "sft_train.jsonl").open())
    kinds = {source: info["kinds"] for source, info in built["by_source"].items()}
    assert kinds[str(copy / "data" / "sft_train.jsonl")]["conversation"]["sft_rows"] == world_rows  # all kept
    (ingested,) = [k for s, k in kinds.items() if "user-ingest" in s]
    done = rewrites["rewritten"]
    assert ingested == {"rewrite": {"records": done, "sft_rows": done, "comparison_rows": done}}
    sft_rows = [json.loads(l) for f in ("sft_train", "sft_eval") for l in (copy / "labels" / "sft-build" / f"{f}.jsonl").open()]
    replies = {r["messages"][-1]["content"] for r in sft_rows}
    assert all(world.question_fact(t["prompt"][-1]["content"]) for t in task_rows)
    rewritten = [json.loads(l) for l in (copy / "labels" / "user-ingest").glob("*/accepted.jsonl").__next__().open()]
    assert {r["reply"] for r in rewritten} <= replies
    # ... and the rewrite > original pairs reach the reward data, beside the simulated labelers' comparisons
    pairs = [json.loads(l) for f in ("comparisons_train", "comparisons_eval") for l in (copy / "labels" / "build" / f"{f}.jsonl").open()]
    assert sum(p["chosen"][0]["content"] in {r["reply"] for r in rewritten} for p in pairs) >= done

    again = chatsmith("run", DEMO, "--out", copy, *TINY, labels, "stages.ppo.max_steps=1")  # nothing new: nothing runs
    assert again.stdout.count("done, skipped") == 4, again.stdout

    assert not leaks(copy, world)  # the loop carried no pretrain-only town into any file the run wrote


LEAK_EXCEPTIONS = ("eval_prompts", "eval_answers", "report.md", "tokenizer.json", "vocab.json", "merges.txt")
"""What may name a pretrain-only town: the held-out prompts and the answers to them, the report and the arena (which
quote test prompts), the pretraining corpus, and a trained tokenizer's vocabulary (learnt from pretraining text)."""


def leaks(run_dir, world) -> dict:
    """{file: how many times it names a pretrain-only town} for every file the run wrote but the exceptions."""
    import re

    pattern = re.compile(rb"\b(" + b"|".join(re.escape(n.encode()) for n in world.pretrain_only_names()) + rb")\b")
    found = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(run_dir)
        if relative.parts[0] == "arena" or relative.as_posix() == "data/pretrain.jsonl" or path.name.startswith(LEAK_EXCEPTIONS):
            continue
        hits = len(pattern.findall(path.read_bytes()))
        if hits:
            found[str(relative)] = hits
    return found


def test_no_file_the_run_wrote_names_a_pretrain_only_town(run_dir):
    """Every file of the run directory is scanned (labels, data, every stage's checkpoint, metrics and logs), but the
    exceptions that hold pretrain-only towns by design; those do name them, so the scan can see a name."""
    from pipeline.demo.world import World
    from pipeline.recipe import load_recipe

    world = World.build(load_recipe(run_dir / "recipe.yaml").data.world)
    assert not leaks(run_dir, world)
    scanned = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {"sft_train.jsonl", "comparisons_train.jsonl", "label_studio_export.json", "model.safetensors",
            "metrics.jsonl", "eval_pairs.jsonl", "tasks.jsonl"} <= {p.name for p in scanned}
    for expected in (run_dir / "data" / "pretrain.jsonl", run_dir / "data" / "eval_prompts.jsonl", run_dir / "sft" / "eval_answers.jsonl"):
        assert world.mentions_pretrain_only(expected.read_text()), expected


def test_same_recipe_and_seed_give_identical_figures(run_dir, tmp_path):
    """Reproducibility: the same recipe, seed and machine give byte-identical eval.json files (and arena)."""
    again = tmp_path / "again"
    chatsmith("run", DEMO, "--out", again, *TINY)
    for name in ("pretrain", "sft", "reward", "ppo"):
        assert (again / name / "eval.json").read_text() == (run_dir / name / "eval.json").read_text(), name
    assert (again / "arena" / "ratings.json").read_text() == (run_dir / "arena" / "ratings.json").read_text()
