"""Truncated importance sampling (algos/off_policy.py): hand-worked weights and gap stats, the weight as a per-token
loss multiplier, and exact expectations on a toy softmax policy (every sequence enumerated, nothing sampled)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from alignloop.algos import POLICY_LOSSES, aggregate_loss, logprob_gap_stats, tis_weights, vanilla_policy_loss
from alignloop.rollout.sampling import SamplingSettings, sample_next

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
# Δ = old − sampler: row 0 (ln 2, −ln 2, ln 4) → ρ = (2, ½, 4); row 1 (ln 3, 0, pad) → ρ = (3, 1, ·)
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.7, -9.0]])
SAMPLER = OLD - torch.tensor([[LN2, -LN2, LN4], [LN3, 0.0, 5.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_token_weights_truncate_and_mask_by_hand():
    w = tis_weights(OLD, SAMPLER, MASK, 2.5)
    assert torch.allclose(w, torch.tensor([[2.0, 0.5, 2.5], [2.5, 1.0, 0.0]]))
    w = tis_weights(OLD, SAMPLER, MASK, 2.5, mode="mask")
    assert torch.allclose(w, torch.tensor([[2.0, 0.5, 0.0], [0.0, 1.0, 0.0]]))


def test_sequence_weights_by_hand():
    # row 0: Σ Δ = ln 4 → ρ = 4; row 1: Σ Δ = ln 3 → ρ = 3 (the padded token's Δ never counts)
    w = tis_weights(OLD, SAMPLER, MASK, 2.5, level="sequence")
    assert torch.allclose(w, torch.tensor([[2.5, 2.5, 2.5], [2.5, 2.5, 0.0]]))
    w = tis_weights(OLD, SAMPLER, MASK, 3.5, mode="mask", level="sequence")
    assert torch.allclose(w, torch.tensor([[0.0, 0.0, 0.0], [3.0, 3.0, 0.0]]))
    assert not tis_weights(OLD.requires_grad_(), SAMPLER, MASK, 2.0).requires_grad  # detached
    with pytest.raises(ValueError):
        tis_weights(OLD, SAMPLER, MASK, 0.0)
    with pytest.raises(ValueError):
        tis_weights(OLD, SAMPLER, MASK, 2.0, level="geometric")


def test_gap_stats_by_hand():
    stats = logprob_gap_stats(OLD, SAMPLER, MASK, cap=2.5)
    assert stats["rollout/logprob_diff_mean"] == pytest.approx((4 * LN2 + LN3) / 5, rel=1e-6)
    assert stats["rollout/logprob_diff_max"] == pytest.approx(LN4, rel=1e-6)
    assert stats["rollout/tis_ratio_mean"] == pytest.approx((2 + 0.5 + 4 + 3 + 1) / 5, rel=1e-6)
    assert stats["rollout/tis_ratio_max"] == pytest.approx(4.0, rel=1e-6)
    assert stats["rollout/seq_ratio_mean"] == pytest.approx((4 + 3) / 2, rel=1e-6)
    assert stats["rollout/tis_clipfrac"] == pytest.approx(2 / 5)  # ρ = 4 and ρ = 3 exceed C
    assert "rollout/tis_clipfrac" not in logprob_gap_stats(OLD, SAMPLER, MASK)


@pytest.mark.parametrize("name", ["ppo_clip", "vanilla", "gspo", "cispo"])
def test_weighting_advantages_is_weighting_the_per_token_loss(name):
    """ℓ(w·A) = w·ℓ(A) for w ≥ 0: the stage multiplies the advantages, which is TIS on the per-token loss."""
    torch.manual_seed(0)
    old = torch.randn(3, 4)
    logp = (old + 0.3 * torch.randn(3, 4)).requires_grad_()
    adv, mask = torch.randn(3, 4), torch.ones(3, 4)
    w = tis_weights(old, old + 0.5 * torch.randn(3, 4), mask, 2.0)
    weighted, _ = POLICY_LOSSES[name](logp, old, adv * w, mask, agg="token_mean")
    (grad_weighted,) = torch.autograd.grad(weighted, logp)
    # the per-token loss ℓ_t(A) by hand, through each loss with one token at a time
    per_token = torch.stack([
        torch.stack([POLICY_LOSSES[name](logp, old, adv, torch.eye(4)[t].expand(3, 4) * (torch.arange(3) == b)
                                          .float().unsqueeze(1), agg="token_mean")[0] for t in range(4)])
        for b in range(3)
    ]) if name != "gspo" else None
    if per_token is not None:
        expected = aggregate_loss(w * per_token, mask, "token_mean")
        (grad_expected,) = torch.autograd.grad(expected, logp)
        assert torch.allclose(weighted, expected, atol=1e-6)
        assert torch.allclose(grad_weighted, grad_expected, atol=1e-6)
    else:  # GSPO's token terms share the row's ratio: compare with its formula directly
        s = torch.exp(((logp - old) * mask).sum(-1, keepdim=True) / 4).detach() * torch.exp(logp - logp.detach())
        tok = torch.maximum(-adv * s, -adv * torch.clamp(s, 1 - 3e-4, 1 + 4e-4))
        (grad_expected,) = torch.autograd.grad(aggregate_loss(w * tok, mask, "token_mean"), logp)
        assert torch.allclose(grad_weighted, grad_expected, atol=1e-6)


# --- exact expectations on a toy policy --------------------------------------------------------------------------
V, H = 4, 2  # 4 tokens, horizon 2: 16 sequences
SEQS = torch.tensor(list(itertools.product(range(V), repeat=H)))  # [16, 2]


def toy():
    g = torch.Generator().manual_seed(7)
    theta = [torch.randn(V, generator=g) * 1.5, torch.randn(V, V, generator=g) * 1.5]  # step 1; step 2 given y1
    reward = torch.randn(V, V, generator=g)
    return theta, reward[SEQS[:, 0], SEQS[:, 1]]


def token_logits(theta):
    return torch.stack([theta[0].expand(len(SEQS), V), theta[1][SEQS[:, 0]]], dim=1)  # [16, H, V]


def token_logp(logits):
    return torch.log_softmax(logits, -1).gather(-1, SEQS.unsqueeze(-1)).squeeze(-1)  # [16, H]


def truncated_logits(logits, top_k):
    kth = logits.topk(top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))  # the sampler never draws the rest


def sampler_logp(theta, temperature=1.0, top_k=0):
    logits = token_logits(theta) / temperature
    return token_logp(truncated_logits(logits, top_k) if top_k else logits)


def flat_grad(value, theta):
    return torch.cat([g.flatten() for g in torch.autograd.grad(value, theta)])


def on_policy_gradient(theta, reward):
    """(a) ∇_θ E_π[R] = ∇ Σ_y π(y) R(y), exactly."""
    return flat_grad((token_logp(token_logits(theta)).sum(-1).exp() * reward).sum(), theta)


def estimator_gradient(theta, reward, q_logp, weights):
    """E_{y~q}[ Σ_t w_t R(y) ∇logπ(y_t) ] over the sequences q can draw, through the real loss: advantages
    q(y)·w·R with ``vanilla`` at ρ = 1 and the constant normaliser (seq_mean_token_sum, max_len 1)."""
    drawn = q_logp.sum(-1) > float("-inf")
    logp = token_logp(token_logits(theta))[drawn]
    adv = (q_logp.sum(-1).exp()[drawn] * reward[drawn]).unsqueeze(1) * weights[drawn]
    loss, _ = vanilla_policy_loss(logp, logp.detach(), adv, torch.ones_like(logp), agg="seq_mean_token_sum",
                                  max_len=1)
    return -flat_grad(loss, theta) * int(drawn.sum())  # the loss is minimised: −(1/N)·Σ; back to the expectation


def leaf_theta():
    theta, reward = toy()
    return [t.clone().requires_grad_() for t in theta], reward


def test_temperature_mismatch_tis_recovers_the_on_policy_gradient_exactly():
    theta, reward = leaf_theta()
    exact = on_policy_gradient(theta, reward)
    with torch.no_grad():
        old, mu = token_logp(token_logits(theta)), sampler_logp(theta, temperature=0.6)
    ones = torch.ones_like(old)
    uncorrected = estimator_gradient(theta, reward, mu, ones)
    # no cap reached (C above every ratio): the sequence weight π(y)/μ(y) makes the estimator exact
    big = float(torch.exp(old.sum(-1) - mu.sum(-1)).max()) * 2
    corrected = estimator_gradient(theta, reward, mu, tis_weights(old, mu, ones, big, level="sequence"))
    assert torch.allclose(corrected, exact, atol=1e-5)
    assert (uncorrected - exact).norm() > 0.1 * exact.norm()  # the uncorrected gradient is off
    # with a cap C the gap is exactly the truncated mass E_μ[(ρ − min(ρ, C)) R ∇logπ]
    cap = 2.0
    rho = torch.exp(old.sum(-1) - mu.sum(-1))
    assert (rho > cap).any()
    capped = estimator_gradient(theta, reward, mu, tis_weights(old, mu, ones, cap, level="sequence"))
    excess = ((rho - rho.clamp(max=cap)).unsqueeze(1) * ones)
    assert torch.allclose(exact - capped, estimator_gradient(theta, reward, mu, excess), atol=1e-5)
    # token level at horizon 1 (the first token alone) is exact too; over a horizon of 2 it is an approximation
    first = torch.zeros_like(old)
    first[:, 0] = 1
    tok = tis_weights(old, mu, ones, float("inf"))
    step1_exact = estimator_gradient(theta, reward, old, first)  # on-policy, step-1 terms only
    mu1 = mu.clone()
    mu1[:, 1] = old[:, 1]  # the sampler differs at step 1 only
    step1_tis = estimator_gradient(theta, reward, mu1, tis_weights(old, mu1, first, float("inf")))
    assert torch.allclose(step1_tis, step1_exact, atol=1e-5)
    token_level = estimator_gradient(theta, reward, mu, tok)
    assert (token_level - exact).norm() < (uncorrected - exact).norm()


def test_top_k_truncation_leaves_exactly_the_undrawn_sequences_as_bias():
    theta, reward = leaf_theta()
    exact = on_policy_gradient(theta, reward)
    with torch.no_grad():
        old, mu = token_logp(token_logits(theta)), sampler_logp(theta, top_k=2)
    ones = torch.ones_like(old)
    drawn = mu.sum(-1) > float("-inf")
    assert 0 < int(drawn.sum()) < len(SEQS)
    uncorrected = estimator_gradient(theta, reward, mu, ones)
    corrected = estimator_gradient(theta, reward, mu, tis_weights(old, mu, ones, float("inf"), level="sequence"))
    # the known bias: Σ over the sequences top-k never draws of π(y) R(y) ∇logπ(y)
    undrawn_logp = old.masked_fill(drawn.unsqueeze(1), float("-inf"))
    bias = estimator_gradient(theta, reward, undrawn_logp, ones)
    assert torch.allclose(exact - corrected, bias, atol=1e-5)
    assert (exact - corrected).norm() < (exact - uncorrected).norm()
    # with C = 2 every ratio here is ≤ 2 (μ ≥ π on what top-k keeps): truncation costs nothing more
    assert float(torch.exp(old.sum(-1) - mu.sum(-1))[drawn].max()) <= 1.0 + 1e-6
    capped = estimator_gradient(theta, reward, mu, tis_weights(old, mu, ones, 2.0, level="sequence"))
    assert torch.allclose(capped, corrected, atol=1e-6)


def test_sampled_logprobs_give_the_on_policy_gradient_over_what_top_k_can_draw():
    """μ above is what the sampler reports with ``logprobs="sampled"``; with it the sequence weights give exactly
    Σ_{y top-k can draw} π(y) R(y) ∇logπ(y). With the full-vocabulary log-probs (``"full"``, the old report) the
    weights are 1 and the estimator stays the uncorrected E_μ[R ∇logπ]."""
    theta, reward = leaf_theta()
    with torch.no_grad():
        logits = token_logits(theta)
        old, mu = token_logp(logits), sampler_logp(theta, top_k=2)
    # the sampler's own report at every toy position equals the hand-truncated μ of the token it drew
    flat = logits.reshape(-1, V)
    drawn_tokens, reported = sample_next(flat, SamplingSettings(top_k=2, logprobs="sampled"),
                                         torch.Generator().manual_seed(0))
    by_hand = torch.log_softmax(truncated_logits(flat, 2), -1).gather(-1, drawn_tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(reported, by_hand, atol=1e-6)
    ones = torch.ones_like(old)
    drawn = (mu.sum(-1) > float("-inf")).unsqueeze(1)
    restricted = estimator_gradient(theta, reward, old.masked_fill(~drawn, float("-inf")), ones)
    sampled = estimator_gradient(theta, reward, mu, tis_weights(old, mu, ones, float("inf"), level="sequence"))
    assert torch.allclose(sampled, restricted, atol=1e-5)
    full = old.masked_fill(~drawn, float("-inf"))  # what "full" reports for the tokens the sampler draws: π's own
    as_full = estimator_gradient(theta, reward, mu, tis_weights(old, full, ones, float("inf"), level="sequence"))
    assert torch.allclose(as_full, estimator_gradient(theta, reward, mu, ones), atol=1e-6)
    assert (as_full - restricted).norm() > 0.1 * restricted.norm()
