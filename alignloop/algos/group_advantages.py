"""Critic-free, group-relative advantages for sequence rewards (GRPO, Dr. GRPO, RLOO).

Layout: ``scores`` is ``[N]`` with ``N = n_prompts · group_size`` and the
``group_size`` completions of one prompt CONTIGUOUS, i.e. groups are the
rows of ``scores.view(-1, group_size)`` (how a sampler that repeats each
prompt G times returns them). A group whose rewards are all equal carries no
learning signal: its advantages are exactly 0, never NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["grpo_advantages", "rloo_advantages", "frac_zero_std", "group_view", "informative_groups"]


def group_view(scores: Tensor, group_size: int) -> Tensor:
    """``scores`` as ``[n_prompts, group_size]``; raises if N is not a multiple of the group size."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-d [N], got shape {tuple(scores.shape)}")
    if group_size < 1 or scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores cannot be split into groups of {group_size}")
    return scores.view(-1, group_size)


def _all_equal(groups: Tensor) -> Tensor:
    """``[n_prompts, 1]`` True where every reward in the group is the same."""
    return (groups.amax(dim=1, keepdim=True) == groups.amin(dim=1, keepdim=True))


@torch.no_grad()
def grpo_advantages(scores: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath §4.1.2): ``A_i = (r_i − mean_g) / (std_g + eps)``.

    ``std_g`` is the unbiased (n−1) standard deviation of the group, as in
    TRL. ``scale_by_std=False`` gives Dr. GRPO (Liu et al. 2025):
    ``A_i = r_i − mean_g``, which removes the bias toward easy and
    hopeless prompts whose std is small. All-equal groups (including groups
    of one) give exactly 0.
    """
    groups = group_view(scores, group_size).float()
    centered = groups - groups.mean(dim=1, keepdim=True)
    if scale_by_std and group_size > 1:
        centered = centered / (groups.std(dim=1, keepdim=True) + eps)
    return torch.where(_all_equal(groups), torch.zeros_like(centered), centered).reshape(-1)


@torch.no_grad()
def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024):
    ``A_i = r_i − (1/(G−1)) Σ_{j≠i} r_j``  ( = G/(G−1) · (r_i − mean_g) ).

    Needs ``group_size ≥ 2``. All-equal groups give exactly 0.
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs group_size >= 2, got {group_size}")
    groups = group_view(scores, group_size).float()
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    advantages = groups - baseline
    return torch.where(_all_equal(groups), torch.zeros_like(advantages), advantages).reshape(-1)


@torch.no_grad()
def frac_zero_std(scores: Tensor, group_size: int) -> Tensor:
    """Fraction of groups whose rewards are all equal (they give no gradient), as a 0-d float tensor."""
    return _all_equal(group_view(scores, group_size)).float().mean()


@torch.no_grad()
def informative_groups(scores: Tensor, group_size: int) -> Tensor:
    """``[n_prompts]`` bool: True where the group's rewards are NOT all equal, i.e. it carries a learning signal.

    DAPO's dynamic sampling (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
    arXiv 2503.14476, §3.2) keeps only these groups: one whose rewards are all equal (all right, all wrong)
    has group-relative advantage 0 and only shrinks the batch's effective size.
    """
    return ~_all_equal(group_view(scores, group_size)).squeeze(1)
