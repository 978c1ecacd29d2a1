"""pipeline.eval.stats: cluster bootstrap of a mean, paired differences, summaries across seeds."""

import numpy as np
import pytest

from pipeline.eval.stats import across_seeds, mean_ci, paired_difference_ci, t_quantile


def test_mean_ci_contains_the_mean_and_is_deterministic_for_a_seed():
    values = np.random.default_rng(0).normal(0.5, 1.0, size=300)
    mean, lo, hi = mean_ci(values, rounds=500, seed=3)
    assert mean == pytest.approx(values.mean())
    assert lo < mean < hi
    # about 2 * 1.96 * sd / sqrt(n) wide
    assert (hi - lo) == pytest.approx(2 * 1.96 * values.std() / np.sqrt(values.size), rel=0.15)
    assert mean_ci(values, rounds=500, seed=3) == (mean, lo, hi)
    assert mean_ci(values, rounds=500, seed=4) != (mean, lo, hi)


def test_cluster_bootstrap_is_wider_when_a_cluster_repeats_one_value():
    # 30 facts, each asked in 8 phrasings that all get the same score: 30 observations, not 240
    rng = np.random.default_rng(1)
    per_fact = rng.normal(size=30)
    values = np.repeat(per_fact, 8)
    facts = [("town", i) for i in range(30) for _ in range(8)]
    _, item_lo, item_hi = mean_ci(values, rounds=2000, seed=0)
    mean, lo, hi = mean_ci(values, clusters=facts, rounds=2000, seed=0)
    assert lo < mean < hi
    assert (hi - lo) / (item_hi - item_lo) == pytest.approx(np.sqrt(8), rel=0.2)
    # and it equals the ordinary bootstrap of the 30 facts' values
    _, fact_lo, fact_hi = mean_ci(per_fact, rounds=2000, seed=0)
    assert (hi - lo) == pytest.approx(fact_hi - fact_lo, rel=0.1)


def test_clusters_must_match_the_values():
    with pytest.raises(ValueError, match="clusters"):
        mean_ci([1.0, 2.0, 3.0], clusters=["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        mean_ci([])


def test_paired_difference_excludes_zero_for_a_clear_effect_and_includes_it_for_none():
    rng = np.random.default_rng(2)
    difficulty = rng.normal(0.0, 1.0, size=200)  # shared by both checkpoints: cancels in the pairing
    facts = [i // 2 for i in range(200)]
    sft = difficulty + rng.normal(0.0, 0.1, size=200)
    ppo = difficulty + 0.1 + rng.normal(0.0, 0.1, size=200)
    diff, lo, hi = paired_difference_ci(ppo, sft, clusters=facts, seed=0)
    assert diff == pytest.approx(ppo.mean() - sft.mean())
    assert 0.0 < lo < diff < hi
    # the same effect is lost in the prompts' spread when the two are not paired
    _, ppo_lo, _ = mean_ci(ppo, seed=0)
    _, _, sft_hi = mean_ci(sft, seed=0)
    assert ppo_lo < sft_hi
    same = difficulty + rng.normal(0.0, 0.1, size=200)
    diff, lo, hi = paired_difference_ci(same, sft, clusters=facts, seed=0)
    assert lo < 0.0 < hi


def test_paired_difference_needs_the_same_items():
    with pytest.raises(ValueError, match="same items"):
        paired_difference_ci([1.0, 2.0], [1.0])


def test_t_quantiles_match_the_tables():
    for dof, expected in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045), (1000, 1.962)]:
        assert t_quantile(0.975, dof) == pytest.approx(expected, abs=1e-3)


def test_across_seeds_summary_and_t_interval():
    summary = across_seeds({0: 0.60, 1: 0.64, 2: 0.62})
    assert summary["n"] == 3 and summary["min"] == 0.60 and summary["max"] == 0.64
    assert summary["mean"] == pytest.approx(0.62)
    assert summary["std"] == pytest.approx(0.02)
    half = 4.303 * 0.02 / np.sqrt(3)
    assert summary["ci95"] == pytest.approx([0.62 - half, 0.62 + half], abs=1e-4)
    single = across_seeds([0.7])
    assert single["std"] == 0.0 and single["ci95"] is None
