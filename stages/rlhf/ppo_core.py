"""The pure math of PPO for language models (no models, no I/O): per-token KL estimators, the
per-token reward, GAE, masked whitening, the clipped policy and value losses, KL controllers.

Shapes: `(batch, reply_len)` tensors over reply tokens; `mask` is 1 on real reply tokens (up to and
including the end-of-turn token) and 0 on padding after it. Values and rewards at padded positions
are ignored (treated as 0), so a reply that ended early bootstraps from 0 after its last token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, *, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(values, mask)
    centred = (values - mean) ** 2
    variance = masked_mean(centred, mask)
    count = mask.sum()
    if unbiased and count > 1:
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean (unless `shift_mean` is false), unit variance over the masked entries; padding -> 0."""
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of `tokens` under `logits / temperature` (the distribution that was sampled)."""
    logits = logits.float() / temperature
    # logsumexp + gather instead of a full log_softmax: one (B, T, V) tensor fewer.
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    logits = logits.float() / temperature
    log_probs = F.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled by the policy (Schulman's
    "Approximating KL divergence"): k1 = log p - log q (unbiased, can be negative);
    k3 = (q/p - 1) - log(q/p) (unbiased, never negative, lower variance when p and q are close)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (expected 'k1' or 'k3')")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real reply token in each row (0 for an empty row)."""
    return (mask.long().sum(-1) - 1).clamp(min=0)


def token_rewards(kl: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, *, kl_coef: float) -> torch.Tensor:
    """Per-token reward: -kl_coef * KL on every reply token, plus the sequence score on the last one."""
    rewards = -kl_coef * kl * mask.to(kl.dtype)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float):
    """Generalised advantage estimation. Returns (advantages, returns = advantages + values)."""
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def ppo_losses(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    cliprange_value: float,
) -> dict[str, torch.Tensor]:
    """Clipped surrogate policy loss and clipped value loss (token means over `mask`), with stats.

    policy_loss = mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps))), r = exp(logp - old_logp)
    value_loss  = 0.5 * mean(max((V - R)^2, (old_V + clip(V - old_V, -eps_v, eps_v) - R)^2))
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    policy_loss = masked_mean(torch.maximum(unclipped, clipped), mask)

    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    value_unclipped_sq = (values - returns) ** 2
    value_clipped_sq = (values_clipped - returns) ** 2
    value_loss = 0.5 * masked_mean(torch.maximum(value_unclipped_sq, value_clipped_sq), mask)

    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).float(), mask),
            "value_clip_frac": masked_mean((value_clipped_sq > value_unclipped_sq).float(), mask),
            # k3 estimate of KL(old || new): what moved in this update, always >= 0.
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": torch.where(mask > 0, ratio, torch.full_like(ratio, -math.inf)).max(),
            "ratio_min": torch.where(mask > 0, ratio, torch.full_like(ratio, math.inf)).min(),
        }
    return {"policy_loss": policy_loss, "value_loss": value_loss, **stats}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over real tokens (1 = perfect critic, <=0 = useless)."""
    var_returns = masked_var(returns, mask)
    if var_returns <= 0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / var_returns)


class KLController:
    """The KL coefficient: fixed, or adaptive toward a target sequence KL (Ziegler et al. 2019):
    coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon after each batch of n episodes."""

    def __init__(self, coef: float, *, adaptive: bool = False, target: float = 6.0, horizon: int = 10000):
        self.value = coef
        self.adaptive = adaptive
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, num_episodes: int) -> None:
        if not self.adaptive or not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * num_episodes / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
