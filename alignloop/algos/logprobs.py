"""Per-token log-probabilities and entropies from LM logits, without a full log-softmax.

A causal LM's logits are ``[B, T, V]`` with ``V`` in the tens of thousands;
``torch.log_softmax(logits.float(), -1)`` would hold a second full copy in fp32
(and autograd would keep it for backward). Here we walk over chunks of at most
``chunk_size`` token rows, upcast only that chunk to fp32, and compute

    log p(y_t) = z_t[y_t] − logsumexp_v z_t[v]          (selective_log_softmax)
    H_t        = logsumexp_v z_t[v] − Σ_v p_t[v] z_t[v]  (entropy_from_logits)

Backward is a custom autograd function that saves only the logits the caller
already holds plus one fp32 number per token, and recomputes the softmax
chunk by chunk:

    ∂ log p(y) / ∂z_v = 1[v = y] − p_v
    ∂ H / ∂z_v        = −p_v (z_v − E_p[z])

Results are fp32 whatever the logits' dtype (fp64 stays fp64). A sampling
temperature T is applied to each upcast chunk (z/T), never as a full copy.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .masked import masked_count, masked_sum

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "selective_log_softmax",
    "entropy_from_logits",
    "shift_labels",
    "sequence_logprob",
]

# Token rows upcast at a time: 1024 × 50k vocab × 4 bytes ≈ 200 MB per chunk.
DEFAULT_CHUNK_SIZE = 1024


def _as_3d(logits: Tensor) -> Tensor:
    """View ``[..., V]`` as ``[B, T, V]`` (a copy only for unusual >3-d strides)."""
    if logits.dim() == 1:
        raise ValueError(f"logits must be [..., V] with at least 2 dims, got shape {tuple(logits.shape)}")
    if logits.dim() == 2:
        return logits.unsqueeze(0)
    return logits.flatten(0, -3) if logits.dim() > 3 else logits


def _compute_dtype(logits: Tensor) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 logits; fp64 is kept (used by gradcheck)."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _inverse_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return 1.0 / float(temperature)


def _chunks(batch: int, time: int, chunk_size: int) -> Iterator[tuple[slice, slice]]:
    """Slices ``(rows, steps)`` of ``[B, T]`` covering it with ≤ ``chunk_size`` tokens each.

    Slicing keeps every chunk a view, so a non-contiguous input (e.g. the
    response part of the logits) is never copied whole.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    rows_per_chunk = chunk_size // max(time, 1)
    if rows_per_chunk >= 1:
        for b0 in range(0, batch, rows_per_chunk):
            yield slice(b0, b0 + rows_per_chunk), slice(0, time)
    else:
        for b in range(batch):
            for t0 in range(0, time, chunk_size):
                yield slice(b, b + 1), slice(t0, t0 + chunk_size)


def _upcast_chunk(logits: Tensor, rows: slice, steps: slice, dtype: torch.dtype, inv_temperature: float) -> Tensor:
    """One chunk in the compute dtype, divided by the temperature there (not in bf16)."""
    chunk = logits[rows, steps].to(dtype)
    return chunk if inv_temperature == 1.0 else chunk * inv_temperature


class _SelectiveLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, labels: Tensor, chunk_size: int, inv_temperature: float
    ) -> Tensor:
        batch, time, _ = logits.shape
        dtype = _compute_dtype(logits)
        out = torch.empty(batch, time, dtype=dtype, device=logits.device)
        lse = torch.empty_like(out)
        for rows, steps in _chunks(batch, time, chunk_size):
            chunk = _upcast_chunk(logits, rows, steps, dtype, inv_temperature)
            chunk_lse = torch.logsumexp(chunk, dim=-1)
            picked = chunk.gather(-1, labels[rows, steps].unsqueeze(-1)).squeeze(-1)
            out[rows, steps] = picked - chunk_lse
            lse[rows, steps] = chunk_lse
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunk_size = chunk_size
        ctx.inv_temperature = inv_temperature
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        logits, labels, lse = ctx.saved_tensors
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        dtype = _compute_dtype(logits)
        batch, time, _ = logits.shape
        for rows, steps in _chunks(batch, time, ctx.chunk_size):
            # d/dz of f(z/T) is (1/T) f'(z/T): fold 1/T into the incoming gradient
            g_out = grad_out[rows, steps].unsqueeze(-1) * ctx.inv_temperature
            chunk = _upcast_chunk(logits, rows, steps, dtype, ctx.inv_temperature)
            probs = torch.exp(chunk - lse[rows, steps].unsqueeze(-1))
            g = probs.mul_(-g_out)
            g.scatter_add_(-1, labels[rows, steps].unsqueeze(-1), g_out)
            grad[rows, steps] = g.to(grad.dtype)
        return grad, None, None, None


class _EntropyFromLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, chunk_size: int, inv_temperature: float) -> Tensor:  # type: ignore[override]
        batch, time, _ = logits.shape
        dtype = _compute_dtype(logits)
        entropy = torch.empty(batch, time, dtype=dtype, device=logits.device)
        lse = torch.empty_like(entropy)
        for rows, steps in _chunks(batch, time, chunk_size):
            chunk = _upcast_chunk(logits, rows, steps, dtype, inv_temperature)
            chunk_lse = torch.logsumexp(chunk, dim=-1)
            probs = torch.exp(chunk - chunk_lse.unsqueeze(-1))
            entropy[rows, steps] = chunk_lse - (probs * chunk).sum(-1)
            lse[rows, steps] = chunk_lse
        ctx.save_for_backward(logits, lse, entropy)
        ctx.chunk_size = chunk_size
        ctx.inv_temperature = inv_temperature
        return entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        logits, lse, entropy = ctx.saved_tensors
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        dtype = _compute_dtype(logits)
        batch, time, _ = logits.shape
        for rows, steps in _chunks(batch, time, ctx.chunk_size):
            chunk = _upcast_chunk(logits, rows, steps, dtype, ctx.inv_temperature)
            chunk_lse = lse[rows, steps].unsqueeze(-1)
            probs = torch.exp(chunk - chunk_lse)
            expected_logit = chunk_lse - entropy[rows, steps].unsqueeze(-1)  # E_p[z] = lse − H
            g_out = grad_out[rows, steps].unsqueeze(-1) * ctx.inv_temperature
            g = -probs * (chunk - expected_logit) * g_out
            grad[rows, steps] = g.to(grad.dtype)
        return grad, None, None


def selective_log_softmax(
    logits: Tensor,
    labels: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ignore_index: int | None = -100,
    temperature: float = 1.0,
) -> Tensor:
    """``log softmax(logits / temperature)[..., label]`` per position, shape ``labels.shape``.

    ``logits`` is ``[..., V]`` and ``labels`` is ``logits.shape[:-1]``. Positions
    whose label equals ``ignore_index`` get 0 and no gradient. Any other label
    outside ``[0, V)`` raises ``ValueError``. The temperature is applied per
    chunk after the upcast, so no tempered copy of the logits is made. fp32
    result (fp64 for fp64 logits).
    """
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal the logits shape {tuple(logits.shape[:-1])} minus vocab"
        )
    vocab = logits.shape[-1]
    labels = labels.long()
    ignored = labels == ignore_index if ignore_index is not None else torch.zeros_like(labels, dtype=torch.bool)
    safe_labels = torch.where(ignored, torch.zeros_like(labels), labels)
    if safe_labels.numel() and (int(safe_labels.min()) < 0 or int(safe_labels.max()) >= vocab):
        raise ValueError(f"labels must be in [0, {vocab}) or equal ignore_index={ignore_index}")
    logits3 = _as_3d(logits)
    out = _SelectiveLogSoftmax.apply(
        logits3, safe_labels.reshape(logits3.shape[:2]), chunk_size, _inverse_temperature(temperature)
    )
    out = out.reshape(labels.shape)
    return torch.where(ignored, torch.zeros_like(out), out)


def entropy_from_logits(logits: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE, temperature: float = 1.0) -> Tensor:
    """Entropy ``H = −Σ_v p_v log p_v`` (nats) of ``softmax(logits / temperature)`` at each position.

    Shape ``logits.shape[:-1]``; fp32 (fp64 for fp64 logits).
    """
    logits3 = _as_3d(logits)
    entropy = _EntropyFromLogits.apply(logits3, chunk_size, _inverse_temperature(temperature))
    return entropy.reshape(logits.shape[:-1])


def shift_labels(input_ids: Tensor, loss_mask: Tensor | None = None, ignore_index: int = -100) -> Tensor:
    """Labels aligned with a causal LM's logits: ``labels[..., t] = input_ids[..., t + 1]``.

    The shape is kept (the last position gets ``ignore_index``), so
    ``selective_log_softmax(logits, shift_labels(ids, mask))`` needs no slicing
    of the logits. ``loss_mask`` (same shape as ``input_ids``) marks the tokens
    that are targets, e.g. the completion; others become ``ignore_index``.
    """
    targets = input_ids.long()
    if loss_mask is not None:
        targets = torch.where(loss_mask.bool(), targets, torch.full_like(targets, ignore_index))
    shifted = torch.full_like(targets, ignore_index)
    shifted[..., :-1] = targets[..., 1:]
    return shifted


def sequence_logprob(token_logps: Tensor, mask: Tensor, average: bool = False) -> Tensor:
    """Sequence log-probability ``Σ_t m_t log p_t`` over the last dim, or its mean per valid token.

    ``average=True`` gives the length-normalised ``(1/|y|) Σ_t log p_t`` used by
    SimPO; a row with no valid token gives 0.
    """
    total = masked_sum(token_logps, mask, dim=-1)
    if not average:
        return total
    return total / masked_count(token_logps, mask, dim=-1).clamp(min=1)
