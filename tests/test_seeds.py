"""`chatsmith run --seeds`: the table over seeds (means, spread, a t-based CI between seeds)."""

import json

import pytest

from pipeline.seeds import parse_seeds, seed_dir, summarise
from tiny import DEMO, chatsmith


def _write(out, seed, stage, figures):
    path = seed_dir(out, seed) / stage / "eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures))


def test_summary_over_seeds(tmp_path):
    per_seed = {0: (0.10, [0.05, 0.15]), 1: (0.20, [0.12, 0.28]), 2: (0.03, [-0.01, 0.07])}
    for seed, (diff, ci) in per_seed.items():
        _write(tmp_path, seed, "ppo", {"gold_minus_sft_greedy": diff, "gold_minus_sft_greedy_ci95": ci, "steps": 40})
        _write(tmp_path, seed, "sft", {"gold_score_greedy": 0.5 + seed / 10})
    table = summarise(tmp_path, [0, 1, 2])
    row = table["ppo"]["gold_minus_sft_greedy"]
    assert row["per_seed"] == {0: 0.10, 1: 0.20, 2: 0.03} and abs(row["mean"] - 0.11) < 1e-9 and row["n"] == 3
    # t(0.975, 2 dof) = 4.303; sample std of (0.10, 0.20, 0.03) = 0.0854: half-width 4.303 x 0.0854 / sqrt(3) = 0.2122
    assert row["ci95"] == [pytest.approx(0.11 - 0.2122, abs=1e-3), pytest.approx(0.11 + 0.2122, abs=1e-3)]
    assert (row["min"], row["max"]) == (0.03, 0.20)
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and "gold_minus_sft_greedy" in saved["stages"]["ppo"]
    assert "| ppo | gold_minus_sft_greedy | 0.110 ± " in (tmp_path / "seeds.md").read_text()


def test_bad_seeds_are_one_line(tmp_path):
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    result = chatsmith("run", DEMO, "--seeds", "0,0", "--out", tmp_path / "x", check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "distinct" in result.stderr
    assert not (tmp_path / "x").exists()
