"""The CLI: fast help, one-line errors that name the key, nothing run on a bad recipe."""

import subprocess
import sys
import time

from tiny import DEMO, REPO, chatsmith, env


def test_help_is_fast_and_imports_no_torch():
    started = time.perf_counter()
    result = chatsmith("--help")
    assert "run" in result.stdout and "stage" in result.stdout and "labels" in result.stdout
    assert time.perf_counter() - started < 5
    code = "import sys, pipeline.cli, pipeline.recipe; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_bad_override_is_one_line_naming_the_key(tmp_path):
    result = chatsmith("run", DEMO, "--out", tmp_path / "x", "stages.ppo.kl_coef=lots", check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "stages.ppo.kl_coef" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()  # nothing ran


def test_inconsistent_ppo_batch_is_refused_before_any_stage(tmp_path):
    """A PPO misconfiguration is found when the recipe loads, not hours later when PPO starts."""
    started = time.perf_counter()
    result = chatsmith("run", DEMO, "--out", tmp_path / "x", "stages.ppo.rollout_batch_size=6", "stages.ppo.num_minibatches=4",
                       check=False)
    assert time.perf_counter() - started < 5
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
