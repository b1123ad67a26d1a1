"""Frozen weights stored in the dtype autocast computes them in.

Under bf16 autocast every ``nn.Linear`` casts its fp32 weight to bf16 on each call. For a weight that
never trains (a LoRA base, a reward model, a full-fine-tuning reference) that cast is pure overhead,
and its fp32 master copy is pure memory: storing it in bf16 once gives the same matmul results (the
cast is the same round-to-nearest), halves its memory and saves a cast per forward.

Only the transformer's inner linear layers are cast. Output heads (``lm_head``, scalar heads) and any
weight shared with a non-linear module (tied embeddings) stay as they are, so embeddings and norms keep
their precision and a head's own code (e.g. a chunked fp32 log-softmax) sees what it expects.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

_HEAD_NAMES = {"lm_head", "head", "score", "v_head", "classifier"}


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` runs bf16 matmuls natively (so our samplers decode under bf16 autocast)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def cast_frozen_linears(modules: Iterable[nn.Module], dtype: torch.dtype = torch.bfloat16) -> int:
    """Store frozen fp32 ``nn.Linear`` weights (and biases) of ``modules`` in ``dtype``; returns bytes saved.

    Every forward of these modules must then run under autocast to ``dtype``: outside it, a matmul of
    fp32 activations with a bf16 weight fails loudly (it never computes silently in another precision).
    """
    saved = 0
    seen: set[int] = set()
    for root in modules:
        tied = {id(p) for m in root.modules() if not isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
        for name, module in root.named_modules():
            if not isinstance(module, nn.Linear) or name.rsplit(".", 1)[-1] in _HEAD_NAMES:
                continue
            params = [p for p in (module.weight, module.bias) if p is not None]
            if any(p.requires_grad or p.dtype != torch.float32 or id(p) in tied or id(p) in seen for p in params):
                continue
            for param in params:
                seen.add(id(param))
                saved += param.numel() * (param.element_size() - torch.empty((), dtype=dtype).element_size())
                param.data = param.data.to(dtype)
    return saved


def _backbone(model: nn.Module) -> nn.Module:
    """The transformer trunk under peft / causal-LM / scalar-head wrappers (e.g. ``LlamaModel``)."""
    model = getattr(model, "backbone", model)  # ScalarHeadModel
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(model, "base_model", model)  # LlamaForCausalLM.model; a bare LlamaModel is its own
    return inner if isinstance(inner, nn.Module) else model


def share_frozen_weights(source: nn.Module, target: nn.Module) -> int:
    """Point ``target``'s frozen trunk parameters at ``source``'s equal ones; returns bytes no longer held twice.

    For a critic built on the same base as a LoRA policy: both trunks hold identical frozen weights,
    so one copy serves both (each keeps its own adapter and head). A parameter is shared only when
    both are frozen and equal in name, shape, dtype and value, so sharing never changes a result.
    """
    src = dict(_backbone(source).named_parameters())
    trunk = _backbone(target)
    saved = 0
    for name, param in list(trunk.named_parameters()):
        other = src.get(name)
        if other is None or other is param or param.requires_grad or other.requires_grad:
            continue
        if other.shape != param.shape or other.dtype != param.dtype or not torch.equal(other, param):
            continue
        owner_name, _, leaf = name.rpartition(".")
        setattr(trunk.get_submodule(owner_name) if owner_name else trunk, leaf, other)
        saved += param.numel() * param.element_size()
    return saved
