"""The CLI: help without the heavy stack, one-line errors that name the key, nothing run on a bad recipe.
(How fast `--help` answers against a bare interpreter is a benchmark: tests/bench/bench_cli.py.)"""

import json
import subprocess
import sys

from tiny import DEMO, REPO, chatsmith, env

HEAVY = ("torch", "transformers", "datasets", "accelerate", "deepspeed", "trl")

PROBE = """
import json, sys
from pipeline.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "imported": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def probe(*args) -> dict:
    """Run `chatsmith ARGS` in a fresh interpreter; its exit code and which heavy packages it imported."""
    out = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], cwd=REPO, env=env(), capture_output=True, text=True,
                         timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_imports_none_of_the_heavy_stack():
    """What made `--help` slow is importing torch and its kin (seconds each on a cold disk): it imports none."""
    result = chatsmith("--help")
    assert "run" in result.stdout and "stage" in result.stdout and "labels" in result.stdout
    assert probe("--help") == {"code": 0, "imported": []}
    code = "import sys, pipeline.cli, pipeline.recipe; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_bad_override_is_one_line_naming_the_key(tmp_path):
    result = chatsmith("run", DEMO, "--out", tmp_path / "x", "stages.ppo.kl_coef=lots", check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "stages.ppo.kl_coef" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()  # nothing ran


def test_inconsistent_ppo_batch_is_refused_before_any_stage(tmp_path):
    """A PPO misconfiguration is found when the recipe loads, not hours later when PPO starts: refused before torch
    is even imported, with nothing printed on stdout (where stages announce themselves) and nothing written."""
    bad = ["stages.ppo.rollout_batch_size=6", "stages.ppo.num_minibatches=4"]
    assert probe("run", DEMO, "--out", tmp_path / "x", *bad) == {"code": 2, "imported": []}
    result = chatsmith("run", DEMO, "--out", tmp_path / "x", *bad, check=False)
    assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1
    assert "stages.ppo.rollout_batch_size" in result.stderr and "stages.ppo.num_minibatches" in result.stderr
    assert not (tmp_path / "x").exists()


def test_old_and_foreign_rl_keys_name_what_to_write(tmp_path):
    renamed = chatsmith("run", DEMO, "--out", tmp_path / "x", "stages.ppo.dpo_beta=0.2", check=False)
    assert renamed.returncode == 2 and "stages.ppo.dpo_beta: renamed; use stages.ppo.beta" in renamed.stderr
    foreign = chatsmith("run", DEMO, "--out", tmp_path / "x", "stages.ppo.num_generations=4", check=False)
    assert foreign.returncode == 2 and "stages.ppo.num_generations" in foreign.stderr and "grpo" in foreign.stderr
    assert foreign.stderr.count("\n") == 1 and not (tmp_path / "x").exists()


def test_unknown_recipe_key_suggests_the_right_one(tmp_path):
    result = chatsmith("stage", "sft", DEMO, "--out", tmp_path / "x", "stages.sft.max_step=3", check=False)
    assert result.returncode == 2 and "did you mean stages.sft.max_steps" in result.stderr


def test_labels_wrong_format_is_one_line(tmp_path):
    bad = tmp_path / "export.json"
    bad.write_text("[]")
    result = chatsmith("labels", "ingest", "--format", "csv", bad, "--out", tmp_path / "out", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0


def test_chat_on_missing_checkpoint_is_one_line(tmp_path):
    result = chatsmith("chat", tmp_path / "nope", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_reward_retrain_named_by_the_readme_refuses_bad_input_in_one_line(tmp_path):
    """`tests/bench/reward_retrain.py`, which the README offers for trying reward settings: a directory that is not a
    finished run, and an --out that is not empty, are one-line errors, before anything is trained."""
    script = REPO / "tests" / "bench" / "reward_retrain.py"
    assert "tests/bench/reward_retrain.py RUN --out DIR key=value" in (REPO / "README.md").read_text()

    def retrain(*args):
        return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=REPO, env=env(), capture_output=True,
                              text=True, timeout=120)

    bare = retrain(tmp_path, "--out", tmp_path / "rm")
    assert bare.returncode == 1 and bare.stdout == ""
    assert bare.stderr == (f"reward_retrain: {tmp_path} is not a finished demo run (missing {tmp_path / 'recipe.yaml'}, "
                           f"{tmp_path / 'sft'}, {tmp_path / 'labels/build/comparisons_train.jsonl'}, "
                           f"{tmp_path / 'labels/build/comparisons_eval.jsonl'})\n")
    run = tmp_path / "run"
    for path in ("recipe.yaml", "labels/build/comparisons_train.jsonl", "labels/build/comparisons_eval.jsonl"):
        (run / path).parent.mkdir(parents=True, exist_ok=True)
        (run / path).write_text("")
    (run / "sft").mkdir()
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "model.safetensors").write_text("")
    taken = retrain(run, "--out", tmp_path / "rm", "max_steps=10")
    assert taken.returncode == 1 and taken.stderr == f"reward_retrain: --out {tmp_path / 'rm'} is not empty; give a new directory\n"
