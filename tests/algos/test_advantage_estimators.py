"""Dr. GRPO, REINFORCE++ and REINFORCE++-baseline (algos/advantages.py) on examples worked out by hand."""

from __future__ import annotations

import pytest
import torch

from alignloop.algos import ADVANTAGE_ESTIMATORS, reinforce_pp_advantages, reinforce_pp_baseline_advantages


def test_registry_names():
    assert set(ADVANTAGE_ESTIMATORS) == {"gae", "reinforce", "grpo", "dr_grpo", "rloo", "reinforce_pp",
                                         "reinforce_pp_baseline"}


def test_dr_grpo_is_the_centred_score_without_std_on_every_token():
    # G = 2; scores on the last valid token: group 0 = [1, 3] (mean 2) → [−1, +1]; group 1 = [5, 5] → [0, 0]
    # rows have 2, 1, 2, 1 valid tokens; GRPO would divide group 0 by its std √2 → ±0.7071
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    rewards = torch.tensor([[0.0, 1.0], [3.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    adv, ret = ADVANTAGE_ESTIMATORS["dr_grpo"](rewards, mask, group_size=2, scale_by_std=True)  # flag ignored
    torch.testing.assert_close(adv, torch.tensor([[-1.0, -1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0], [3.0, 0.0], [5.0, 5.0], [5.0, 0.0]]))
    grpo, _ = ADVANTAGE_ESTIMATORS["grpo"](rewards, mask, group_size=2)
    assert float(grpo[0, 0]) == pytest.approx(-2**-0.5, abs=1e-5)


def test_reinforce_pp_whitens_the_per_token_return_over_the_batch():
    # row 0: rewards [−0.1, −0.2, 1.0] (KL on each token, score 1 on the last); row 1: [−0.3, 0.0, (pad 7)]
    # γ = 1 returns G_t = Σ_{k≥t} r_k: row 0 [0.7, 0.8, 1.0]; row 1 [−0.3, 0.0]
    # the five valid returns: sum 2.2, mean 0.44; deviations 0.26, 0.36, 0.56, −0.74, −0.44
    # squares 0.0676 + 0.1296 + 0.3136 + 0.5476 + 0.1936 = 1.252; unbiased var 1.252/4 = 0.313, std 0.559464
    # whitened: 0.26/0.559464 = 0.464731, 0.643473, 1.000958, −1.322695, −0.786467
    rewards = torch.tensor([[-0.1, -0.2, 1.0], [-0.3, 0.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = reinforce_pp_advantages(rewards, mask)
    torch.testing.assert_close(ret, torch.tensor([[0.7, 0.8, 1.0], [-0.3, 0.0, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[0.464731, 0.643473, 1.000958], [-1.322695, -0.786467, 0.0]]),
                               atol=1e-5, rtol=0)
    # with γ = 0.5, row 0: G_2 = 1, G_1 = −0.2 + 0.5·1 = 0.3, G_0 = −0.1 + 0.5·0.3 = 0.05
    _, ret = reinforce_pp_advantages(rewards, mask, gamma=0.5)
    torch.testing.assert_close(ret[0], torch.tensor([0.05, 0.3, 1.0]))
    # the data-parallel reducer gives the same numbers when it is the identity (one process)
    same, _ = reinforce_pp_advantages(rewards, mask, reduce=lambda xs: xs)
    torch.testing.assert_close(same, adv)


def test_reinforce_pp_baseline_subtracts_the_group_mean_then_whitens():
    # G = 2, score only on each row's last token, γ = 1 → G_i,t = r_i on every valid token
    # group 0: scores [1, 0] (mean 0.5) → row 0 +0.5 on 2 tokens, row 1 −0.5 on 1 token
    # group 1: scores [1, 1] (mean 1)   → rows 2, 3: 0 on 1 and 2 tokens
    # the six valid values [0.5, 0.5, −0.5, 0, 0, 0]: mean 0.5/6 = 0.083333
    # squared deviations 2·0.416667² + 0.583333² + 3·0.083333² = 0.347222 + 0.340278 + 0.020833 = 0.708333
    # unbiased var 0.708333/5 = 0.141667, std 0.376386
    # whitened: 0.416667/0.376386 = 1.107019; −0.583333/0.376386 = −1.549826; −0.083333/0.376386 = −0.221404
    # (the all-equal group is 0 before whitening, −0.2214 after: the batch mean is not 0 token-weighted)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    adv, ret = reinforce_pp_baseline_advantages(rewards, mask, group_size=2)
    expected = torch.tensor([[1.107019, 1.107019], [-1.549826, 0.0], [-0.221404, 0.0], [-0.221404, -0.221404]])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="needs group_size"):
        reinforce_pp_baseline_advantages(rewards, mask)


def test_reinforce_pp_baseline_uses_each_response_return_with_a_kl_in_the_reward():
    # one group of 2, rewards with a per-token KL: row 0 [−0.2, 1.0] → G = [0.8, 1.0]; row 1 [−0.4, 0.0] → [−0.4, 0]
    # b = mean of the returns at the first token = (0.8 − 0.4)/2 = 0.2
    # centred: row 0 [0.6, 0.8], row 1 [−0.6, −0.2]; mean 0.15; deviations 0.45, 0.65, −0.75, −0.35
    # squares 0.2025 + 0.4225 + 0.5625 + 0.1225 = 1.31; var 1.31/3 = 0.436667; std 0.660808
    # whitened: 0.680984, 0.983644, −1.134974, −0.529655
    rewards = torch.tensor([[-0.2, 1.0], [-0.4, 0.0]])
    adv, _ = reinforce_pp_baseline_advantages(rewards, torch.ones(2, 2), group_size=2)
    torch.testing.assert_close(adv, torch.tensor([[0.680984, 0.983644], [-1.134974, -0.529655]]), atol=1e-5, rtol=0)
