"""Bradley–Terry ratings of checkpoints from pairwise battles, with bootstrap 95% intervals (numpy only).

    fit_bradley_terry(battles)                  -> {checkpoint: rating}, best first
    bootstrap_ratings(battles, by="prompt")     -> {checkpoint: {"rating", "ci95"}}
    battle_stats(battles)                       -> counts and the judge's position bias
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Mapping

import numpy as np

from pipeline.eval.arena import ArenaError
from pipeline.eval.stats import cluster_codes, cluster_draws, percentile_interval

SCALE, BASE, ANCHOR = 400.0, 10.0, 1000.0
L2 = 1e-4  # per unit of battle weight: finite ratings when one checkpoint wins everything (see _fit_theta)
VERDICTS = ("a", "b", "tie")


@dataclass(frozen=True)
class Battle:
    """One verdict: `model_a`'s answer was shown first. `winner` is "a", "b" or "tie"."""

    prompt_id: str
    model_a: str
    model_b: str
    winner: str
    sample: int = 0

    def __post_init__(self):
        if self.winner not in VERDICTS:
            raise ValueError(f"a verdict is one of {VERDICTS}, not {self.winner!r}")
        if self.model_a == self.model_b:
            raise ValueError(f"a battle needs two different checkpoints, got {self.model_a!r} twice")


def as_battle(battle: Battle | Mapping) -> Battle:
    if isinstance(battle, Battle):
        return battle
    return Battle(prompt_id=str(battle["prompt_id"]), model_a=battle["model_a"], model_b=battle["model_b"],
                  winner=battle["winner"], sample=int(battle.get("sample", 0)))


# ------------------------------------------------------------------------------ (a) Bradley–Terry


def _tallies(battles: list[Battle], by: str | Callable[[Battle], Hashable]):
    """Per resampling cluster p: N[p, i, j] battles between i and j, S[p, i, j] i's score against j
    (a win 1, a tie 1/2). The fit only needs these sums, so a bootstrap round is a weighted sum."""
    if not battles:
        raise ArenaError("no battles to rate")
    models = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    index = {m: k for k, m in enumerate(models)}
    if by == "prompt":
        keys = [b.prompt_id for b in battles]
    elif by == "battle":
        keys = None
    elif callable(by):
        keys = [by(b) for b in battles]
    else:
        raise ValueError(f"by is 'prompt', 'battle' or a function of a battle, not {by!r}")
    codes = cluster_codes(keys, len(battles))
    n_clusters = int(codes.max()) + 1
    count = np.zeros((n_clusters, len(models), len(models)))
    score = np.zeros_like(count)
    for code, b in zip(codes, battles):
        i, j = index[b.model_a], index[b.model_b]
        s = {"a": 1.0, "b": 0.0, "tie": 0.5}[b.winner]
        count[code, i, j] += 1.0
        count[code, j, i] += 1.0
        score[code, i, j] += s
        score[code, j, i] += 1.0 - s
    return models, count, score


def _objective(theta, count, score, total, l2):
    diff = theta[:, None] - theta[None, :]
    # each unordered pair appears twice in the ordered sum (i vs j and j vs i) with its own score
    log_likelihood = -(score * np.logaddexp(0.0, -diff)).sum() / total
    return log_likelihood - 0.5 * l2 * float(theta @ theta)


def _fit_theta(count: np.ndarray, score: np.ndarray, *, l2: float = L2, tol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """Maximum-likelihood BT strengths (natural log-odds, mean zero) by damped Newton steps.

    The log-likelihood is divided by the number of battles and a small ridge `l2` added: the ridge
    keeps a checkpoint that wins (or loses) every battle at a finite rating, and, being per battle,
    counting every battle twice leaves the fit exactly as it was."""
    models = count.shape[0]
    total = count.sum() / 2.0
    if total <= 0:
        raise ArenaError("no battles to rate")
    theta = np.zeros(models)
    centring = np.full((models, models), 1.0 / models)  # pins the mean at 0 (the likelihood ignores it)
    current = _objective(theta, count, score, total, l2)
    for _ in range(max_iter):
        prob = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))
        gradient = (score - count * prob).sum(axis=1) / total - l2 * theta
        curvature = count * prob * (1.0 - prob) / total
        information = np.diag(curvature.sum(axis=1) + l2) - curvature
        try:
            step = np.linalg.solve(information + centring, gradient)
        except np.linalg.LinAlgError:
            raise ArenaError("the battles do not connect every checkpoint to the others") from None
        size = 1.0
        while size > 1e-8:
            candidate = theta + size * step
            value = _objective(candidate, count, score, total, l2)
            if value >= current - 1e-15:
                break
            size /= 2.0
        theta, current = candidate, value
        if np.max(np.abs(size * step)) < tol:
            break
    return theta - theta.mean()


def _to_elo(theta: np.ndarray, models: list[str], *, scale: float, base: float, anchor: float,
            anchor_model: str | None) -> np.ndarray:
    ratings = anchor + theta * scale / math.log(base)
    if anchor_model is not None:
        if anchor_model not in models:
            raise ArenaError(f"anchor checkpoint {anchor_model!r} played no battle")
        ratings = ratings + (anchor - ratings[..., [models.index(anchor_model)]])
    return ratings


def fit_bradley_terry(battles: Iterable[Battle | Mapping], *, scale: float = SCALE, base: float = BASE,
                      anchor: float = ANCHOR, anchor_model: str | None = None, l2: float = L2) -> dict[str, float]:
    """{checkpoint: rating}, best first. A rating gap of `scale` points means `base`:1 odds of winning;
    the mean rating is `anchor` (or `anchor_model` is pinned at `anchor`). Ties count half a win."""
    battles = [as_battle(b) for b in battles]
    models, count, score = _tallies(battles, lambda battle: 0)  # one cluster: the totals
    theta = _fit_theta(count[0], score[0], l2=l2)
    ratings = _to_elo(theta, models, scale=scale, base=base, anchor=anchor, anchor_model=anchor_model)
    return dict(sorted(zip(models, ratings.tolist()), key=lambda kv: -kv[1]))


def bootstrap_ratings(battles: Iterable[Battle | Mapping], *, by: str | Callable[[Battle], Hashable] = "prompt",
                      rounds: int = 100, seed: int = 0, scale: float = SCALE, base: float = BASE,
                      anchor: float = ANCHOR, anchor_model: str | None = None, l2: float = L2) -> dict[str, dict]:
    """{checkpoint: {"rating", "ci95": [lo, hi]}}, best first: the maximum-likelihood rating on all
    battles and a 95% percentile interval over `rounds` refits on resampled data.

    `by="prompt"` resamples prompts (every battle of a drawn prompt, both orders and every sample,
    comes along); `by="battle"` resamples single verdicts (Chatbot Arena's own choice, where each
    battle is a different user's prompt); or pass a function of a battle giving its cluster key."""
    battles = [as_battle(b) for b in battles]
    models, count, score = _tallies(battles, by)
    theta = _fit_theta(count.sum(axis=0), score.sum(axis=0), l2=l2)
    point = _to_elo(theta, models, scale=scale, base=base, anchor=anchor, anchor_model=anchor_model)
    draws = cluster_draws(count.shape[0], rounds=rounds, seed=seed).astype(np.float64)
    boot_count = np.einsum("rp,pij->rij", draws, count)
    boot_score = np.einsum("rp,pij->rij", draws, score)
    samples = np.stack([_fit_theta(c, s, l2=l2) for c, s in zip(boot_count, boot_score)])
    samples = _to_elo(samples, models, scale=scale, base=base, anchor=anchor, anchor_model=anchor_model)
    out = {}
    for k in np.argsort(-point, kind="stable"):
        lo, hi = percentile_interval(samples[:, k])
        out[models[k]] = {"rating": float(point[k]), "ci95": [lo, hi]}
    return out


def battle_stats(battles: Iterable[Battle | Mapping]) -> dict:
    """Counts per checkpoint, and the judge's position bias: how often the answer shown first wins a
    decisive verdict, and how often the two orders of the same battle agree."""
    battles = [as_battle(b) for b in battles]
    per_model: dict[str, dict[str, int]] = {}
    for b in battles:
        for model, side in ((b.model_a, "a"), (b.model_b, "b")):
            tally = per_model.setdefault(model, {"battles": 0, "wins": 0, "losses": 0, "ties": 0})
            tally["battles"] += 1
            tally["ties" if b.winner == "tie" else "wins" if b.winner == side else "losses"] += 1
    decisive = [b for b in battles if b.winner != "tie"]
    orders: dict[tuple, dict[str, str]] = {}
    for b in battles:
        key = (b.prompt_id, b.sample, *sorted((b.model_a, b.model_b)))
        # the verdict, said of the first model in name order: both orders of one battle are comparable
        first = sorted((b.model_a, b.model_b))[0]
        said = "tie" if b.winner == "tie" else ("first" if (b.winner == "a") == (b.model_a == first) else "second")
        orders.setdefault(key, {})[b.model_a] = said
    both = [v for v in orders.values() if len(v) == 2]
    agree = sum(len(set(v.values())) == 1 for v in both)
    return {
        "battles": len(battles),
        "prompts": len({b.prompt_id for b in battles}),
        "ties": sum(b.winner == "tie" for b in battles),
        "first_position_win_rate": (sum(b.winner == "a" for b in decisive) / len(decisive)) if decisive else None,
        "swapped_pairs": len(both),
        "swap_agreement": (agree / len(both)) if both else None,
        "per_checkpoint": dict(sorted(per_model.items())),
    }
