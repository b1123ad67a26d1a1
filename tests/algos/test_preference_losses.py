"""KTO and ORPO losses against values worked out by hand (the literals below, not the formulas, are the oracle)."""

from __future__ import annotations

import pytest
import torch

from alignloop.algos import kto_loss, kto_reference_point, log1mexp, orpo_log_odds, orpo_loss

# ---- KTO -------------------------------------------------------------------------------------------------------
# β = 0.5, λ_D = 1, λ_U = 2. Four examples, the first two desirable:
#   policy  −1, −3, −2, −4;  reference −2, −2, −2, −3   ->   r = +1, −1, 0, −1
# Mismatched pairs: policy −5, −6; reference −6, −6.8   ->   differences 1.0, 0.8, mean z0 = 0.9
POLICY = torch.tensor([-1.0, -3.0, -2.0, -4.0])
REF = torch.tensor([-2.0, -2.0, -2.0, -3.0])
DESIRABLE = torch.tensor([True, True, False, False])
KL_POLICY, KL_REF = torch.tensor([-5.0, -6.0]), torch.tensor([-6.0, -6.8])


def test_kto_reference_point_is_the_clamped_detached_mean():
    # (−5 − (−6) + (−6 − (−6.8))) / 2 = (1.0 + 0.8) / 2 = 0.9
    policy = KL_POLICY.clone().requires_grad_()
    z0 = kto_reference_point(policy, KL_REF)
    assert z0.item() == pytest.approx(0.9)
    assert not z0.requires_grad
    # −6 − (−5) = −1 < 0: a KL estimate below zero is clamped to 0
    assert kto_reference_point(torch.tensor([-6.0]), torch.tensor([-5.0])).item() == 0.0
    # data parallel: the local mean (0.9) goes through the process average before the clamp
    assert kto_reference_point(KL_POLICY, KL_REF, lambda kl: kl - 1.0).item() == 0.0  # 0.9 − 1 = −0.1 -> 0
    assert kto_reference_point(KL_POLICY, KL_REF, lambda kl: kl + 1.0).item() == pytest.approx(1.9)


def test_kto_hand_example():
    # desirable   r = +1: 1 · (1 − σ(0.5·(1 − 0.9)))  = 1 − σ(0.05)  = 1 − 0.512497 = 0.487503
    # desirable   r = −1: 1 · (1 − σ(0.5·(−1 − 0.9))) = 1 − σ(−0.95) = 1 − 0.278885 = 0.721115
    # undesirable r =  0: 2 · (1 − σ(0.5·(0.9 − 0)))  = 2 · (1 − 0.610639) = 2 · 0.389361 = 0.778722
    # undesirable r = −1: 2 · (1 − σ(0.5·(0.9 + 1))) = 2 · (1 − 0.721115) = 2 · 0.278885 = 0.557770
    z0 = kto_reference_point(KL_POLICY, KL_REF)
    losses, rewards = kto_loss(POLICY, REF, DESIRABLE, z0, beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    assert losses.tolist() == pytest.approx([0.487503, 0.721115, 0.778722, 0.557770], abs=2e-6)
    # rewards β·r = 0.5 · (1, −1, 0, −1)
    assert rewards.tolist() == pytest.approx([0.5, -0.5, 0.0, -0.5])


def test_kto_gradient_hand_example_and_no_gradient_through_the_reference_point():
    # ∂/∂r λ_D(1 − σ(β(r − z0))) = −λ_D β σ(x)(1 − σ(x)), x = 0.05: −0.5 · 0.512497 · 0.487503 = −0.124922
    # ∂/∂r λ_U(1 − σ(β(z0 − r))) = +λ_U β σ(x)(1 − σ(x)), x = 0.45: 2 · 0.5 · 0.610639 · 0.389361 = 0.237759
    policy, kl_policy = POLICY.clone().requires_grad_(), KL_POLICY.clone().requires_grad_()
    z0 = kto_reference_point(kl_policy, KL_REF)
    losses, rewards = kto_loss(policy, REF, DESIRABLE, z0, beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    losses.sum().backward()
    assert policy.grad[0].item() == pytest.approx(-0.124922, abs=2e-6)
    assert policy.grad[2].item() == pytest.approx(0.237759, abs=2e-6)
    assert kl_policy.grad is None and not rewards.requires_grad


def test_kto_at_the_reference_is_half_the_weight():
    # π = π_ref and z0 = 0: every loss is λ(1 − σ(0)) = λ/2 -> 1.5/2 = 0.75 and 0.5/2 = 0.25
    zeros = torch.zeros(2)
    losses, _ = kto_loss(zeros, zeros, torch.tensor([True, False]), 0.0, beta=0.1, desirable_weight=1.5,
                         undesirable_weight=0.5)
    assert losses.tolist() == pytest.approx([0.75, 0.25])


def test_kto_rejects_bad_settings():
    with pytest.raises(ValueError, match="beta must be > 0"):
        kto_loss(POLICY, REF, DESIRABLE, 0.0, beta=0.0)


# ---- ORPO ------------------------------------------------------------------------------------------------------
LOG = torch.log


def test_orpo_hand_example():
    # pair 1: P(y_w) = 0.5, P(y_l) = 0.25 (mean token log-probs log 0.5, log 0.25)
    #   odds 0.5/0.5 = 1 and 0.25/0.75 = 1/3 -> log odds ratio = log 3 = 1.098612
    #   log σ(log 3) = log(3/4) = −0.287682;  NLL = −log 0.5 = 0.693147
    #   β = 0.1: L = 0.693147 + 0.1 · 0.287682 = 0.721915
    # pair 2: P(y_w) = 0.2, P(y_l) = 0.8
    #   odds 0.2/0.8 = 1/4 and 0.8/0.2 = 4 -> log odds ratio = log(1/16) = −2.772589
    #   log σ(log(1/16)) = log(1/17) = −2.833213;  NLL = −log 0.2 = 1.609438
    #   L = 1.609438 + 0.1 · 2.833213 = 1.892759
    chosen, rejected = LOG(torch.tensor([0.5, 0.2])), LOG(torch.tensor([0.25, 0.8]))
    terms = orpo_loss(chosen, rejected, beta=0.1)
    assert terms.log_odds.tolist() == pytest.approx([1.098612, -2.772589], abs=1e-5)
    assert terms.log_odds_ratio.tolist() == pytest.approx([-0.287682, -2.833213], abs=1e-5)
    assert terms.nll.tolist() == pytest.approx([0.693147, 1.609438], abs=1e-5)
    assert terms.losses.tolist() == pytest.approx([0.721915, 1.892759], abs=1e-5)


def test_orpo_gradient_hand_example():
    # pair 1 above. log odds(y) = l − log(1 − e^l) has derivative 1/(1 − P):  2 for P = 0.5, 4/3 for P = 0.25.
    # ∂L/∂l_w = −1 − β σ(−log 3) · 2     = −1 − 0.1 · 0.25 · 2     = −1.05
    # ∂L/∂l_l = −β σ(−log 3) · (−4/3)    = 0.1 · 0.25 · 4/3        = 0.033333
    chosen = LOG(torch.tensor([0.5])).requires_grad_()
    rejected = LOG(torch.tensor([0.25])).requires_grad_()
    orpo_loss(chosen, rejected, beta=0.1).losses.sum().backward()
    assert chosen.grad.item() == pytest.approx(-1.05, abs=1e-5)
    assert rejected.grad.item() == pytest.approx(0.033333, abs=1e-5)


def test_orpo_is_stable_near_certainty_and_near_zero_probability():
    # log(1 − e^x): x = −1e−6 -> log(1 − (1 − 1e−6 + ...)) ≈ log(1e−6) = −13.815511;
    #               x = −50   -> log(1 − 1.93e−22) ≈ −1.93e−22 (a naive log(1 − exp) gives exactly 0, fine; the
    #               danger is the other end, where 1 − exp(x) rounds to 0 and the naive log is −inf)
    x = torch.tensor([-1e-6, -50.0])
    assert log1mexp(x).tolist() == pytest.approx([-13.815511, -1.93e-22], rel=1e-4)
    # P rounds to 1 in float32 (mean log-prob −1e−9): the naive form is log(0) = −inf; here it stays finite
    chosen = torch.tensor([-1e-9, -60.0], requires_grad=True)
    rejected = torch.tensor([-40.0, -1e-9], requires_grad=True)
    terms = orpo_loss(chosen, rejected)
    terms.losses.sum().backward()
    assert torch.isfinite(terms.losses).all() and torch.isfinite(chosen.grad).all()
    assert torch.isfinite(rejected.grad).all()
    assert terms.log_odds[0] > 30 and terms.log_odds[1] < -30


def test_orpo_log_odds_matches_the_direct_formula_in_double_precision():
    # log(p/(1−p)) written out, where it is well conditioned
    p_w, p_l = torch.tensor([0.3, 0.9], dtype=torch.float64), torch.tensor([0.6, 0.05], dtype=torch.float64)
    direct = torch.log(p_w / (1 - p_w)) - torch.log(p_l / (1 - p_l))
    assert torch.allclose(orpo_log_odds(p_w.log(), p_l.log()), direct)
