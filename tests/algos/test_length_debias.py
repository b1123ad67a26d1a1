"""ODIN's loss terms (Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in RLHF", Sec. 4) by hand."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.algos import head_orthogonality_loss, odin_length_loss, pearson_correlation

X = [1.0, 2.0, 3.0, 4.0]  # centred: (−1.5, −0.5, 0.5, 1.5), squared norm 5


def test_pearson_by_hand():
    # y = (1, 3, 2, 4), centred (−1.5, 0.5, −0.5, 1.5): Σ x̃ỹ = 2.25 − 0.25 − 0.25 + 2.25 = 4; ρ = 4 / (√5 √5) = 0.8
    assert pearson_correlation(torch.tensor(X), torch.tensor([1.0, 3.0, 2.0, 4.0])).item() == pytest.approx(0.8)
    assert pearson_correlation(torch.tensor(X), torch.tensor([3.0, 5.0, 7.0, 9.0])).item() == pytest.approx(1.0)
    assert pearson_correlation(torch.tensor(X), torch.tensor([9.0, 7.0, 5.0, 3.0])).item() == pytest.approx(-1.0)


def test_pearson_gradient_by_hand():
    # ∂ρ/∂x_i = ỹ_i / (‖x̃‖‖ỹ‖) − ρ x̃_i / ‖x̃‖² = ỹ_i / 5 − 0.8 x̃_i / 5
    # i=0: −0.3 + 0.24 = −0.06; i=1: 0.1 + 0.08 = 0.18; i=2: −0.18; i=3: 0.06
    x = torch.tensor(X, requires_grad=True)
    pearson_correlation(x, torch.tensor([1.0, 3.0, 2.0, 4.0])).backward()
    assert x.grad.tolist() == pytest.approx([-0.06, 0.18, -0.18, 0.06], abs=1e-6)


def test_pearson_of_a_constant_is_zero_with_zero_gradient():
    x = torch.tensor([5.0, 5.0, 5.0], requires_grad=True)
    value = pearson_correlation(x, torch.tensor([1.0, 2.0, 4.0]))
    value.backward()
    assert value.item() == 0.0 and x.grad.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="1-D tensors of one shape"):
        pearson_correlation(torch.zeros(3), torch.zeros(4))


def test_odin_length_loss_by_hand():
    lengths = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # the length head is 2·len + 1 (ρ = 1 → 0); the quality head (4, 2, 3, 1) has ρ = −0.8 → |−0.8|: total 0.8
    r_length, r_quality = torch.tensor([3.0, 5.0, 7.0, 9.0]), torch.tensor([4.0, 2.0, 3.0, 1.0])
    assert odin_length_loss(r_quality, r_length, lengths).item() == pytest.approx(0.8)
    # the worst case: length head anti-correlated (1 − (−1) = 2) and quality head = length (|1| = 1): 3
    assert odin_length_loss(lengths, r_length.flip(0), lengths).item() == pytest.approx(3.0)
    # the goal: length head linear in length, quality head uncorrelated
    # ((1, −1, −1, 1) against the centred length: −1.5 + 0.5 − 0.5 + 1.5 = 0)
    assert odin_length_loss(torch.tensor([1.0, -1.0, -1.0, 1.0]), r_length, lengths).item() == pytest.approx(0.0)
    # integer token counts are accepted
    assert odin_length_loss(r_quality, r_length, torch.tensor([1, 2, 3, 4])).item() == pytest.approx(0.8)


def test_odin_length_loss_gradient_pushes_the_heads_apart():
    lengths = torch.tensor([1.0, 2.0, 3.0, 4.0])
    r_quality = torch.tensor([1.0, 3.0, 2.0, 4.0], requires_grad=True)  # ρ = 0.8 with length
    r_length = torch.tensor([1.0, 3.0, 2.0, 4.0], requires_grad=True)
    odin_length_loss(r_quality, r_length, lengths).backward()
    # ρ = 0.8 > 0, so ∂|ρ_Q|/∂r_Q = ∂ρ/∂x with x = r_Q: x̃ = (−1.5, 0.5, −0.5, 1.5), ỹ = centred length
    # (−1.5, −0.5, 0.5, 1.5):
    # ỹ_i / 5 − 0.8 x̃_i / 5 = (−0.3 + 0.24, −0.1 − 0.08, 0.1 + 0.08, 0.3 − 0.24) = (−0.06, −0.18, 0.18, 0.06);
    # the length head's term is 1 − ρ_L: the same values with the opposite sign, so the two heads are pushed apart
    assert r_quality.grad.tolist() == pytest.approx([-0.06, -0.18, 0.18, 0.06], abs=1e-6)
    assert r_length.grad.tolist() == pytest.approx([0.06, 0.18, -0.18, -0.06], abs=1e-6)


def test_head_orthogonality_by_hand():
    assert head_orthogonality_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])).item() == 0.0
    # cos 45° = 1/√2, whatever the norms
    assert head_orthogonality_loss(torch.tensor([1.0, 1.0]), torch.tensor([3.0, 0.0])).item() == pytest.approx(
        1 / math.sqrt(2))
    assert head_orthogonality_loss(torch.tensor([1.0, 0.0]), torch.tensor([-3.0, 0.0])).item() == pytest.approx(1.0)
    assert head_orthogonality_loss(torch.zeros(2), torch.tensor([1.0, 0.0])).item() == 0.0  # no NaN
    with pytest.raises(ValueError, match="1-D weight vectors"):
        head_orthogonality_loss(torch.zeros(2), torch.zeros(3))
