"""Statistics over the valid entries of a tensor.

``mask`` is boolean-like (non-zero = valid) and broadcastable to ``x``. Masked
entries are removed with ``torch.where`` rather than multiplied by zero, so an
``inf`` or ``NaN`` sitting in a padded position never leaks into the result.
A reduction over zero valid entries returns 0 instead of NaN: an empty batch
contributes no loss and no gradient. Reductions run in at least fp32 (bf16
cannot even count to 257 exactly), so a bf16 ``x`` gives an fp32 result.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

SumReducer = Callable[[list[float]], list[float]]  # sums a list of floats over data-parallel ranks

__all__ = ["masked_sum", "masked_mean", "masked_var", "masked_whiten", "masked_count"]


def _reduce_dtype(x: Tensor) -> torch.dtype:
    """fp32, or fp64 for fp64 input."""
    return torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32


def _valid(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean mask broadcast to ``x`` and ``x`` (upcast) with invalid entries set to 0."""
    valid = torch.broadcast_to(mask.bool(), x.shape)
    x = x.to(_reduce_dtype(x))
    return valid, torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_count(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Number of valid entries of ``x`` (over ``dim``, or all of them), as fp32 (fp64 for fp64 ``x``)."""
    valid = torch.broadcast_to(mask.bool(), x.shape)
    count = valid.sum() if dim is None else valid.sum(dim)
    return count.to(_reduce_dtype(x))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """``Σ_i x_i`` over valid entries."""
    _, x0 = _valid(x, mask)
    return x0.sum() if dim is None else x0.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """``Σ_i m_i x_i / Σ_i m_i``; 0 where there is no valid entry."""
    count = masked_count(x, mask, dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, dim: int | None = None, unbiased: bool = True) -> Tensor:
    """Variance over valid entries: ``Σ m (x − mean)² / (n − 1)`` (``/ n`` if not ``unbiased``).

    With ``n ≤ 1`` valid entries the spread is undefined; we return 0 so that
    whitening a single token leaves it at 0 instead of producing NaN.
    """
    count = masked_count(x, mask, dim)
    mean = masked_mean(x, mask, dim)
    centered = x - (mean if dim is None else mean.unsqueeze(dim))
    sq_sum = masked_sum(centered.square(), mask, dim)
    denom = count - 1 if unbiased else count
    return torch.where(count > 1, sq_sum / denom.clamp(min=1), torch.zeros_like(sq_sum))


def masked_whiten(
    x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8, reduce: SumReducer | None = None
) -> Tensor:
    """``(x − mean) / sqrt(var + eps)`` with mean and (unbiased) var over all valid entries.

    With ``shift_mean=False`` the mean is added back, so only the scale changes
    (the convention of OpenAI's lm-human-preferences and TRL's ``whiten``).
    Invalid entries of the result are 0. ``reduce`` sums statistics over data-parallel ranks, so
    every rank whitens with the global batch's mean and variance (as one process would).
    """
    if reduce is None:
        mean = masked_mean(x, mask)
        var = masked_var(x, mask, unbiased=True)
    else:
        count, total = reduce([float(masked_count(x, mask)), float(masked_sum(x, mask))])
        mean = torch.tensor(total / max(count, 1.0), dtype=_reduce_dtype(x), device=x.device)
        (sq_sum,) = reduce([float(masked_sum((x.to(mean.dtype) - mean).square(), mask))])
        var = torch.tensor(sq_sum / (count - 1) if count > 1 else 0.0, dtype=mean.dtype, device=x.device)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    valid = torch.broadcast_to(mask.bool(), x.shape)
    return torch.where(valid, whitened, torch.zeros_like(whitened))
