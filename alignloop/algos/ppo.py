"""PPO-family losses on per-token log-probs, and how per-token losses are averaged.

Shapes: ``logp``, ``old_logp``, ``advantages``, ``mask`` are ``[B, T]`` over
response tokens; ``mask`` marks the valid ones. Every loss returns
``(loss, stats)`` where ``stats`` holds detached 0-d tensors named as in TRL
(``policy/clipfrac_avg`` …) so the trainer logs them unchanged.

A policy loss is one function ``(logp, old_logp, advantages, mask, *,
clip_eps, clip_eps_high, agg, max_len) -> (loss, stats)``; ``POLICY_LOSSES`` (policy_losses.py) names them all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .masked import masked_mean, masked_sum

__all__ = [
    "AGGREGATIONS",
    "aggregate_loss",
    "PolicyLoss",
    "ppo_policy_loss",
    "vanilla_policy_loss",
    "value_loss",
    "entropy_bonus",
]

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")


def aggregate_loss(per_token: Tensor, mask: Tensor, mode: str = "token_mean", max_len: int | None = None) -> Tensor:
    """Reduce a ``[B, T]`` per-token loss to a scalar.

    - ``token_mean``: ``Σ_{b,t} m·x / Σ_{b,t} m`` — every valid token in the
      batch weighs the same (PPO in TRL, DAPO).
    - ``seq_mean_token_mean``: ``mean_b [Σ_t m·x / Σ_t m]`` — every sequence
      weighs the same (original GRPO); rows without valid tokens are left out.
    - ``seq_mean_token_sum``: ``(1/B) Σ_b Σ_t m·x / max_len`` — a CONSTANT
      normaliser (Dr. GRPO, Liu et al. 2025), so long answers are not
      down-weighted per token; ``max_len`` defaults to T, pass the generation
      limit to keep it constant across batches.
    """
    if mode == "token_mean":
        return masked_mean(per_token, mask)
    if mode == "seq_mean_token_mean":
        per_seq = masked_mean(per_token, mask, dim=-1)
        has_tokens = torch.broadcast_to(mask.bool(), per_token.shape).any(dim=-1)
        return masked_mean(per_seq, has_tokens)
    if mode == "seq_mean_token_sum":
        normaliser = max_len if max_len is not None else per_token.shape[-1]
        if normaliser < 1:
            raise ValueError(f"max_len must be >= 1, got {normaliser}")
        return masked_sum(per_token, mask, dim=-1).sum() / (per_token.shape[0] * normaliser)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {list(AGGREGATIONS)}")


PolicyLoss = Callable[..., tuple[Tensor, dict[str, Tensor]]]


def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    agg: str = "token_mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate (Schulman et al. 2017), per token:

        ρ = exp(logp − old_logp)
        ℓ = max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε_high))

    ``clip_eps_high`` (DAPO's clip-higher, Yu et al. 2025) defaults to ε.
    Stats: ``policy/clipfrac_avg`` = fraction of valid tokens where the
    clipped term is the larger one; ``policy/approxkl_avg`` =
    ``½ mean (logp − old_logp)²``; ``policy/ratio_avg`` = mean ρ.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    loss = aggregate_loss(per_token, mask, agg, max_len)
    with torch.no_grad():
        stats = {
            "loss/policy_avg": loss.detach(),
            "policy/clipfrac_avg": masked_mean((clipped > unclipped).float(), mask),
            "policy/approxkl_avg": 0.5 * masked_mean(log_ratio.square(), mask),
            "policy/ratio_avg": masked_mean(ratio, mask),
        }
    return loss, stats


def vanilla_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    agg: str = "token_mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Unclipped policy gradient ``ℓ = −A·ρ`` with ρ = exp(logp − old_logp).

    At ρ = 1 (one update per batch, as in REINFORCE/RLOO) its gradient is
    ``−A ∇logp``. The clip arguments are unused.
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    loss = aggregate_loss(-advantages * ratio, mask, agg, max_len)
    with torch.no_grad():
        stats = {
            "loss/policy_avg": loss.detach(),
            "policy/approxkl_avg": 0.5 * masked_mean(log_ratio.square(), mask),
            "policy/ratio_avg": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range_value: float | None = 0.2,
    agg: str = "token_mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss (OpenAI baselines PPO2, TRL):

        V_clip = old_V + clip(V − old_V, −c, c)
        loss   = ½ · agg( max((V − R)², (V_clip − R)²) )

    The ½ makes the gradient ``(V − R)``, matching TRL so ``vf_coef`` transfers.
    ``clip_range_value=None`` disables clipping. Stats: ``loss/value_avg``,
    ``val/clipfrac_avg`` (share of tokens where the clipped error is larger).
    """
    unclipped = (values - returns).square()
    if clip_range_value is None:
        clipped = unclipped
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
        clipped = (v_clipped - returns).square()
    loss = 0.5 * aggregate_loss(torch.maximum(unclipped, clipped), mask, agg, max_len)
    with torch.no_grad():
        stats = {
            "loss/value_avg": loss.detach(),
            "val/clipfrac_avg": masked_mean((clipped > unclipped).float(), mask),
        }
    return loss, stats


def entropy_bonus(
    entropy: Tensor, mask: Tensor, coef: float, agg: str = "token_mean", max_len: int | None = None
) -> Tensor:
    """Loss term ``−coef · agg(H)`` to ADD to the total loss, so minimising it raises entropy."""
    return -coef * aggregate_loss(entropy, mask, agg, max_len)
