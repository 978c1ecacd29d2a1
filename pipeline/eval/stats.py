"""Statistics of the evaluation: which held-out rows are dev and which test, what the bootstrap resamples, and
confidence intervals (bootstrap over items or clusters, and over seeds).

    split_of(row)                                -> "dev" | "test"   the one rule for every module
    cluster_of(row)                              -> the row's resampling key (`cluster`, else the prompt)

    mean_ci(values, clusters=facts)              -> (mean, lo, hi)   95% percentile bootstrap
    paired_difference_ci(ppo, sft, clusters=...) -> (diff, lo, hi)   PPO - SFT on the same prompts
    ratio_ci(num, den, clusters=...)             -> (rate, lo, hi)   a rate over what counts (e.g. hedged among correct)
    paired_ratio_difference_ci(...)              -> (diff, lo, hi)   two such rates on the same prompts
    across_seeds([0.61, 0.64, 0.59])             -> {"mean", "std", "min", "max", "n", "ci95"}

`clusters` is one key per item (`cluster_of`: the demo's rows carry their fact): the same fact asked in
several phrasings is not several independent observations, so the bootstrap draws whole clusters
with replacement and takes every item of each drawn cluster. Without `clusters` each item is its
own cluster (the ordinary bootstrap). Everything is deterministic for a seed. numpy only.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Hashable, Mapping, Sequence

import numpy as np

LEVEL = 0.95


def _as_array(values, what: str) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what}: expected a non-empty list of numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: contains NaN, None or infinity")
    return array


def cluster_codes(clusters: Sequence[Hashable] | None, n: int) -> np.ndarray:
    """Integer code per item (0..k-1, in order of first appearance); each item its own without clusters."""
    if clusters is None:
        return np.arange(n)
    clusters = list(clusters)
    if len(clusters) != n:
        raise ValueError(f"clusters: {len(clusters)} keys for {n} values")
    codes: dict[Hashable, int] = {}
    return np.array([codes.setdefault(c, len(codes)) for c in clusters], dtype=np.int64)


def cluster_draws(n_clusters: int, *, rounds: int, seed: int) -> np.ndarray:
    """(rounds, n_clusters): how many times each cluster is drawn in each bootstrap round
    (n_clusters draws with replacement per round)."""
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=rounds)


def _bootstrap_means(values: np.ndarray, codes: np.ndarray, *, rounds: int, seed: int) -> np.ndarray:
    n_clusters = int(codes.max()) + 1
    sums = np.bincount(codes, weights=values, minlength=n_clusters)
    sizes = np.bincount(codes, minlength=n_clusters).astype(np.float64)
    draws = cluster_draws(n_clusters, rounds=rounds, seed=seed).astype(np.float64)
    # the mean over the items of the drawn clusters (a cluster drawn twice counts twice)
    return (draws @ sums) / (draws @ sizes)


def percentile_interval(samples, level: float = LEVEL) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.asarray(samples, dtype=np.float64), [tail, 1.0 - tail])
    return float(lo), float(hi)


def mean_ci(values, *, clusters: Sequence[Hashable] | None = None, rounds: int = 1000, seed: int = 0,
            level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of `values` with a percentile bootstrap interval (95% by default).

    `clusters`: one key per value; whole clusters are resampled (see the module docstring)."""
    array = _as_array(values, "values")
    codes = cluster_codes(clusters, array.size)
    means = _bootstrap_means(array, codes, rounds=rounds, seed=seed)
    lo, hi = percentile_interval(means, level)
    return float(array.mean()), lo, hi


def paired_difference_ci(a, b, *, clusters: Sequence[Hashable] | None = None, rounds: int = 1000, seed: int = 0,
                         level: float = LEVEL) -> tuple[float, float, float]:
    """(mean(a) - mean(b), lo, hi) for two scores of the same items (PPO and SFT on the same prompts).

    Paired: each bootstrap round draws the same items (or clusters) for both, so what the two share
    (a prompt's difficulty) cancels and only the difference varies."""
    a, b = _as_array(a, "a"), _as_array(b, "b")
    if a.size != b.size:
        raise ValueError(f"paired scores need the same items: {a.size} vs {b.size} values")
    return mean_ci(a - b, clusters=clusters, rounds=rounds, seed=seed, level=level)


def _ratio_draws(numerators, denominators, codes: np.ndarray, *, rounds: int, seed: int) -> tuple[float, np.ndarray]:
    """(sum(numerators) / sum(denominators), the same ratio in each bootstrap round over clusters)."""
    n_clusters = int(codes.max()) + 1
    nums = np.bincount(codes, weights=numerators, minlength=n_clusters)
    dens = np.bincount(codes, weights=denominators, minlength=n_clusters)
    draws = cluster_draws(n_clusters, rounds=rounds, seed=seed).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(nums.sum() / dens.sum()), (draws @ nums) / (draws @ dens)


def ratio_ci(numerators, denominators, *, clusters: Sequence[Hashable] | None = None, rounds: int = 1000, seed: int = 0,
             level: float = LEVEL) -> tuple[float, float, float] | None:
    """(sum(numerators) / sum(denominators), lo, hi): a rate over items that each count `denominators[i]` times (a
    prompt's samples, or only its correct ones), with a cluster bootstrap interval. None when nothing counts."""
    num, den = _as_array(numerators, "numerators"), _as_array(denominators, "denominators")
    if den.sum() <= 0:
        return None
    point, samples = _ratio_draws(num, den, cluster_codes(clusters, num.size), rounds=rounds, seed=seed)
    lo, hi = percentile_interval(samples[np.isfinite(samples)], level)
    return point, lo, hi


def paired_ratio_difference_ci(num_a, den_a, num_b, den_b, *, clusters: Sequence[Hashable] | None = None,
                               rounds: int = 1000, seed: int = 0, level: float = LEVEL) -> tuple[float, float, float] | None:
    """(rate_a - rate_b, lo, hi) for two rates over the same items (PPO's and SFT's on the same prompts): each round
    draws the same clusters for both. None when either counts nothing."""
    arrays = [_as_array(x, "rate parts") for x in (num_a, den_a, num_b, den_b)]
    if arrays[1].sum() <= 0 or arrays[3].sum() <= 0:
        return None
    codes = cluster_codes(clusters, arrays[0].size)
    point_a, a = _ratio_draws(arrays[0], arrays[1], codes, rounds=rounds, seed=seed)
    point_b, b = _ratio_draws(arrays[2], arrays[3], codes, rounds=rounds, seed=seed)
    differences = a - b
    lo, hi = percentile_interval(differences[np.isfinite(differences)], level)
    return point_a - point_b, lo, hi


# ------------------------------------------------------------------------------------ across seeds


def _t_two_sided_mass(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with an integer number of degrees of freedom (closed form,
    Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(dof))
    cos2 = math.cos(theta) ** 2
    if dof % 2 == 1:
        total, term = 0.0, math.cos(theta)
        for k in range(1, (dof - 1) // 2 + 1):
            total += term
            term *= cos2 * (2 * k) / (2 * k + 1)
        return (2.0 / math.pi) * (theta + math.sin(theta) * total) if dof > 1 else 2.0 * theta / math.pi
    total, term = 0.0, 1.0
    for k in range(1, dof // 2 + 1):
        total += term
        term *= cos2 * (2 * k - 1) / (2 * k)
    return math.sin(theta) * total


def t_quantile(probability: float, dof: int) -> float:
    """The `probability` quantile (> 0.5) of Student's t with `dof` degrees of freedom."""
    if not 0.5 < probability < 1.0 or dof < 1:
        raise ValueError("t_quantile needs 0.5 < probability < 1 and dof >= 1")
    mass = 2.0 * probability - 1.0
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, dof) < mass:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if _t_two_sided_mass(mid, dof) < mass else (lo, mid)
    return (lo + hi) / 2.0


def across_seeds(values_per_seed: Sequence[float] | Mapping[Hashable, float], *, level: float = LEVEL) -> dict:
    """Summary of one figure measured on several seeds (one value per seed, or {seed: value}):
    mean, sample standard deviation, min, max, n and a t-based interval of the mean
    (`ci95`, null with a single seed: one run says nothing about the spread)."""
    values = values_per_seed.values() if isinstance(values_per_seed, Mapping) else values_per_seed
    array = _as_array(values, "values_per_seed")
    n = int(array.size)
    mean = float(array.mean())
    std = float(array.std(ddof=1)) if n > 1 else 0.0
    ci = None
    if n > 1:
        half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
        ci = [mean - half, mean + half]
    return {"mean": mean, "std": std, "min": float(array.min()), "max": float(array.max()), "n": n, "ci95": ci}


# ------------------------------------------------------------------------------------ held-out rows

DEV_SHARE = 0.3
"""Share of held-out rows without a `split` that are dev (by a hash of the prompt, the same in every module)."""


def prompt_key(row: Mapping) -> str:
    """The prompt of a row as one string: its `prompt` text, or its `messages` as JSON."""
    prompt = row.get("prompt") if "prompt" in row else row.get("messages")
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def split_of(row: Mapping) -> str:
    """`dev` or `test`: the row's own `split`, else a hash of its prompt (`DEV_SHARE` of prompts are dev). Dev rows
    serve tuning (PPO's monitor, checkpoint selection, the rewrite loop); test rows the headline figures only."""
    if row.get("split") in ("dev", "test"):
        return row["split"]
    digest = int.from_bytes(hashlib.sha256(prompt_key(row).encode()).digest()[:8], "big")
    return "dev" if digest / 2**64 < DEV_SHARE else "test"


def split_rows(rows: Sequence[Mapping]) -> tuple[list, list]:
    """(dev rows, test rows), each in file order."""
    return [r for r in rows if split_of(r) == "dev"], [r for r in rows if split_of(r) == "test"]


def cluster_of(row: Mapping) -> str:
    """What the bootstrap resamples: the row's `cluster` (the demo puts the fact there, so the same fact asked in
    several phrasings is one draw), else its prompt."""
    return str(row["cluster"]) if row.get("cluster") is not None else prompt_key(row)


__all__ = ["split_of", "split_rows", "cluster_of", "prompt_key", "mean_ci", "ratio_ci", "paired_ratio_difference_ci", "paired_difference_ci", "across_seeds", "t_quantile", "cluster_codes", "cluster_draws",
           "percentile_interval"]
