"""One evaluation layer for every run, demo or real, and every consumer of it.

    judges.py    the `Judge` protocol — (rows, replies) -> [{score, criteria, flags}] — and the reward-model judge;
                 `PairwiseJudge` for the arena (the demo's gold judge is `pipeline.demo.judge`)
    answers.py   the one generation path for evaluation answers (decodings greedy / chat / t1), judging them, their
                 means, the one KL-to-reference function
    stats.py     the one rule for dev / test splits, bootstrap clusters, confidence intervals (items, clusters, seeds)
    run.py       the run's evaluation of its chat checkpoints and its reward model, and the run's closing arena
    monitor.py   the RL stage's held-out monitor (PPO, GRPO, RLOO, DPO) and `select_best`'s figures
    arena/       Bradley–Terry ratings from pairwise battles: fit, battles, human judges, results, plot, CLI

Nothing here names the demo world: what differs between runs comes in as judges and as the prompt rows' own fields
(`split`, `cluster`).
"""
