"""Reward shaping that depends only on the response, not on what it says: DAPO's soft overlong punishment."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["soft_overlong_penalty"]


@torch.no_grad()
def soft_overlong_penalty(lengths: Tensor, max_len: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System
    at Scale", arXiv 2503.14476, §3.4), to ADD to the reward of a response of ``L`` tokens:

        R_length(L) = 0                              if L ≤ L_max − L_cache
                      ((L_max − L_cache) − L) / L_cache   if L_max − L_cache < L ≤ L_max
                      −1                             if L > L_max

    ``max_len`` is ``L_max`` (the generation limit), ``buffer`` is ``L_cache``; the result is scaled by
    ``factor`` (1 in the paper). The penalty falls linearly from 0 to −1 across the buffer, so a response that
    runs into the limit is punished more the longer it gets, not all at once. ``lengths`` ``[N]`` → ``[N]``
    float.
    """
    if buffer < 1 or buffer > max_len:
        raise ValueError(f"the overlong buffer must be in [1, max_len={max_len}], got {buffer}")
    expected = max_len - buffer
    over = (expected - lengths.float()) / buffer
    penalty = torch.where(lengths <= expected, torch.zeros_like(over), over.clamp(min=-1.0))
    return factor * penalty
