"""DPO-family losses, checked on one hand-worked example."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.algos import DPO_LOSSES, dpo_loss, dpo_metrics

# Shared example: policy chosen/rejected −10/−12, reference −11/−11
#   chosen log-ratio  = −10 − (−11) = +1
#   rejected log-ratio = −12 − (−11) = −1
#   h = 1 − (−1) = 2
PC, PR, RC, RR = (torch.tensor([v]) for v in (-10.0, -12.0, -11.0, -11.0))

NLS_1 = math.log(1 + math.exp(-1))  # −log σ(1) = 0.313262
NLS_M1 = math.log(1 + math.e)  # −log σ(−1) = 1.313262


def loss_of(loss_type, beta, **kwargs):
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type=loss_type, **kwargs)
    return losses.item()


def test_registry_names():
    assert set(DPO_LOSSES) == {"sigmoid", "robust", "ipo", "hinge", "simpo"}


def test_sigmoid_hand_example_and_rewards():
    # β = 0.5: βh = 1 → −log σ(1) = 0.313262; rewards β·(±1) = ±0.5
    losses, chosen_rewards, rejected_rewards = dpo_loss(PC, PR, RC, RR, beta=0.5)
    assert losses.item() == pytest.approx(NLS_1)
    assert chosen_rewards.item() == pytest.approx(0.5)
    assert rejected_rewards.item() == pytest.approx(-0.5)


def test_sigmoid_gradient_hand_example():
    # ∂/∂pc −log σ(βh) = −β σ(−βh) = −0.5 · σ(−1) = −0.5 · 0.268941 = −0.134471
    # ∂/∂pr is its negative
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    losses, chosen_rewards, _ = dpo_loss(pc, pr, RC, RR, beta=0.5)
    losses.sum().backward()
    sig_m1 = 1 / (1 + math.e)
    assert pc.grad.item() == pytest.approx(-0.5 * sig_m1)
    assert pr.grad.item() == pytest.approx(0.5 * sig_m1)
    assert not chosen_rewards.requires_grad


def test_cdpo_label_smoothing_hand_example():
    # ε = 0.1: 0.9 · 0.313262 + 0.1 · 1.313262 = 0.281936 + 0.131326 = 0.413262
    assert loss_of("sigmoid", 0.5, label_smoothing=0.1) == pytest.approx(0.9 * NLS_1 + 0.1 * NLS_M1)
    assert 0.9 * NLS_1 + 0.1 * NLS_M1 == pytest.approx(0.413262, abs=1e-6)


def test_robust_hand_example():
    # ε = 0.1: (0.9 · 0.313262 − 0.1 · 1.313262) / 0.8 = (0.281936 − 0.131326)/0.8 = 0.188262
    assert loss_of("robust", 0.5, label_smoothing=0.1) == pytest.approx((0.9 * NLS_1 - 0.1 * NLS_M1) / 0.8)
    assert (0.9 * NLS_1 - 0.1 * NLS_M1) / 0.8 == pytest.approx(0.188262, abs=1e-6)
    # ε = 0 reduces to plain DPO
    assert loss_of("robust", 0.5) == pytest.approx(NLS_1)


def test_ipo_hand_example():
    # β = 0.5: (h − 1/(2·0.5))² = (2 − 1)² = 1;  β = 0.25: (2 − 2)² = 0;  β = 1: (2 − 0.5)² = 2.25
    assert loss_of("ipo", 0.5) == pytest.approx(1.0)
    assert loss_of("ipo", 0.25) == pytest.approx(0.0)
    assert loss_of("ipo", 1.0) == pytest.approx(2.25)


def test_hinge_hand_example():
    # β = 0.5: max(0, 1 − 1) = 0;  β = 0.25: max(0, 1 − 0.5) = 0.5
    assert loss_of("hinge", 0.5) == pytest.approx(0.0)
    assert loss_of("hinge", 0.25) == pytest.approx(0.5)


def test_simpo_hand_example():
    # lengths 5 and 4: pc/5 = −2, pr/4 = −3 → h = 1; β = 2, γ = 1: −log σ(2·1 − 1) = 0.313262
    # rewards: β·(−2) = −4, β·(−3) = −6; the reference is ignored (None is fine)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        PC, PR, None, None, beta=2.0, loss_type="simpo", chosen_lengths=torch.tensor([5]),
        rejected_lengths=torch.tensor([4]), gamma=1.0,
    )
    assert losses.item() == pytest.approx(NLS_1)
    assert chosen_rewards.item() == pytest.approx(-4.0)
    assert rejected_rewards.item() == pytest.approx(-6.0)


def test_reference_free_sigmoid_hand_example():
    # h = pc − pr = −10 − (−12) = 2; β = 0.5 → −log σ(1) = 0.313262; rewards β·pc = −5, β·pr = −6
    losses, chosen_rewards, rejected_rewards = dpo_loss(PC, PR, None, None, beta=0.5, reference_free=True)
    assert losses.item() == pytest.approx(NLS_1)
    assert (chosen_rewards.item(), rejected_rewards.item()) == pytest.approx((-5.0, -6.0))


def test_batch_is_elementwise():
    # second example: h = 0 → every sigmoid loss is −log σ(0) = ln 2
    pc, pr = torch.tensor([-10.0, -3.0]), torch.tensor([-12.0, -3.0])
    rc, rr = torch.tensor([-11.0, -3.0]), torch.tensor([-11.0, -3.0])
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5)
    torch.testing.assert_close(losses, torch.tensor([NLS_1, math.log(2)]))


def test_dpo_metrics_hand_example():
    # chosen [0.5, −1], rejected [−0.5, 0]: means −0.25, −0.25; margins [1, −1] → 0; accuracy 1/2
    metrics = dpo_metrics(torch.tensor([0.5, -1.0]), torch.tensor([-0.5, 0.0]))
    assert metrics["rewards/chosen"].item() == pytest.approx(-0.25)
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.25)
    assert metrics["rewards/margins"].item() == pytest.approx(0.0)
    assert metrics["rewards/accuracies"].item() == pytest.approx(0.5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown DPO loss_type 'kto'"):
        dpo_loss(PC, PR, RC, RR, loss_type="kto")
    with pytest.raises(ValueError, match="needs chosen_lengths"):
        dpo_loss(PC, PR, None, None, loss_type="simpo")
    with pytest.raises(ValueError, match="reference log-probs are required"):
        dpo_loss(PC, PR, None, None)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, label_smoothing=0.5)
