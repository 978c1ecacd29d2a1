"""The README's demo figures are the rendering of the committed figures file, which `tests/bench/readme_figures.py`
generates from runs: no figure in that block is typed by hand, and the file says which commit and judge made it."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "bench"))

from readme_figures import FIGURES, README, readme_block, render  # noqa: E402


def test_readme_block_is_the_rendering_of_the_figures_file():
    figures = json.loads(FIGURES.read_text())
    assert readme_block(README.read_text()) == render(figures)


def test_figures_file_says_where_it_came_from():
    figures = json.loads(FIGURES.read_text())
    seeds = [entry["seed"] for entry in figures["seeds"]]
    assert figures["command"] == f"chatsmith run recipes/tiny-cpu.yaml --seeds {','.join(map(str, seeds))}" and len(seeds) >= 5
    for row in figures["headline"] + figures["decomposition"]:
        assert set(row["per_seed"]) == {str(s) for s in seeds}


def test_figures_come_from_an_ancestor_of_head_and_the_current_judge():
    from pipeline.demo.judge import VERSION

    figures = json.loads(FIGURES.read_text())
    assert figures["judge_version"] == VERSION
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", figures["commit"], "HEAD"], cwd=REPO)
    assert ancestor.returncode == 0, f"{figures['commit']} is not an ancestor of HEAD"


def _per_seed(figures: dict, stage: str, key: str) -> dict[str, float]:
    for row in figures["headline"] + figures["decomposition"]:
        if (row["stage"], row["key"]) == (stage, key):
            return {seed: v["value"] for seed, v in row["per_seed"].items()}
    raise KeyError((stage, key))


def _between_seeds(figures: dict, stage: str, key: str) -> dict:
    return next(r for r in figures["headline"] + figures["decomposition"] if (r["stage"], r["key"]) == (stage, key))


def test_the_readme_prose_about_the_figures_holds_for_the_figures_file():
    """Each claim of the README's "What the figures say" paragraph, checked against the figures file: regenerating
    the figures without rereading that paragraph fails here."""
    figures = json.loads(FIGURES.read_text())
    prose = README.read_text().split("**What the figures say, and what they do not.**", 1)[1].split("\n\n", 1)[0]
    baselines = {name: row["per_seed"] for name, row in figures["baselines"].items()}
    abstain = next(name for name in baselines if name.startswith("always abstaining"))
    sft, ppo = _per_seed(figures, "sft", "gold_score_greedy"), _per_seed(figures, "ppo", "gold_score_greedy")

    assert "PPO beats SFT under gold v2 at every decoding" in prose
    assert all(_between_seeds(figures, "ppo", f"gold_minus_sft_{d}")["ci95"][0] > 0 for d in ("greedy", "chat", "t1"))
    assert "beats all\nthree of the judge's baselines in every seed" in prose and len(baselines) == 3
    assert all(ppo[seed] > max(b[seed] for b in baselines.values()) for seed in ppo)
    assert "SFT beats the random confident guess and gibberish in every seed" in prose
    assert all(sft[seed] > baselines[name][seed] for seed in sft for name in baselines if name != abstain)
    below = sorted(seed for seed in sft if sft[seed] <= baselines[abstain][seed])
    assert f"in seeds {' and '.join(below)}, answering \"I don't know.\" to every question scores above SFT" in prose
    assert "(hedge rate on correct answers falls to about 0)" in prose
    assert _between_seeds(figures, "ppo", "hedge_rate_correct_greedy")["mean"] < 0.05
    assert "fact accuracy rises too on average, but its between-seed CI includes 0" in prose
    fact = _between_seeds(figures, "ppo", "fact_accuracy_minus_sft_greedy")
    assert fact["mean"] > 0 and fact["ci95"][0] < 0 < fact["ci95"][1]
    assert "*above*\nSFT's in every seed (greedy and chat default)" in prose
    assert all(v > 0 for d in ("greedy", "chat") for v in _per_seed(figures, "ppo", f"confident_wrong_minus_sft_{d}").values())
    assert "neither\nmodel ever says \"I don't know\" (abstention rate 0)" in prose
    assert all(v == 0 for stage in ("sft", "ppo") for d in ("greedy", "chat", "t1")
               for v in _per_seed(figures, stage, f"abstain_rate_{d}").values())
    assert "below issue 16's 0.70\nbar in every seed" in prose
    assert all(v < 0.70 for v in _per_seed(figures, "reward", "pairwise_accuracy").values())


def test_poisoning_block_is_the_rendering_of_its_figures_file():
    """labeling/README.md's poisoning table is `tests/bench/poisoning.py`'s markdown of its committed figures file."""
    import poisoning
    from real_model import readme_block as block_of

    results = json.loads(poisoning.RESULTS.read_text())
    assert [r["seed"] for r in results] == [0, 1, 2]
    assert block_of(poisoning.README_BLOCK, readme=poisoning.README) == poisoning.markdown(results)
