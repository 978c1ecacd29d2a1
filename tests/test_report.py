"""report.md's over-optimisation curve: each monitor evaluation placed at the KL its update's rollouts had."""

from pipeline.report import over_optimisation_points


def test_monitor_scores_are_placed_at_the_kl_of_their_update():
    rows = [{"step": 0, "eval_reward_score": 0.1, "eval_gold_score": 0.5},
            {"step": 1, "kl": 0.0, "reward_raw": 0.2},
            {"step": 2, "kl": 0.4, "eval_reward_score": 0.6, "eval_gold_score": 0.7, "eval_holdout_reward_score": 0.3},
            {"step": 3, "kl": 1.5},
            {"step": 4, "kl": 3.0, "eval_reward_score": 0.9, "eval_gold_score": 0.4}]
    points = over_optimisation_points(rows)
    assert [(p["step"], p["kl"], p["reward"], p["gold"], p["holdout"]) for p in points] == [
        (0, 0.0, 0.1, 0.5, None), (2, 0.4, 0.6, 0.7, 0.3), (4, 3.0, 0.9, 0.4, None)]
