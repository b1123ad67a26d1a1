"""Log-probs of chosen tokens under the (tempered) model distribution.

Convention shared by the sampler and the training stages: the log-prob of a token is taken
under ``softmax(logits / T)`` over the FULL vocabulary, never renormalised over a top-k /
top-p support, and ``T <= 0`` (greedy) counts as ``T = 1``. Training code that recomputes
log-probs with ``logprobs_from_logits`` / ``forward_logprobs`` and the same ``T`` therefore
gets exactly the numbers the sampler returned (up to floating-point noise).
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

import torch

from alignloop.algos.logprobs import DEFAULT_CHUNK_SIZE, selective_log_softmax
from alignloop.algos.logprobs import entropy_from_logits as _entropy
from alignloop.models.head import token_logprobs
from alignloop.models.images import multimodal_inputs
from alignloop.rollout.base import Rollout, position_ids_from_mask


def effective_temperature(temperature: float) -> float:
    """Greedy decoding (T <= 0) reports log-probs of the untempered distribution."""
    return float(temperature) if temperature > 0 else 1.0


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    temperature = effective_temperature(temperature)
    return logits if temperature == 1.0 else logits / temperature


def logprobs_from_logits(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """``log softmax(logits / T)[token]`` in float32, shape ``tokens.shape``.

    ``logits`` is ``[..., V]`` (any float dtype) and ``tokens`` is ``[...]``. Computed
    ``chunk_size`` positions at a time as ``gather - logsumexp`` (``algos.selective_log_softmax``),
    so no full-vocabulary fp32 log-softmax of the batch is built. Differentiable.
    """
    return selective_log_softmax(
        _tempered(logits, temperature), tokens.to(logits.device), chunk_size, ignore_index=None
    )


def entropy_from_logits(
    logits: torch.Tensor, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits / T)`` in float32, shape ``logits.shape[:-1]``, chunked."""
    return _entropy(_tempered(logits, temperature), chunk_size)


@lru_cache(maxsize=64)
def _forward_accepts_logits_to_keep(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def _base_class(model: torch.nn.Module) -> type:
    base = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return type(base)


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """True when the (possibly peft-wrapped) model can skip the LM head for positions we do not need."""
    return _forward_accepts_logits_to_keep(_base_class(model))


@lru_cache(maxsize=64)
def _cache_argument(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_argument(model: torch.nn.Module) -> str:
    """The forward's KV-cache keyword: ``cache`` (transformers >= 5.2x) or ``past_key_values`` (older)."""
    return _cache_argument(_base_class(model))


def output_cache(output: Any) -> Any:
    """The KV cache of a model output, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def forward_logprobs(
    model: torch.nn.Module,
    rollout_or_ids: Rollout | torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    response_start: int | None = None,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    return_entropy: bool = False,
    images: list[tuple] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probs ``[N, L - response_start]`` of the tokens ``ids[:, response_start:]`` in one forward pass.

    Pass a ``Rollout`` or ``(input_ids, attention_mask, response_start)``. Positions are derived
    from the attention mask, so left-padded prompts are handled. Values at masked positions are
    computed but meaningless: multiply by the response mask. Gradients flow when enabled; the
    caller picks train/eval mode and autocast. With ``return_entropy`` also returns the entropy of
    the tempered distribution at each response position. ``images`` (one tuple per row; a Rollout brings its
    own) are spliced in for vision-language models.
    """
    if isinstance(rollout_or_ids, Rollout):
        input_ids = rollout_or_ids.input_ids()
        attention_mask = rollout_or_ids.attention_mask()
        response_start = rollout_or_ids.response_start
        images = rollout_or_ids.images
    else:
        input_ids = rollout_or_ids
        if attention_mask is None or response_start is None:
            raise ValueError("forward_logprobs needs attention_mask and response_start with raw input ids")
    if response_start < 1:
        raise ValueError(
            f"response_start must be >= 1 (a prompt token predicts the first response token), got {response_start}"
        )
    device = model_device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    response_len = input_ids.shape[1] - response_start
    keep = response_len + 1
    if not return_entropy:  # the LM head only on the response tokens, no [N, L, V] logits (models/head.py)

        predicted = torch.full((input_ids.shape[0], keep), -100, dtype=torch.long, device=device)
        predicted[:, :-1] = input_ids[:, response_start:]
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids_from_mask(attention_mask), images=images)
        logps = token_logprobs(model, inputs, predicted, effective_temperature(temperature),
                               logits_to_keep=keep if accepts_logits_to_keep(model) else None)
        return logps[:, :-1]
    kwargs = {"logits_to_keep": keep} if accepts_logits_to_keep(model) else {}
    inputs = {"input_ids": input_ids, "images": images, "attention_mask": attention_mask,
              "position_ids": position_ids_from_mask(attention_mask)}
    out = model(**multimodal_inputs(model, inputs), use_cache=False, **kwargs)
    # The logit at position t predicts token t + 1; the last position predicts nothing we need.
    logits = out.logits[:, -(response_len + 1) : -1, :]
    logprobs = logprobs_from_logits(logits, input_ids[:, response_start:], temperature, chunk_size)
    if not return_entropy:
        return logprobs
    return logprobs, entropy_from_logits(logits, temperature, chunk_size)
