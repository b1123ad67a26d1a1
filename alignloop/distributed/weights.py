"""The weights a learner sends to its rollout workers, and a checksum to prove they arrived."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters (all weights, or only the LoRA adapter), by name."""
    return {n: p.detach().to("cpu").clone() for n, p in model.named_parameters() if p.requires_grad}


def load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise KeyError(
            f"the rollout model has no parameter {unknown[0]!r} ({len(unknown)} unknown): different architectures?"
        )
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t.to(params[name].device, params[name].dtype))


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names and float32 bytes, in name order: equal iff the tensors are bit-identical."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def weights_checksum(model: nn.Module) -> str:
    """``tensors_checksum`` of the model's trainable parameters (what a weight sync sends)."""
    return tensors_checksum({n: p for n, p in model.named_parameters() if p.requires_grad})
