"""Policy losses beyond PPO's token clip (GSPO, CISPO), and ``POLICY_LOSSES``: every policy loss by name.

Same signature and shapes as ``ppo.py``: ``(logp, old_logp, advantages, mask, *, clip_eps, clip_eps_high, agg,
max_len) -> (loss, stats)`` with ``[B, T]`` tensors over the response tokens, ``clip_eps_high=None`` meaning
``clip_eps``. ``stats`` are detached 0-d tensors under TRL's names. Formulas and papers: docs/algorithms.md.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .masked import masked_mean
from .ppo import PolicyLoss, aggregate_loss, ppo_policy_loss, vanilla_policy_loss

__all__ = ["POLICY_LOSSES", "cispo_policy_loss", "gspo_policy_loss", "sequence_log_ratio"]


def sequence_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """``[B]``: ``(1/|y_i|) Σ_t (logp − old_logp)`` over the valid tokens of each row (0 for a row without any)."""
    return masked_mean(logp - old_logp, mask, dim=-1)


def gspo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 3e-4,
    clip_eps_high: float | None = 4e-4,
    agg: str = "seq_mean_token_mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071), in its GSPO-token form
    (§4.3):

        s_i    = exp( (1/|y_i|) Σ_t (logp_t − old_logp_t) )        one length-normalised ratio per response
        s_i,t  = sg[s_i] · π(y_t) / sg[π(y_t)]                     value s_i, gradient s_i · ∇logp_t
        ℓ_i,t  = max(−A_i,t · s_i,t,  −A_i,t · clip(s_i,t, 1 − ε, 1 + ε_high))

    With one advantage per response (GRPO's ``A_i`` on every token) and ``agg="seq_mean_token_mean"`` this is
    exactly the sequence objective ``−(1/G) Σ_i min(s_i A_i, clip(s_i) A_i)`` (§4.1), value and gradient:
    ``∇s_i = s_i · (1/|y_i|) Σ_t ∇logp_t`` is what the per-token terms add up to. The clip decision is one per
    response. The paper's ranges are tiny because ``s_i`` is a geometric mean: ε = 3e-4, ε_high = 4e-4 (§5.1).
    Stats: ``policy/clipfrac_avg`` = share of responses (with a valid token) whose clipped term is the larger;
    ``policy/ratio_avg`` = mean ``s_i`` over those responses; ``policy/approxkl_avg`` = ``½ mean (logp −
    old_logp)²`` over tokens, as ``ppo_clip``.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    seq_log_ratio = sequence_log_ratio(logp, old_logp, mask)
    token_log_ratio = seq_log_ratio.detach().unsqueeze(-1) + logp - logp.detach()
    ratio = torch.exp(token_log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    loss = aggregate_loss(torch.maximum(unclipped, clipped), mask, agg, max_len)
    with torch.no_grad():
        has_tokens = torch.broadcast_to(mask.bool(), logp.shape).any(dim=-1)
        clipped_rows = masked_mean((clipped > unclipped).float(), mask, dim=-1) > 0.5
        stats = {
            "loss/policy_avg": loss.detach(),
            "policy/clipfrac_avg": masked_mean(clipped_rows.float(), has_tokens),
            "policy/approxkl_avg": 0.5 * masked_mean((logp - old_logp).square(), mask),
            "policy/ratio_avg": masked_mean(torch.exp(seq_log_ratio), has_tokens),
        }
    return loss, stats


def cispo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 1.0,
    clip_eps_high: float | None = 3.0,
    agg: str = "token_mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention",
    arXiv 2506.13585, §3.1): clip the importance weight, not the update.

        ρ_t = exp(logp_t − old_logp_t)
        ŵ_t = clip(ρ_t, 1 − ε_low, 1 + ε_high)
        ℓ_t = −sg(ŵ_t) · A_t · logp_t                 gradient −ŵ_t · A_t · ∇logp_t

    Unlike ``ppo_clip`` no token ever loses its gradient; the clip only bounds the weight. The paper sets no
    lower bound and tunes only ε_high: ``clip_eps ≥ 1`` puts the lower bound at 0, i.e. none (the default);
    ``clip_eps_high`` defaults to 3 (weights capped at 4, Tinker's CISPO default; MiniMax-M1 does not publish
    its value). The paper aggregates per token over the batch (``token_mean``). The loss VALUE is
    ``−ŵ·A·logp``, not comparable to the surrogate's; its gradient is what matters. Stats:
    ``policy/clipfrac_avg`` = share of valid tokens whose weight was clipped; ``policy/approxkl_avg``,
    ``policy/ratio_avg`` as ``ppo_clip``.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = logp - old_logp
    with torch.no_grad():
        ratio = torch.exp(log_ratio)
        weight = torch.clamp(ratio, min=max(1.0 - clip_eps, 0.0), max=1.0 + high)
    loss = aggregate_loss(-weight * advantages * logp, mask, agg, max_len)
    with torch.no_grad():
        stats = {
            "loss/policy_avg": loss.detach(),
            "policy/clipfrac_avg": masked_mean((weight != ratio).float(), mask),
            "policy/approxkl_avg": 0.5 * masked_mean(log_ratio.square(), mask),
            "policy/ratio_avg": masked_mean(ratio, mask),
        }
    return loss, stats


POLICY_LOSSES: dict[str, PolicyLoss] = {
    "ppo_clip": ppo_policy_loss,
    "vanilla": vanilla_policy_loss,
    "gspo": gspo_policy_loss,
    "cispo": cispo_policy_loss,
}
