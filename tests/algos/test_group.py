"""Group-relative advantages (GRPO, Dr. GRPO, RLOO) and best-of-N helpers."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.algos import (
    best_of_n_indices,
    bon_kl_bound,
    frac_zero_std,
    grpo_advantages,
    rloo_advantages,
)


def test_grpo_hand_example():
    # group 0: [1, 2, 3], mean 2, unbiased std sqrt((1 + 0 + 1)/2) = 1 → [−1, 0, 1]/(1 + 1e−6)
    # group 1: [4, 4, 4] → all equal → exactly 0
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0])
    adv = grpo_advantages(scores, group_size=3)
    expected = torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]) / torch.tensor([1 + 1e-6] * 3 + [1.0] * 3)
    torch.testing.assert_close(adv, expected)
    assert adv[3:].tolist() == [0.0, 0.0, 0.0]
    # group [0, 4]: mean 2, std sqrt((4 + 4)/1) = 2.828427 → ±2/2.828427 = ±0.707107
    pair = grpo_advantages(torch.tensor([0.0, 4.0]), 2)
    torch.testing.assert_close(pair, torch.tensor([-1.0, 1.0]) / math.sqrt(2), atol=1e-5, rtol=0)


def test_dr_grpo_does_not_scale():
    # r − mean: [1, 2, 3] → [−1, 0, 1]; [0, 10, 20] → [−10, 0, 10]
    adv = grpo_advantages(torch.tensor([1.0, 2.0, 3.0, 0.0, 10.0, 20.0]), 3, scale_by_std=False)
    assert adv.tolist() == [-1.0, 0.0, 1.0, -10.0, 0.0, 10.0]


def test_equal_rewards_give_exact_zero_never_nan():
    # for this fp32 value, torch's mean of three copies is off by one ulp (2.98e−8), so a naive
    # (r − mean)/(std + eps) gives 0.0288 for every member of a group that carries no signal
    v = 0.4900934100151062
    scores = torch.tensor([v, v, v, 0.7, 0.7, 0.7])
    groups = scores.view(2, 3)
    naive = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-6)
    assert naive[0, 0].item() != 0.0
    for adv in (grpo_advantages(scores, 3), grpo_advantages(scores, 3, scale_by_std=False), rloo_advantages(scores, 3)):
        assert adv.tolist() == [0.0] * 6
    # a group of one has no spread: 0, not NaN from the (n − 1) std
    assert grpo_advantages(torch.tensor([5.0, -2.0]), 1).tolist() == [0.0, 0.0]


def test_rloo_hand_example():
    # [1, 2, 3]: 1 − (2+3)/2 = −1.5; 2 − (1+3)/2 = 0; 3 − (1+2)/2 = 1.5
    adv = rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0]), 3)
    assert adv.tolist() == [-1.5, 0.0, 1.5, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="RLOO needs group_size >= 2"):
        rloo_advantages(torch.tensor([1.0]), 1)


def test_rloo_matches_python_loop():
    torch.manual_seed(0)
    group_size = 4
    scores = torch.randn(12, dtype=torch.float64)
    expected = []
    for g in range(3):
        group = scores[g * group_size : (g + 1) * group_size].tolist()
        for i, r in enumerate(group):
            others = [group[j] for j in range(group_size) if j != i]
            expected.append(r - sum(others) / len(others))
    expected_t = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(rloo_advantages(scores, group_size).double(), expected_t, atol=1e-6, rtol=0)


def test_frac_zero_std_and_bad_layout():
    # groups [1, 2, 3] (varied) and [4, 4, 4] (flat) → 1/2
    assert frac_zero_std(torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0]), 3).item() == 0.5
    with pytest.raises(ValueError, match="5 scores cannot be split into groups of 2"):
        grpo_advantages(torch.zeros(5), 2)


def test_bon_kl_bound_hand_values():
    # n = 1: 0; n = 2: ln 2 − 1/2 = 0.193147; n = 4: ln 4 − 3/4 = 0.636294
    assert bon_kl_bound(1) == 0.0
    assert bon_kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_kl_bound(4) == pytest.approx(0.636294, abs=1e-6)
    with pytest.raises(ValueError):
        bon_kl_bound(0)


def test_bon_kl_bound_matches_exact_kl_with_many_distinct_outcomes():
    # Base policy uniform over M outcomes with distinct rewards; best-of-n picks rank k (1 = worst) with
    # p_k = (k/M)^n − ((k−1)/M)^n, so KL = Σ p_k log(p_k · M). It stays below the bound and tends to it.
    big_m = 100_000
    k = torch.arange(1, big_m + 1, dtype=torch.float64)
    for n in (2, 4, 16):
        p = (k / big_m) ** n - ((k - 1) / big_m) ** n
        kl = (p * torch.log(p * big_m)).sum().item()
        assert kl <= bon_kl_bound(n)
        assert kl == pytest.approx(bon_kl_bound(n), abs=1e-3)


def test_best_of_n_indices_hand_example():
    # prompt 0: [0.1, 0.5, 0.2] → index 1; prompt 1: [3, 3, 1] → tie, first wins → flat index 3
    assert best_of_n_indices(torch.tensor([0.1, 0.5, 0.2, 3.0, 3.0, 1.0]), 3).tolist() == [1, 3]
