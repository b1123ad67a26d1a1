"""Off-policy correction between the sampler and the trainer: truncated importance sampling (TIS) and the gap.

The sampler (vLLM, another precision, a KV-cached decode, top-p/top-k truncation) and the trainer's forward do not
give the same log-probs for the same tokens, so a "on-policy" update is in fact off-policy. With ``logp_old`` the
trainer's log-prob of a sampled token before the update (the PPO/GRPO ratio's denominator) and ``logp_sampler``
the sampler's own log-prob of it (under the distribution it really drew from), the per-token weight is

    Δ_t = logp_old_t − logp_sampler_t
    w_t = min(exp(Δ_t), C)                  TIS, "truncate"
    w_t = exp(Δ_t) · 1[exp(Δ_t) ≤ C]       masked IS, "mask": tokens beyond C get weight 0 instead of C

applied as a DETACHED multiplier on the per-token policy-gradient loss. Source: Yao, Liu, Zhang, Wang, Gao 2025,
"Your Efficient RL Framework Secretly Brings You Off-Policy RL Training" (fengyao.notion.site/off-policy-rl);
veRL ``rollout_is`` / OpenRLHF ``enable_vllm_is_correction``. ``level="sequence"`` uses one weight per response,
``min(exp(Σ_t Δ_t), C)`` on every token: the exact importance weight of the whole response (unbiased for C = ∞,
but of higher variance); the token level corrects each token's own distribution only.

Every registered policy loss is positively homogeneous in the advantage per token (``ℓ(w·A) = w·ℓ(A)`` for
``w ≥ 0``: ppo_clip, vanilla, gspo, cispo), so multiplying the advantages by ``w`` is the same as multiplying the
per-token loss, and that is how the RL stage applies it. Shapes: ``[B, T]`` over response tokens, ``mask`` 1 on
valid tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .masked import masked_mean, masked_sum

__all__ = ["IS_LEVELS", "IS_MODES", "logprob_gap_stats", "tis_weights"]

IS_MODES = ("truncate", "mask")
IS_LEVELS = ("token", "sequence")


def tis_weights(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cap: float, *, mode: str = "truncate",
                level: str = "token") -> Tensor:
    """``[B, T]`` detached importance weights (0 on invalid tokens); see the module docstring for the formula.

    ``cap`` is C (> 0; ``float("inf")`` for plain, untruncated IS). ``mode``: ``truncate`` (TIS, weight
    ``min(ρ, C)``) or ``mask`` (masked IS, weight ``ρ`` where ``ρ ≤ C`` else 0). ``level``: ``token`` (ρ per
    token) or ``sequence`` (ρ = exp(Σ_t Δ_t) of the response, the same on each of its tokens).
    """
    if not cap > 0:
        raise ValueError(f"the TIS cap must be > 0, got {cap}")
    if mode not in IS_MODES or level not in IS_LEVELS:
        raise ValueError(f"unknown TIS mode {mode!r} or level {level!r}; modes {IS_MODES}, levels {IS_LEVELS}")
    with torch.no_grad():
        valid = torch.broadcast_to(mask.bool(), old_logp.shape)
        delta = torch.where(valid, old_logp.float() - sampler_logp.float(), torch.zeros((), device=old_logp.device))
        if level == "sequence":
            delta = torch.broadcast_to(delta.sum(dim=-1, keepdim=True), delta.shape)
        ratio = torch.exp(delta)
        if mode == "truncate":
            weight = torch.clamp(ratio, max=cap)
        else:
            weight = torch.where(ratio <= cap, ratio, torch.zeros_like(ratio))
        return torch.where(valid, weight, torch.zeros_like(weight))


def logprob_gap_stats(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor,
                      cap: float | None = None) -> dict[str, Tensor]:
    """How far the sampler is from the trainer, over the valid tokens (detached 0-d tensors):

    - ``rollout/logprob_diff_mean`` / ``_max``: mean / max ``|logp_old − logp_sampler|``;
    - ``rollout/tis_ratio_mean`` / ``_max``: mean / max token ratio ``ρ = exp(logp_old − logp_sampler)``;
    - ``rollout/seq_ratio_mean``: mean sequence ratio ``exp(Σ_t Δ_t)`` over responses with a valid token;
    - with ``cap``: ``rollout/tis_clipfrac``, the share of tokens with ``ρ > C`` (truncated, or masked out).
    """
    with torch.no_grad():
        valid = torch.broadcast_to(mask.bool(), old_logp.shape)
        delta = torch.where(valid, old_logp.float() - sampler_logp.float(), torch.zeros((), device=old_logp.device))
        ratio = torch.exp(delta)
        rows = valid.any(dim=-1)
        zero = torch.zeros((), device=delta.device)
        stats = {
            "rollout/logprob_diff_mean": masked_mean(delta.abs(), valid),
            "rollout/logprob_diff_max": torch.where(valid, delta.abs(), zero).max(),
            "rollout/tis_ratio_mean": masked_mean(ratio, valid),
            "rollout/tis_ratio_max": torch.where(valid, ratio, zero).max(),
            "rollout/seq_ratio_mean": masked_mean(torch.exp(masked_sum(delta, valid, dim=-1)), rows),
        }
        if cap is not None:
            stats["rollout/tis_clipfrac"] = masked_mean((ratio > cap).float(), valid)
        return stats
