"""Token log-probs of a causal LM without materialising its ``[B, T, V]`` logits.

``token_logprobs`` runs the model with its LM head switched to the identity for that one call, so the
"logits" it returns are the final hidden states, then applies the head only to the scored tokens with
``algos.linear_log_softmax`` (chunked, recomputed in backward). The model is still called through its
wrappers (DDP, PEFT), so gradient hooks and LoRA behave as usual. Models where this would change the result
(a head that is not a plain ``nn.Linear``, logit soft-capping or scaling, sharded FSDP/ZeRO-3 weights) take
the ordinary logits path; ``ALIGNLOOP_FUSED_HEAD=0`` forces it everywhere.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from alignloop.algos.linear_logprobs import linear_log_softmax
from alignloop.algos.logprobs import selective_log_softmax
from alignloop.models.images import multimodal_inputs

__all__ = ["token_logprobs", "fused_head"]

IGNORE_INDEX = -100


def _innermost(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP, accelerate wrappers
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model


def fused_head(model: nn.Module) -> nn.Linear | None:
    """The LM head when the fused path gives the same numbers as the model's own logits, else None."""
    if os.environ.get("ALIGNLOOP_FUSED_HEAD", "1") == "0":
        return None
    base = _innermost(model)
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    config = getattr(base, "config", None)
    if type(head) is not nn.Linear or config is None:
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    if head.weight.dim() != 2 or head.weight.shape[1] != getattr(config, "hidden_size", -1):
        return None  # a sharded (flattened or partitioned) weight
    return head


@contextlib.contextmanager
def _identity_head(head: nn.Linear) -> Iterator[None]:
    head.forward = lambda hidden: hidden  # instance attribute shadows nn.Linear.forward for this call
    try:
        yield
    finally:
        del head.forward


def token_logprobs(model: nn.Module, inputs: dict, labels: torch.Tensor, temperature: float = 1.0,
                   logits_to_keep: int | None = None) -> torch.Tensor:
    """fp32 ``log softmax(logits / T)[label]`` for the last ``labels.shape[1]`` positions of ``model(**inputs)``.

    ``labels`` ``[B, K]`` holds, for each of those positions, the token it predicts (``-100``: not scored,
    gives 0). ``logits_to_keep`` is passed on to the model (it must then be ≥ K). ``inputs["images"]`` (one tuple
    of ``EncodedImage`` per row) becomes ``inputs_embeds`` with the image features (``models.images``).
    """
    inputs = multimodal_inputs(model, inputs) if "images" in inputs else inputs
    keep = labels.shape[1]
    extra = {"logits_to_keep": logits_to_keep} if logits_to_keep is not None else {}
    head = fused_head(model)
    if head is None:
        logits = model(**inputs, use_cache=False, **extra).logits[:, -keep:]
        return selective_log_softmax(logits, labels, temperature=temperature)
    with _identity_head(head):
        hidden = model(**inputs, use_cache=False, **extra).logits[:, -keep:]
    scored = labels != IGNORE_INDEX
    logps = linear_log_softmax(hidden[scored], head.weight, labels[scored], head.bias, temperature=temperature)
    out = torch.zeros(labels.shape, dtype=logps.dtype, device=logps.device)
    return out.masked_scatter(scored, logps)
