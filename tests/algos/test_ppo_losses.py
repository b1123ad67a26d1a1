"""Advantage estimators, loss aggregation, PPO policy / value losses."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.algos import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    aggregate_loss,
    entropy_bonus,
    gae,
    ppo_policy_loss,
    value_loss,
    whiten_advantages,
)

# ---------------------------------------------------------------- GAE


def test_gae_hand_example_variable_lengths_and_holes():
    # γ = 0.9, λ = 0.5 (γλ = 0.45). Row 0, all valid: rewards [0, 0, 1], values [0.5, 0.4, 0.3]
    #   δ2 = 1 + 0.9·0 − 0.3 = 0.7            A2 = 0.7
    #   δ1 = 0 + 0.9·0.3 − 0.4 = −0.13        A1 = −0.13 + 0.45·0.7 = 0.185
    #   δ0 = 0 + 0.9·0.4 − 0.5 = −0.14        A0 = −0.14 + 0.45·0.185 = −0.05675
    #   returns = A + V = [0.44325, 0.585, 1.0]
    # Row 1, last position padded (reward 99, value 77 must be ignored; bootstrap is 0):
    #   rewards [0, 1], values [0.4, 0.3] → A = [0.185, 0.7], returns [0.585, 1.0], pad → 0
    # Row 2, a masked hole in the middle is transparent: same as row 1 → A = [0.185, 0, 0.7]
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 99.0], [0.0, 55.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [0.4, 0.3, 77.0], [0.4, 66.0, 0.3]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1]])
    adv, ret = gae(rewards, mask, values=values, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[-0.05675, 0.185, 0.7], [0.185, 0.7, 0.0], [0.185, 0.0, 0.7]]))
    torch.testing.assert_close(ret, torch.tensor([[0.44325, 0.585, 1.0], [0.585, 1.0, 0.0], [0.585, 0.0, 1.0]]))


def naive_gae(rewards, values, mask, gamma, lam):
    """Python loop over each row's list of valid positions."""
    adv = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[b, t]]
        running, next_v = 0.0, 0.0
        for t in reversed(idx):
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            running = delta + gamma * lam * running
            adv[b, t] = running
            next_v = values[b, t].item()
    return adv


def test_gae_matches_python_loop():
    torch.manual_seed(0)
    rewards, values = torch.randn(5, 9, dtype=torch.float64), torch.randn(5, 9, dtype=torch.float64)
    mask = torch.rand(5, 9) > 0.3
    adv, ret = gae(rewards, mask, values=values, gamma=0.95, lam=0.9)
    expected = naive_gae(rewards, values, mask, 0.95, 0.9)
    torch.testing.assert_close(adv.double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ret.double(), torch.where(mask, expected + values, 0.0), atol=1e-5, rtol=0)


def test_gae_needs_values():
    with pytest.raises(ValueError, match="gae needs values"):
        gae(torch.zeros(1, 2), torch.ones(1, 2))


def test_reinforce_returns_to_go_hand_example():
    # rewards [1, 0, 2], γ = 0.5: G2 = 2; G1 = 0 + 0.5·2 = 1; G0 = 1 + 0.5·1 = 1.5
    adv, ret = ADVANTAGE_ESTIMATORS["reinforce"](torch.tensor([[1.0, 0.0, 2.0]]), torch.ones(1, 3), gamma=0.5)
    assert adv.tolist() == [[1.5, 1.0, 2.0]]
    assert ret.tolist() == [[1.5, 1.0, 2.0]]


def test_group_estimators_on_tokens_hand_example():
    # sequence scores = Σ valid rewards: row 0: 0+0+1 = 1; row 1: 0+3 = 3 (the padded 5 is ignored);
    # rows 2, 3: 2 and 2. Groups of 2: (1, 3), (2, 2)
    # Dr. GRPO: r − mean → −1, +1, 0, 0;  RLOO: r_i − r_other → −2, +2, 0, 0;  on valid tokens only
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 3.0, 5.0], [2.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    adv, ret = ADVANTAGE_ESTIMATORS["grpo"](rewards, mask, group_size=2, scale_by_std=False)
    assert adv.tolist() == [[-1.0, -1.0, -1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert ret.tolist() == [[1.0, 1.0, 1.0], [3.0, 3.0, 0.0], [2.0, 0.0, 0.0], [2.0, 2.0, 2.0]]
    adv, _ = ADVANTAGE_ESTIMATORS["rloo"](rewards, mask, group_size=2)
    assert adv.tolist() == [[-2.0, -2.0, -2.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    # GRPO with std: group (1, 3) has unbiased std √2 → ±1/√2 = ±0.707107
    adv, _ = ADVANTAGE_ESTIMATORS["grpo"](rewards, mask, group_size=2)
    assert adv[0, 0].item() == pytest.approx(-1 / math.sqrt(2), abs=1e-5)
    with pytest.raises(ValueError, match="grpo needs group_size"):
        ADVANTAGE_ESTIMATORS["grpo"](rewards, mask)


def test_whiten_advantages_ignores_padding():
    # valid [1, 3] (pad 100 ignored): mean 2, unbiased var 2 → ±1/√2; pad → 0
    out = whiten_advantages(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(out, torch.tensor([[-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0]]))


# ---------------------------------------------------------------- aggregation


def test_aggregate_loss_hand_example():
    # x = [[1, 2, 3], [4, 5, 6]], mask = [[1, 1, 1], [1, 0, 0]]
    # token_mean: (1+2+3+4)/4 = 2.5
    # seq_mean_token_mean: mean(6/3, 4/1) = 3
    # seq_mean_token_sum: (6 + 4)/(2 rows · T=3) = 1.666667; with max_len 5: 10/10 = 1
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate_loss(x, m, "token_mean").item() == pytest.approx(2.5)
    assert aggregate_loss(x, m, "seq_mean_token_mean").item() == pytest.approx(3.0)
    assert aggregate_loss(x, m, "seq_mean_token_sum").item() == pytest.approx(10 / 6)
    assert aggregate_loss(x, m, "seq_mean_token_sum", max_len=5).item() == pytest.approx(1.0)
    # a row with no valid token is left out of seq_mean_token_mean: mean(6/3) = 2
    assert aggregate_loss(x, torch.tensor([[1, 1, 1], [0, 0, 0]]), "seq_mean_token_mean").item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        aggregate_loss(x, m, "mean")


# ---------------------------------------------------------------- policy and value losses

# ratios [1.5, 0.5, 1.1, 0.7], advantages [1, 1, −1, −1], ε = 0.2
#   t0: −A·ρ = −1.5, −A·clip = −1.2 → max −1.2 (clipped)
#   t1: −0.5 vs −0.8 → −0.5
#   t2:  1.1 vs  1.1 → 1.1
#   t3:  0.7 vs  0.8 → 0.8 (clipped)
#   loss = (−1.2 − 0.5 + 1.1 + 0.8)/4 = 0.05, clipfrac 2/4
#   approxkl = ½ · (ln²1.5 + ln²0.5 + ln²1.1 + ln²0.7)/4
#            = ½ · (0.164402 + 0.480453 + 0.009085 + 0.127217)/4 = 0.097645
RATIOS = [1.5, 0.5, 1.1, 0.7]
ADV = torch.tensor([[1.0, 1.0, -1.0, -1.0]])


def _logps():
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    logp = (old + torch.log(torch.tensor([RATIOS]))).requires_grad_()
    return logp, old


def test_ppo_policy_loss_hand_example():
    logp, old = _logps()
    loss, stats = ppo_policy_loss(logp, old, ADV, torch.ones(1, 4), clip_eps=0.2)
    assert loss.item() == pytest.approx(0.05, abs=1e-6)
    assert stats["policy/clipfrac_avg"].item() == pytest.approx(0.5)
    approxkl = 0.5 * sum(math.log(r) ** 2 for r in RATIOS) / 4
    assert stats["policy/approxkl_avg"].item() == pytest.approx(approxkl, rel=1e-5)
    assert approxkl == pytest.approx(0.097645, abs=1e-6)
    assert stats["policy/ratio_avg"].item() == pytest.approx(0.95)
    # gradient: clipped tokens get none; others −A·ρ/4 → t1: −0.5/4 = −0.125, t2: +1.1/4 = 0.275
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.125, 0.275, 0.0]]))


def test_ppo_clip_higher_and_mask():
    logp, old = _logps()
    # ε_high = 0.6: t0 no longer clipped (−1.5 vs −1.6 → −1.5): (−1.5 − 0.5 + 1.1 + 0.8)/4 = −0.025
    loss, stats = ppo_policy_loss(logp, old, ADV, torch.ones(1, 4), clip_eps=0.2, clip_eps_high=0.6)
    assert loss.item() == pytest.approx(-0.025, abs=1e-6)
    assert stats["policy/clipfrac_avg"].item() == pytest.approx(0.25)
    # masking t3 out: (−1.2 − 0.5 + 1.1)/3 = −0.2
    loss, _ = ppo_policy_loss(logp, old, ADV, torch.tensor([[1, 1, 1, 0]]), clip_eps=0.2)
    assert loss.item() == pytest.approx(-0.2, abs=1e-6)


def test_vanilla_policy_loss_hand_example():
    # mean(−A·ρ) = (−1.5 − 0.5 + 1.1 + 0.7)/4 = −0.05
    logp, old = _logps()
    loss, _ = POLICY_LOSSES["vanilla"](logp, old, ADV, torch.ones(1, 4))
    assert loss.item() == pytest.approx(-0.05, abs=1e-6)
    assert POLICY_LOSSES["ppo_clip"] is ppo_policy_loss


def test_value_loss_hand_example():
    # values [1, 2], old [0.5, 2], returns [2, 1], c = 0.2
    #   t0: V_clip = 0.5 + clip(0.5, ±0.2) = 0.7; (1−2)² = 1 vs (0.7−2)² = 1.69 → 1.69 (clipped)
    #   t1: V_clip = 2; (2−1)² = 1 both → 1
    #   loss = ½ · (1.69 + 1)/2 = 0.6725; clipfrac 1/2; without clipping ½ · (1 + 1)/2 = 0.5
    values, old, returns = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 2.0]]), torch.tensor([[2.0, 1.0]])
    loss, stats = value_loss(values, old, returns, torch.ones(1, 2), clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.6725)
    assert stats["val/clipfrac_avg"].item() == pytest.approx(0.5)
    loss, _ = value_loss(values, old, returns, torch.ones(1, 2), clip_range_value=None)
    assert loss.item() == pytest.approx(0.5)


def test_entropy_bonus_hand_example():
    # valid entropies 1, 2, 3 → token mean 2 → −0.01 · 2 = −0.02
    bonus = entropy_bonus(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1, 1], [1, 0]]), coef=0.01)
    assert bonus.item() == pytest.approx(-0.02)
