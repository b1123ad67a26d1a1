"""Token-level advantage estimators behind one signature, registered by name.

Every estimator is

    fn(rewards [B, T], mask [B, T], *, values=None, group_size=None,
       gamma=1.0, lam=0.95, scale_by_std=True, reduce=None) -> (advantages [B, T], returns [B, T])

``rewards`` are per-token rewards over the response (typically ``−β·KL_t`` on
every token plus the sequence score on the last valid token). Masked
positions are skipped: their rewards are ignored and their outputs are 0. A
new estimator is one function added to ``ADVANTAGE_ESTIMATORS``. All run
under ``no_grad``: advantages and returns are targets, not graph nodes.
``reduce`` (sums a list of floats over data-parallel ranks) is used by the
estimators that whiten over the batch (REINFORCE++), so the batch is the
global one; the others ignore it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .group_advantages import group_view, grpo_advantages, rloo_advantages
from .masked import SumReducer, masked_sum, masked_whiten

__all__ = [
    "AdvantageEstimator",
    "ADVANTAGE_ESTIMATORS",
    "gae",
    "reinforce_returns",
    "grpo_token_advantages",
    "dr_grpo_token_advantages",
    "rloo_token_advantages",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "whiten_advantages",
]

AdvantageEstimator = Callable[..., tuple[Tensor, Tensor]]


def _check_shapes(rewards: Tensor, mask: Tensor, values: Tensor | None = None) -> None:
    if rewards.dim() != 2 or mask.shape != rewards.shape:
        raise ValueError(f"rewards and mask must both be [B, T]; got {tuple(rewards.shape)} and {tuple(mask.shape)}")
    if values is not None and values.shape != rewards.shape:
        raise ValueError(f"values must be [B, T] like rewards; got {tuple(values.shape)} and {tuple(rewards.shape)}")


@torch.no_grad()
def gae(
    rewards: Tensor,
    mask: Tensor,
    *,
    values: Tensor | None = None,
    group_size: int | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    scale_by_std: bool = True,
    reduce: SumReducer | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    Over the valid tokens t of a row (masked positions are skipped, so a
    gap inside the response is transparent):

        δ_t = r_t + γ V_{t'} − V_t          t' = next valid token
        A_t = δ_t + γλ A_{t'}
        returns_t = A_t + V_t               (the value-function target)

    After the last valid token the episode ends: ``V = 0`` and ``A = 0`` there,
    whatever ``values`` holds at padded positions. ``group_size``,
    ``scale_by_std`` and ``reduce`` are unused.
    """
    if values is None:
        raise ValueError("gae needs values from a value model")
    _check_shapes(rewards, mask, values)
    valid = mask.bool()
    rewards, values = rewards.float(), values.float()
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        m = valid[:, t]
        advantages[:, t] = torch.where(m, advantage, torch.zeros_like(advantage))
        next_value = torch.where(m, values[:, t], next_value)
        next_advantage = torch.where(m, advantage, next_advantage)
    returns = torch.where(valid, advantages + values, torch.zeros_like(advantages))
    return advantages, returns


@torch.no_grad()
def reinforce_returns(
    rewards: Tensor,
    mask: Tensor,
    *,
    values: Tensor | None = None,
    group_size: int | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    scale_by_std: bool = True,
    reduce: SumReducer | None = None,
) -> tuple[Tensor, Tensor]:
    """REINFORCE (Williams 1992) without a baseline: ``A_t = G_t = Σ_{k≥t} γ^(k−t) r_k`` over valid tokens.

    Equal to ``gae`` with V ≡ 0 and λ = 1. Whiten the result (REINFORCE++) to
    reduce variance (``reinforce_pp``). ``values``, ``group_size``, ``lam``,
    ``scale_by_std`` and ``reduce`` are unused.
    """
    return gae(rewards, mask, values=torch.zeros_like(rewards, dtype=torch.float32), gamma=gamma, lam=1.0)


def _sequence_to_tokens(sequence_values: Tensor, mask: Tensor) -> Tensor:
    """Broadcast ``[B]`` onto every valid token of ``[B, T]``; 0 elsewhere."""
    spread = sequence_values.unsqueeze(1).expand(mask.shape)
    return torch.where(mask.bool(), spread, torch.zeros_like(spread))


@torch.no_grad()
def grpo_token_advantages(
    rewards: Tensor,
    mask: Tensor,
    *,
    values: Tensor | None = None,
    group_size: int | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    scale_by_std: bool = True,
    reduce: SumReducer | None = None,
) -> tuple[Tensor, Tensor]:
    """GRPO / Dr. GRPO: the group-normalised sequence return on every valid token.

    The sequence return is ``Σ_t r_t`` over valid tokens (undiscounted);
    ``returns`` holds it on every valid token. See ``grpo_advantages``.
    """
    if group_size is None:
        raise ValueError("grpo needs group_size (completions per prompt)")
    _check_shapes(rewards, mask)
    scores = masked_sum(rewards.float(), mask, dim=-1)
    advantages = grpo_advantages(scores, group_size, scale_by_std=scale_by_std)
    return _sequence_to_tokens(advantages, mask), _sequence_to_tokens(scores, mask)


@torch.no_grad()
def rloo_token_advantages(
    rewards: Tensor,
    mask: Tensor,
    *,
    values: Tensor | None = None,
    group_size: int | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    scale_by_std: bool = True,
    reduce: SumReducer | None = None,
) -> tuple[Tensor, Tensor]:
    """RLOO: the leave-one-out sequence advantage on every valid token. See ``rloo_advantages``."""
    if group_size is None:
        raise ValueError("rloo needs group_size (completions per prompt)")
    _check_shapes(rewards, mask)
    scores = masked_sum(rewards.float(), mask, dim=-1)
    advantages = rloo_advantages(scores, group_size)
    return _sequence_to_tokens(advantages, mask), _sequence_to_tokens(scores, mask)


@torch.no_grad()
def whiten_advantages(
    advantages: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8, reduce: SumReducer | None = None
) -> Tensor:
    """Normalise advantages to mean 0, std 1 over all valid tokens of the batch (masked positions 0);
    ``reduce`` makes the batch the global one across data-parallel ranks."""
    return masked_whiten(advantages, mask, shift_mean=shift_mean, eps=eps, reduce=reduce)


@torch.no_grad()
def dr_grpo_token_advantages(
    rewards: Tensor,
    mask: Tensor,
    *,
    values: Tensor | None = None,
    group_size: int | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    scale_by_std: bool = True,
    reduce: SumReducer | None = None,
) -> tuple[Tensor, Tensor]:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective",
    arXiv 2503.20783):
    ``A_i = R_i − mean_g R`` on every valid token, never divided by the group std (``scale_by_std`` is ignored).

    The paper's other half, no per-response length division in the loss, is the aggregation
    ``seq_mean_token_sum`` (``aggregate_loss``) with the generation limit as ``max_len``.
    """
    return grpo_token_advantages(rewards, mask, group_size=group_size, scale_by_std=False)


@torch.no_grad()
def reinforce_pp_advantages(
    rewards: Tensor,
    mask: Tensor,
    *,
    values: Tensor | None = None,
    group_size: int | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    scale_by_std: bool = True,
    reduce: SumReducer | None = None,
) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
    arXiv 2501.03262): the per-token discounted return, whitened over every valid token of the batch.

        G_t = Σ_{k≥t} γ^(k−t) r_k          r_k = −β·KL_k on every token, + the score on the last one
        A_t = (G_t − mean_batch G) / std_batch G

    The KL belongs in ``rewards`` (the paper's k1 ``log π_old/π_ref`` per token); ``returns`` are the unwhitened
    ``G_t``. ``reduce`` makes the batch statistics global over data-parallel ranks.
    """
    returns, _ = reinforce_returns(rewards, mask, gamma=gamma)
    return masked_whiten(returns, mask, reduce=reduce), returns


@torch.no_grad()
def reinforce_pp_baseline_advantages(
    rewards: Tensor,
    mask: Tensor,
    *,
    values: Tensor | None = None,
    group_size: int | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    scale_by_std: bool = True,
    reduce: SumReducer | None = None,
) -> tuple[Tensor, Tensor]:
    """REINFORCE++-baseline (Hu 2025, arXiv 2501.03262): subtract the group mean, then whiten over the batch.

        G_i,t = Σ_{k≥t} γ^(k−t) r_i,k         b_g = mean over the group of G_j,0 (each response's return)
        A_i,t = (G_i,t − b_g − mean_batch) / std_batch

    With the score only on the last token (no KL in the reward) and γ = 1, ``G_i,t − b_g`` is the paper's
    ``r_i − mean_g r`` on every token. Whitening over the batch replaces GRPO's per-group std; a group whose
    rewards are all equal is 0 before whitening but not after (its tokens sit at ``−mean_batch/std_batch``), as
    in the paper and OpenRLHF. ``returns`` are the unwhitened ``G_i,t``.
    """
    if group_size is None:
        raise ValueError("reinforce_pp_baseline needs group_size (completions per prompt)")
    _check_shapes(rewards, mask)
    returns, _ = reinforce_returns(rewards, mask, gamma=gamma)
    first = returns.gather(1, mask.bool().float().argmax(dim=1, keepdim=True)).squeeze(1)  # G_i at its first token
    baseline = group_view(first, group_size).mean(dim=1).repeat_interleave(group_size)
    centered = torch.where(mask.bool(), returns - baseline.unsqueeze(1), torch.zeros_like(returns))
    return masked_whiten(centered, mask, reduce=reduce), returns


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "gae": gae,
    "reinforce": reinforce_returns,
    "grpo": grpo_token_advantages,
    "dr_grpo": dr_grpo_token_advantages,
    "rloo": rloo_token_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "reinforce_pp_baseline": reinforce_pp_baseline_advantages,
}
