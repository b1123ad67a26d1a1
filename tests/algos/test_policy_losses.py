"""GSPO and CISPO (algos/policy_losses.py) on small examples worked out by hand, and the POLICY_LOSSES registry."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.algos import (
    POLICY_LOSSES,
    cispo_policy_loss,
    gspo_policy_loss,
    ppo_policy_loss,
    sequence_log_ratio,
    vanilla_policy_loss,
)


def test_registry_names_every_policy_loss():
    assert POLICY_LOSSES == {"ppo_clip": ppo_policy_loss, "vanilla": vanilla_policy_loss,
                             "gspo": gspo_policy_loss, "cispo": cispo_policy_loss}


# ---------------------------------------------------------------- GSPO

def gspo_inputs():
    # row 0: log-ratios [0.1, 0.2, 0.3], all valid          → mean 0.2  → s0 = e^0.2  = 1.221403
    # row 1: log-ratios [−0.1, −0.3, (99, masked)]          → mean −0.2 → s1 = e^−0.2 = 0.818731
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.1, 0.2, 0.3], [-0.1, -0.3, 99.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return logp, old, mask


def test_gspo_sequence_ratio_inside_the_clip_range_hand_example():
    logp, old, mask = gspo_inputs()
    torch.testing.assert_close(sequence_log_ratio(logp, old, mask), torch.tensor([0.2, -0.2]))
    # A = +1 on row 0, −2 on row 1; ε = 0.25, ε_high = 0.3 → range [0.75, 1.3]: both ratios inside
    #   row 0: max(−1·1.221403, −1·1.221403) = −1.221403       row 1: −(−2)·0.818731 = 1.637462
    #   seq_mean_token_mean = (−1.221403 + 1.637462) / 2 = 0.208030
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    loss, stats = gspo_policy_loss(logp, old, adv, mask, clip_eps=0.25, clip_eps_high=0.3)
    assert float(loss.detach()) == pytest.approx(0.208030, abs=1e-6)
    # gradient of the sequence form: ∂/∂logp_i,t [½ · (−A_i s_i)] = ½ · (−A_i) · s_i · (1/|y_i|)
    #   row 0: ½ · (−1) · 1.221403 / 3 = −0.203567      row 1: ½ · 2 · 0.818731 / 2 = 0.409365; masked token 0
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.203567] * 3, [0.409365, 0.409365, 0.0]]),
                               atol=1e-6, rtol=0)
    assert float(stats["policy/clipfrac_avg"]) == 0.0
    assert float(stats["policy/ratio_avg"]) == pytest.approx((1.221403 + 0.818731) / 2, abs=1e-6)


def test_gspo_clips_whole_sequences_with_the_paper_range():
    # the paper's ε = 3e-4, ε_high = 4e-4 → range [0.9997, 1.0004]
    logp, old, mask = gspo_inputs()
    logp = torch.cat([logp.detach(), logp.detach()[:1]]).requires_grad_()  # row 2 = row 0 again (s = 1.221403)
    old, mask = torch.zeros(3, 3), torch.cat([mask, mask[:1]])
    adv = torch.tensor([[1.0] * 3, [-2.0] * 3, [-1.0] * 3])
    loss, stats = gspo_policy_loss(logp, old, adv, mask)  # the defaults are the paper's
    # row 0 (A = +1, s = 1.221403): max(−1.221403, −1.0004) = −1.0004      clipped: no gradient
    # row 1 (A = −2, s = 0.818731): max(1.637462, 2·0.9997 = 1.9994) = 1.9994   clipped: no gradient
    # row 2 (A = −1, s = 1.221403): max(1.221403, 1.0004) = 1.221403        NOT clipped (pessimistic side)
    # mean over the three responses: (−1.0004 + 1.9994 + 1.221403) / 3 = 0.740134
    assert float(loss.detach()) == pytest.approx(0.740134, abs=1e-6)
    loss.backward()
    # only row 2 moves: ⅓ · (+1) · 1.221403 / 3 = 0.135711 per token
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0] * 3, [0.0] * 3, [0.135711] * 3]), atol=1e-6, rtol=0)
    assert float(stats["policy/clipfrac_avg"]) == pytest.approx(2 / 3)


def test_gspo_ratio_is_per_sequence_not_per_token():
    # token log-ratios [+0.5, −0.5] are far outside [0.9997, 1.0004] token by token (e^±0.5 = 1.65 / 0.61),
    # but their mean is 0: s = 1, so nothing is clipped and both tokens get −A·s/|y| = −1·1/2 = −0.5
    logp = torch.tensor([[0.5, -0.5]], requires_grad=True)
    loss, stats = gspo_policy_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(-1.0) and float(stats["policy/clipfrac_avg"]) == 0.0
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, -0.5]]))
    # ppo_clip on the same tokens clips the first one (ratio 1.65 > 1.2 with A > 0): only the second moves
    logp2 = torch.tensor([[0.5, -0.5]], requires_grad=True)
    ppo_policy_loss(logp2, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))[0].backward()
    assert logp2.grad[0, 0] == 0.0 and logp2.grad[0, 1] != 0.0


# ---------------------------------------------------------------- CISPO

def test_cispo_hand_example_keeps_the_gradient_of_clipped_tokens():
    # logp = [−1, −2], old = [−1.5, −1] → log-ratios [0.5, −1] → ρ = [1.648721, 0.367879]; A = 2 on both
    # ε_low = 0.2, ε_high = 0.28 → ŵ = clip(ρ, 0.8, 1.28) = [1.28, 0.8]   (both clipped)
    #   ℓ = −ŵ·A·logp = [−1.28·2·(−1), −0.8·2·(−2)] = [2.56, 3.2]      token_mean = 2.88
    #   ∂ℓ/∂logp = −ŵ·A / 2 tokens = [−1.28, −0.8]
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old, adv, mask = torch.tensor([[-1.5, -1.0]]), torch.tensor([[2.0, 2.0]]), torch.ones(1, 2)
    loss, stats = cispo_policy_loss(logp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28)
    assert float(loss.detach()) == pytest.approx(2.88)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.28, -0.8]]))
    assert float(stats["policy/clipfrac_avg"]) == 1.0
    assert float(stats["policy/ratio_avg"]) == pytest.approx((math.exp(0.5) + math.exp(-1.0)) / 2)
    # PPO's clip on the same tokens: token 0 (ρ = 1.65 > 1.28, A > 0) gets NO gradient; CISPO keeps it
    logp2 = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ppo_policy_loss(logp2, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28)[0].backward()
    assert logp2.grad[0, 0] == 0.0


def test_cispo_without_a_lower_bound_and_on_policy():
    # clip_eps = 1 (the default): the lower bound is 0, so ρ = 0.367879 stays: ∂/∂logp_1 = −0.367879·2/2
    # the upper bound 1 + 3 = 4 leaves ρ = 1.648721: ∂/∂logp_0 = −1.648721·2/2
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    cispo_policy_loss(logp, torch.tensor([[-1.5, -1.0]]), torch.full((1, 2), 2.0), torch.ones(1, 2))[0].backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-math.exp(0.5), -math.exp(-1.0)]]))
    # on-policy (ρ = 1): the gradient is REINFORCE's −A·∇logp / n, the same as the vanilla loss
    a = torch.tensor([[-0.7, -1.2, -0.4]], requires_grad=True)
    b = a.detach().clone().requires_grad_()
    adv, mask = torch.tensor([[1.0, -2.0, 0.5]]), torch.ones(1, 3)
    cispo_policy_loss(a, a.detach(), adv, mask)[0].backward()
    vanilla_policy_loss(b, b.detach(), adv, mask)[0].backward()
    torch.testing.assert_close(a.grad, b.grad)  # −A/3 = [−0.3333, 0.6667, −0.1667]
    torch.testing.assert_close(a.grad, torch.tensor([[-1 / 3, 2 / 3, -0.5 / 3]]))
