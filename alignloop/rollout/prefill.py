"""The prompt forward of one decode batch, with the prefix that all its prompts share computed once.

Chat prompts start with the same template text (SmolLM2's default system message is ~30 of a typical prompt's
~40 tokens), so most of a batch's prefill is the same tokens at the same positions in every row. With
``share_prefix`` the longest common prefix is run once for a single row, its keys and values are copied to
every row, and only each row's own suffix is run, left padded and attending to the copied prefix. The cache
then holds ``[prefix | padding | suffix]`` per row, which the attention mask and explicit positions describe
exactly: every real token sees the same keys at the same positions as in a plain prefill, so the result is the
same distribution up to floating-point summation order (tested: greedy tokens equal, log-probs within 1e-4 in
fp32). Vision-language prompts (images, M-RoPE positions) always take the plain path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from alignloop.models.images import multimodal_inputs
from alignloop.rollout.base import position_ids_from_mask
from alignloop.rollout.logprobs import output_cache

MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth the extra forward call


@dataclass
class Prefilled:
    logits: torch.Tensor  # [B, V] last-position logits of each prompt row
    cache: Any  # the KV cache after the prompts
    attention: torch.Tensor  # [B, K] attention mask over the cached positions
    next_position: torch.Tensor  # [B] position of each row's first generated token
    shared: int  # tokens of the common prefix computed once (0: plain prefill)


def shared_prefix_length(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> int:
    """Tokens that every left-padded row starts with, leaving each row at least one token of its own."""
    lengths = prompt_mask.sum(dim=1)
    shortest = int(lengths.min())
    if prompt_ids.shape[0] < 2 or shortest < 2:
        return 0
    columns = (prompt_ids.shape[1] - lengths).unsqueeze(1) + torch.arange(shortest, device=prompt_ids.device)
    aligned = prompt_ids.gather(1, columns)  # [B, shortest]: the rows' real tokens, left aligned
    same = (aligned == aligned[:1]).all(dim=0).long()
    return min(int(same.cumprod(dim=0).sum()), shortest - 1)


def prefill(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, images: list | None,
            cache: Any, cache_kwarg: str, extra: dict[str, Any], share_prefix: bool) -> Prefilled:
    """Run the prompts through ``model`` into ``cache`` (None: the model makes its own)."""
    positions = position_ids_from_mask(prompt_mask)
    inputs = multimodal_inputs(model, {"input_ids": prompt_ids, "images": images, "attention_mask": prompt_mask,
                                       "position_ids": positions})
    plain = images is not None or inputs["position_ids"].dim() != 2
    shared = 0 if plain or not share_prefix else shared_prefix_length(prompt_ids, prompt_mask)
    cached = {cache_kwarg: cache} if cache is not None else {}
    if shared < MIN_SHARED_PREFIX:
        out = model(**inputs, use_cache=True, **extra, **cached)
        # M-RoPE models (Qwen2-VL) get [3, B, P] positions: the text after the prompt continues from the last one
        last = inputs["position_ids"][0] if inputs["position_ids"].dim() == 3 else inputs["position_ids"]
        return Prefilled(out.logits[:, -1, :], output_cache(out), prompt_mask, last[:, -1] + 1, 0)

    rows, width = prompt_ids.shape
    device = prompt_ids.device
    start = width - int(prompt_mask[0].sum())  # row 0's first real token
    prefix = prompt_ids[:1, start : start + shared]
    out = model(input_ids=prefix, attention_mask=torch.ones_like(prefix),
                position_ids=torch.arange(shared, device=device).unsqueeze(0), use_cache=True, **extra, **cached)
    cache = output_cache(out)
    cache.reorder_cache(torch.zeros(rows, dtype=torch.long, device=device))  # the prefix, once per row

    lengths = prompt_mask.sum(dim=1)
    suffix_width = int(lengths.max()) - shared
    suffix_ids = prompt_ids[:, width - suffix_width :]
    own = lengths - shared  # each row's own tokens, right aligned in the last suffix_width columns
    suffix_mask = (torch.arange(suffix_width, device=device).unsqueeze(0) >= (suffix_width - own).unsqueeze(1)).long()
    attention = torch.cat([prompt_mask.new_ones((rows, shared)), suffix_mask], dim=1)
    suffix_positions = (shared + suffix_mask.cumsum(dim=1) - 1).clamp(min=shared)
    out = model(input_ids=suffix_ids, attention_mask=attention, position_ids=suffix_positions, use_cache=True,
                **extra, **{cache_kwarg: cache})
    return Prefilled(out.logits[:, -1, :], output_cache(out), attention, lengths.clone(), shared)
