"""Best-of-N sampling: selection and its analytical KL.

Drawing n samples from π and keeping the one a reward ranks highest gives a
policy π_n whose KL to π is at most (Stiennon et al. 2020, app. G.3; proven
as a bound by Beirami et al. 2024, "Theoretical guarantees on the best-of-n
alignment policy"):

    KL(π_n ‖ π) ≤ log n − (n − 1)/n

with equality when the rewards of distinct samples never tie.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["bon_kl_bound", "best_of_n_indices"]


def bon_kl_bound(n: int) -> float:
    """``log n − (n − 1)/n`` in nats; 0 for n = 1."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_indices(scores: Tensor, n: int) -> Tensor:
    """For ``scores`` ``[P·n]`` laid out prompt by prompt (n contiguous samples each),
    the flat index of each prompt's highest-scoring sample, ``[P]``.

    Ties go to the earliest sample, so the choice is deterministic.
    """
    if scores.dim() != 1 or n < 1 or scores.shape[0] % n:
        raise ValueError(f"scores must be 1-d with a length divisible by n={n}, got shape {tuple(scores.shape)}")
    groups = scores.view(-1, n)
    first = torch.argmax(groups, dim=1)  # torch documents: the first maximal value wins
    return first + torch.arange(groups.shape[0], device=scores.device) * n
