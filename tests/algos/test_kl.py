"""KL estimators and β controllers."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.algos import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    UncertaintyKLController,
    kl_penalty,
)


def test_estimators_hand_example():
    # logp = [−1, −2], ref = [−2, −1] → log_ratio = logp − ref = [1, −1]
    # k1 = [1, −1]; k2 = ½·lr² = [0.5, 0.5]; abs = [1, 1]
    # k3 = e^{−lr} − 1 + lr: e^{−1} − 1 + 1 = 0.367879;  e^{1} − 1 − 1 = 0.718282
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0])
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.tensor([math.exp(-1), math.e - 2]))
    torch.testing.assert_close(kl_penalty(logp, ref, "abs"), torch.tensor([1.0, 1.0]))
    assert kl_penalty(logp, ref).tolist() == [1.0, -1.0]  # default k1


def test_k1_and_k3_are_unbiased_for_kl_policy_to_ref():
    # π = [1/2, 1/4, 1/4], π_ref = [1/4, 1/4, 1/2]
    # KL(π‖π_ref) = ½ ln 2 + ¼ ln 1 + ¼ ln ½ = ¼ ln 2 = 0.173287
    # exact expectation over x ~ π (enumerating the three outcomes) must equal it for k1 and k3
    pi = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    ref = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    kl = 0.25 * math.log(2)
    for kind in ("k1", "k3"):
        expected = (pi * kl_penalty(pi.log(), ref.log(), kind)).sum().item()
        assert expected == pytest.approx(kl, rel=1e-12), kind
    # k2 is biased: E[½ lr²] = ½(½ ln²2 + ¼ ln²2) = (3/8) ln²2 = 0.180168 ≠ 0.173287
    k2 = (pi * kl_penalty(pi.log(), ref.log(), "k2")).sum().item()
    assert k2 == pytest.approx(3 / 8 * math.log(2) ** 2)


def test_k3_stays_finite_for_extreme_ratios():
    out = kl_penalty(torch.tensor([-200.0]), torch.tensor([0.0]), "k3")
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3", "abs"}


def test_fixed_controller():
    ctl = FixedKLController(0.05)
    assert ctl.update(current_kl=100.0, n_steps=64) == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_adaptive_controller_hand_example():
    # init 0.1, target 6, horizon 10000, 256 samples per update
    # KL = 9: e = clip(9/6 − 1 = 0.5) = 0.2 → β = 0.1 · (1 + 0.2·256/10000) = 0.1 · 1.00512 = 0.100512
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    assert ctl.update(9.0, 256) == pytest.approx(0.100512)
    # KL = 5: e = 5/6 − 1 = −1/6 → β = 0.100512 · (1 − 256/60000) = 0.100512 · 0.995733 = 0.100083
    assert ctl.update(5.0, 256) == pytest.approx(0.100512 * (1 - 256 / 60000))
    # KL on target: unchanged
    before = ctl.value
    assert ctl.update(6.0, 256) == pytest.approx(before)
    # resume from a state dict continues identically
    resumed = AdaptiveKLController(init_beta=1.0, target=1.0, horizon=1.0)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.update(12.0, 100) == ctl.update(12.0, 100)


def test_uncertainty_controller_hand_example():
    # β = 0.1, coef 1, max_scale 3; std [0, 1, 2, 5], mean 2 → relative [0, 0.5, 1, 2.5]
    # β_i = 0.1·(1 + rel) = [0.1, 0.15, 0.2, 0.35] → clamp at 3·0.1 = 0.3 → [0.1, 0.15, 0.2, 0.3]
    ctl = UncertaintyKLController(FixedKLController(0.1), coef=1.0, max_scale=3.0)
    betas = ctl.per_sample_beta(torch.tensor([0.0, 1.0, 2.0, 5.0]))
    torch.testing.assert_close(betas, torch.tensor([0.1, 0.15, 0.2, 0.3]))
    # no disagreement anywhere → plain β
    torch.testing.assert_close(ctl.per_sample_beta(torch.zeros(3)), torch.full((3,), 0.1))


def test_uncertainty_controller_follows_adaptive_base_and_resumes():
    ctl = UncertaintyKLController(AdaptiveKLController(0.1, target=6.0, horizon=10000), coef=0.5, max_scale=2.0)
    ctl.update(9.0, 256)
    assert ctl.value == pytest.approx(0.100512)
    # std [1, 3], mean 2 → rel [0.5, 1.5] → β(1 + 0.5·rel) = β·[1.25, 1.75]
    torch.testing.assert_close(ctl.per_sample_beta(torch.tensor([1.0, 3.0])), 0.100512 * torch.tensor([1.25, 1.75]))
    resumed = UncertaintyKLController(AdaptiveKLController(1.0, 1.0, 1.0))
    resumed.load_state_dict(ctl.state_dict())
    assert (resumed.value, resumed.coef, resumed.max_scale) == (ctl.value, 0.5, 2.0)
