"""Token log-probabilities straight from hidden states and the LM head, never holding ``[N, V]`` logits.

``selective_log_softmax`` avoids a second copy of the logits, but the model still writes all of them
(``[B, T, V]``, 49k vocab: 1.6 GB in fp32 for 8k tokens) and autograd keeps them, plus their gradient, for
backward. ``linear_log_softmax`` takes the hidden states of only the tokens that are scored, applies the LM
head chunk by chunk and keeps one fp32 number per token (the log-sum-exp); backward recomputes each chunk's
logits (one extra head matmul, ~1/6 of a small model's forward) and accumulates

    ∂ log p(y) / ∂z   = 1[v = y] − p          (per token, scaled by 1/T for a temperature T)
    ∂L/∂h = g W,  ∂L/∂W = Σ gᵀ h,  ∂L/∂b = Σ g

so peak memory is one chunk of logits. Matmuls run in the autocast dtype when autocast is on (bf16), the
softmax in fp32; results are fp32 (fp64 for fp64 input).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["linear_log_softmax", "LINEAR_CHUNK_SIZE"]

# Token rows whose logits exist at once: 512 × 49k vocab × 4 bytes ≈ 100 MB.
LINEAR_CHUNK_SIZE = 512


def _matmul_dtype(x: Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _LinearLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,  # type: ignore[override]
                chunk_size: int, inv_temperature: float) -> Tensor:
        mm = _matmul_dtype(hidden)
        out_dtype = torch.promote_types(hidden.dtype, torch.float32)
        n = hidden.shape[0]
        out = torch.empty(n, dtype=out_dtype, device=hidden.device)
        lse = torch.empty_like(out)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(mm)
            chunk_logits = _ChunkLogits(min(chunk_size, n), w, bias, mm, out_dtype, inv_temperature)
            for s in range(0, n, chunk_size):
                logits = chunk_logits(hidden[s : s + chunk_size])
                picked = logits.gather(-1, labels[s : s + chunk_size, None]).squeeze(-1)
                chunk_lse = _logsumexp_(logits)
                out[s : s + chunk_size] = picked - chunk_lse
                lse[s : s + chunk_size] = chunk_lse
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.mm, ctx.chunk_size, ctx.inv_temperature = mm, chunk_size, inv_temperature
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        mm, inv_t = ctx.mm, ctx.inv_temperature
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = torch.promote_types(weight.dtype, torch.float32)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b and bias is not None else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(mm)
            chunk_logits = _ChunkLogits(min(ctx.chunk_size, hidden.shape[0]), w, bias, mm, lse.dtype, inv_t)
            # one chunk's [V, H] weight-gradient term, when it must be cast before adding into the fp32 sum
            w_part = chunk_logits.scratch(weight.shape, mm) if need_w and mm != acc else None
            for s in range(0, hidden.shape[0], ctx.chunk_size):
                h = hidden[s : s + ctx.chunk_size]
                g_out = grad_out[s : s + ctx.chunk_size, None].to(lse.dtype) * inv_t
                # in place: the chunk's [c, V] logits are the largest tensors here, so no temporaries of that size
                g = chunk_logits(h)
                g.sub_(lse[s : s + ctx.chunk_size, None]).exp_().mul_(-g_out)
                g.scatter_add_(-1, labels[s : s + ctx.chunk_size, None], g_out)
                if grad_b is not None:
                    grad_b += g.sum(0).to(acc)
                g_mm = chunk_logits.as_matmul_dtype(g)
                if grad_h is not None:
                    grad_h[s : s + ctx.chunk_size] = (g_mm @ w).to(hidden.dtype)
                if grad_w is not None:
                    if w_part is None:
                        grad_w.addmm_(g_mm.t(), h.to(mm))
                    else:
                        grad_w.add_(torch.matmul(g_mm.t(), h.to(mm), out=w_part))
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None)


def _logsumexp_(x: Tensor) -> Tensor:
    """``logsumexp`` over the last dim that overwrites ``x`` instead of allocating temporaries of its size."""
    m = x.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf rows: lse -inf, as torch.logsumexp
    return x.sub_(m).exp_().sum(dim=-1).log_().add_(m.squeeze(-1))


class _ChunkLogits:
    """``(h @ wᵀ + bias) · inv_temperature`` for one chunk of rows, written into buffers allocated once per call.

    A chunk's logits are ~100 MB (512 × 49k × fp32): above glibc's mmap threshold, so a fresh tensor per chunk
    costs a map, ~25k page faults and an unmap each time. The result is a view of the buffer, valid until the
    next call.
    """

    def __init__(self, rows: int, w: Tensor, bias: Tensor | None, mm: torch.dtype, dtype: torch.dtype,
                 inv_temperature: float):
        self.w, self.mm, self.inv_temperature = w, mm, inv_temperature
        self.bias = None if bias is None else bias.to(dtype)
        self.buf = torch.empty(rows, w.shape[0], dtype=dtype, device=w.device)
        self.mm_buf = None if mm == dtype else torch.empty(rows, w.shape[0], dtype=mm, device=w.device)

    def __call__(self, h: Tensor) -> Tensor:
        k = h.shape[0]
        out = self.buf[:k]
        if self.mm_buf is None:
            torch.matmul(h.to(self.mm), self.w.t(), out=out)
        else:
            out.copy_(torch.matmul(h.to(self.mm), self.w.t(), out=self.mm_buf[:k]))
        if self.bias is not None:
            out.add_(self.bias)
        if self.inv_temperature != 1.0:
            out.mul_(self.inv_temperature)
        return out

    def scratch(self, shape: torch.Size, dtype: torch.dtype) -> Tensor:
        """A tensor that shares the logits buffer's memory when it fits (else a new one): for results used up
        between the last read of one chunk's logits and the next call, which overwrites them."""
        n, size = math.prod(shape), self.buf.element_size()
        if size % dtype.itemsize == 0 and self.buf.numel() * size >= n * dtype.itemsize:
            return self.buf.view(-1).view(dtype)[:n].view(shape)
        return torch.empty(shape, dtype=dtype, device=self.buf.device)

    def as_matmul_dtype(self, x: Tensor) -> Tensor:
        """``x`` (a result of ``__call__``) in the matmul dtype, through the second buffer when it differs."""
        return x if self.mm_buf is None else self.mm_buf[: x.shape[0]].copy_(x)


def linear_log_softmax(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None = None,
                       temperature: float = 1.0, chunk_size: int = LINEAR_CHUNK_SIZE) -> Tensor:
    """``log softmax((hidden @ weightᵀ + bias) / temperature)[label]`` for each row of ``hidden``.

    ``hidden`` is ``[N, H]`` (the scored tokens only), ``weight`` ``[V, H]``, ``labels`` ``[N]`` in ``[0, V)``.
    Returns ``[N]`` fp32 log-probs with gradients for ``hidden``, ``weight`` and ``bias``.
    """
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, H] and labels [N]; got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight must be [V, {hidden.shape[1]}]; got {tuple(weight.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= weight.shape[0]):
        raise ValueError(f"labels must be in [0, {weight.shape[0]})")
    return _LinearLogSoftmax.apply(hidden, weight, bias, labels, chunk_size, 1.0 / temperature)
