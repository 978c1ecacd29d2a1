"""`chatsmith run --seeds`: the table over seeds (means, spread, t-based CI, per-seed CIs that exclude 0)."""

import json

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
    assert row["ci95"][0] < row["mean"] < row["ci95"][1] and row["std"] > 0
    assert row["ci_excludes_zero"] == 2  # seed 2's interval contains 0
    assert "ci_excludes_zero" not in table["sft"]["gold_score_greedy"]
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and "gold_minus_sft_greedy" in saved["stages"]["ppo"]
    assert "| ppo | gold_minus_sft_greedy | 0.110 ± " in (tmp_path / "seeds.md").read_text()


def test_bad_seeds_are_one_line(tmp_path):
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    result = chatsmith("run", DEMO, "--seeds", "0,0", "--out", tmp_path / "x", check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "distinct" in result.stderr
    assert not (tmp_path / "x").exists()
