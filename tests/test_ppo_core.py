"""PPO math against plain reference implementations and hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from stages.rlhf import ppo_core as core


def _reference_gae(rewards, values, lengths, gamma, lam):
    """A plain per-row loop over the real tokens only."""
    advantages = [[0.0] * len(rewards[0]) for _ in rewards]
    returns = [[0.0] * len(rewards[0]) for _ in rewards]
    for row, length in enumerate(lengths):
        running = 0.0
        for t in reversed(range(length)):
            next_value = values[row][t + 1] if t + 1 < length else 0.0
            delta = rewards[row][t] + gamma * next_value - values[row][t]
            running = delta + gamma * lam * running
            advantages[row][t] = running
            returns[row][t] = running + values[row][t]
    return torch.tensor(advantages), torch.tensor(returns)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_reference_loop(gamma, lam):
    generator = torch.Generator().manual_seed(0)
    lengths = [5, 3, 1, 5]
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(5)] for n in lengths])
    # Garbage in padded positions must not leak into real ones.
    rewards = torch.randn(4, 5, generator=generator) + 100 * (1 - mask)
    values = torch.randn(4, 5, generator=generator) - 50 * (1 - mask)
    advantages, returns = core.gae(rewards, values, mask, gamma=gamma, lam=lam)
    expected_adv, expected_ret = _reference_gae(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    torch.testing.assert_close(advantages, expected_adv)
    torch.testing.assert_close(returns, expected_ret)


def test_gae_lambda_one_gives_discounted_returns():
    rewards = torch.tensor([[0.0, -0.1, 2.0]])
    values = torch.tensor([[0.3, 0.5, 0.7]])
    _, returns = core.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, torch.tensor([[1.9, 1.9, 2.0]]))


def test_token_rewards_puts_score_on_last_real_token():
    kl = torch.tensor([[0.5, 1.0, 9.0], [2.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    rewards = core.token_rewards(kl, torch.tensor([3.0, -1.0]), mask, kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.1 + 3.0, 0.0], [-0.2 - 1.0, 0.0, 0.0]]))


def test_kl_estimators_hand_values():
    logp, logq = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert core.kl_estimate(logp, logq, "k1").item() == pytest.approx(math.log(2))
    # k3 = (q/p - 1) - log(q/p) = -0.5 + log 2
    assert core.kl_estimate(logp, logq, "k3").item() == pytest.approx(-0.5 + math.log(2))
    with pytest.raises(ValueError):
        core.kl_estimate(logp, logq, "k2")


def test_kl_estimators_are_unbiased_and_k3_nonnegative():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    exact = (p * (p.log() - q.log())).sum()
    for estimator in ("k1", "k3"):
        per_token = core.kl_estimate(p.log(), q.log(), estimator)
        torch.testing.assert_close((p * per_token).sum(), exact)  # expectation under the sampler p
    assert (core.kl_estimate(p.log(), q.log(), "k3") >= 0).all()
    assert (core.kl_estimate(p.log(), q.log(), "k1") < 0).any()  # k1 is only unbiased, not positive


def test_masked_whiten():
    values = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, -99.0, -99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    whitened = core.masked_whiten(values, mask)
    real = whitened[mask.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert real.var(unbiased=True).item() == pytest.approx(1.0, abs=1e-5)
    assert (whitened[~mask.bool()] == 0).all()
    kept = core.masked_whiten(values, mask, shift_mean=False)[mask.bool()]
    assert kept.mean().item() == pytest.approx(3.0, abs=1e-5)


def test_logprobs_and_entropy_from_logits():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])
    tokens = torch.tensor([[0, 2]])
    for temperature in (1.0, 0.5):
        expected = torch.log_softmax(logits / temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(core.logprobs_from_logits(logits, tokens, temperature=temperature), expected)
    entropy = core.entropy_from_logits(logits)
    assert entropy[0, 1].item() == pytest.approx(math.log(3))
    assert entropy[0, 0].item() < math.log(3)


def test_ppo_losses_hand_computed():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = core.ppo_losses(
        logprobs=torch.tensor([[math.log(1.5), math.log(0.5), 5.0]]),
        old_logprobs=torch.zeros(1, 3),
        advantages=torch.tensor([[1.0, -1.0, 100.0]]),
        values=torch.tensor([[1.0, 0.0, 100.0]]),
        old_values=torch.tensor([[0.5, 0.0, 0.0]]),
        returns=torch.tensor([[2.0, 1.0, -100.0]]),
        mask=mask,
        cliprange=0.2,
        cliprange_value=0.2,
    )
    # token 1: A=1, r=1.5 -> max(-1.5, -1.2) = -1.2 ; token 2: A=-1, r=0.5 -> max(0.5, 0.8) = 0.8
    assert out["policy_loss"].item() == pytest.approx((-1.2 + 0.8) / 2)
    assert out["clip_frac"].item() == pytest.approx(1.0)
    # token 1: max((1-2)^2, (0.7-2)^2) = 1.69 ; token 2: max((0-1)^2, (0-1)^2) = 1
    assert out["value_loss"].item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert out["value_clip_frac"].item() == pytest.approx(0.5)
    assert out["approx_kl"].item() == pytest.approx(((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2)
    assert out["ratio_max"].item() == pytest.approx(1.5)
    assert out["ratio_min"].item() == pytest.approx(0.5)


def test_ppo_losses_gradient_is_zero_when_clipped():
    logprobs = torch.tensor([[math.log(1.5)]], requires_grad=True)
    out = core.ppo_losses(
        logprobs=logprobs, old_logprobs=torch.zeros(1, 1), advantages=torch.ones(1, 1),
        values=torch.zeros(1, 1), old_values=torch.zeros(1, 1), returns=torch.zeros(1, 1),
        mask=torch.ones(1, 1), cliprange=0.2, cliprange_value=0.2,
    )
    out["policy_loss"].backward()
    assert logprobs.grad.item() == 0.0


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4)
    assert core.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert core.explained_variance(torch.zeros(1, 4) + 2.5, returns, mask) == pytest.approx(0.0, abs=1e-6)


def test_kl_controller():
    fixed = core.KLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1
    adaptive = core.KLController(0.1, adaptive=True, target=6.0, horizon=1000)
    adaptive.update(12.0, 100)  # error clipped to +0.2
    assert adaptive.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 1000))
    adaptive.update(4.5, 100)  # error -0.25 clipped to -0.2
    assert adaptive.value == pytest.approx(0.1 * 1.02 * 0.98)
    restored = core.KLController(0.5, adaptive=True)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value
