"""ODIN's loss terms (Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in RLHF", Sec. 4) and the
least-squares length residual, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.algos import head_orthogonality_loss, odin_length_loss, pearson_correlation
from alignloop.algos import length_coefficients, length_features, length_residual, regression_sums

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


def test_length_residual_by_hand():
    # score = length + 2·cut exactly: lengths 1, 2, 3, 3 (the last cut), scores 1, 2, 3, 5
    lengths, finished = torch.tensor([1, 2, 3, 3]), torch.tensor([True, True, True, False])
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0])
    x = length_features(lengths, finished)
    assert x.tolist() == [[1, 0], [2, 0], [3, 0], [3, 1]]
    # sums: n 4, Σx (9, 1), Σy 11, Σxxᵀ ((23, 3), (3, 1)), Σxy (1 + 4 + 9 + 15 = 29, 5)
    sums = regression_sums(x, scores)
    assert sums.tolist() == [4, 9, 1, 11, 23, 3, 3, 1, 29, 5]
    slopes, mean_x = length_coefficients(sums, 2, ridge=0.0)
    assert slopes.tolist() == pytest.approx([1.0, 2.0]) and mean_x.tolist() == [2.25, 0.25]
    # 1 − 1·(1 − 2.25) − 2·(0 − 0.25) = 2.75, and so on: every answer the mean score 11/4
    assert length_residual(scores, x, slopes, mean_x).tolist() == pytest.approx([2.75] * 4)
    # the ridge shrinks each slope by its share of that feature's variance (length alone: 2/1.1 with ridge 0.1)
    alone = regression_sums(length_features(torch.tensor([1, 2, 3, 4]), torch.ones(4, dtype=torch.bool)),
                            torch.tensor([2.0, 4.0, 6.0, 8.0]))
    assert length_coefficients(alone, 2, ridge=0.1)[0].tolist() == pytest.approx([2.0 / 1.1, 0.0])


def test_length_coefficients_match_least_squares_and_add_over_batches():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 33, (40,), generator=gen)
    finished = torch.rand(40, generator=gen) > 0.4
    scores = torch.randn(40, generator=gen) + 0.05 * lengths
    x = length_features(lengths, finished)
    design = torch.cat([torch.ones(40, 1, dtype=torch.float64), x], dim=1)  # an independent solve, intercept included
    expected = torch.linalg.lstsq(design, scores.double().unsqueeze(1)).solution.squeeze(1)[1:]
    whole = regression_sums(x, scores)
    assert length_coefficients(whole, 2, ridge=0.0)[0] == pytest.approx(expected, abs=1e-9)
    parts = regression_sums(x[:15], scores[:15]) + regression_sums(x[15:], scores[15:])
    assert torch.allclose(parts, whole)
    # a feature that never varies (every answer cut) gets slope 0, not a singular solve
    all_cut = regression_sums(length_features(lengths, torch.zeros(40, dtype=torch.bool)), scores)
    slopes, _ = length_coefficients(all_cut, 2)
    assert torch.isfinite(slopes).all() and slopes[1] == 0.0
