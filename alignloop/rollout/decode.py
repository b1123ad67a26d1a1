"""The KV-cache decode loop for one batch of left-padded prompts.

Each step runs the model on one new token per running row, looks only at the last-position
logits, samples, and records the token's log-prob. Rows that finish (EOS or stop string) are
dropped from the batch and its cache right away, so later steps only pay for rows still running.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from alignloop.rollout.kv_cache import make_decode_cache
from alignloop.rollout.logprobs import cache_argument, output_cache
from alignloop.rollout.prefill import prefill
from alignloop.rollout.sampling import SamplingSettings, Scratch, sample_next
from alignloop.rollout.stops import StopChecker


@dataclass
class BatchOutput:
    prompt_ids: torch.Tensor  # [b, P_b] left padded, one row per sample
    prompt_mask: torch.Tensor  # [b, P_b]
    tokens: torch.Tensor  # [b, T] right padded with pad id, T = steps run
    logprobs: torch.Tensor  # [b, T] float32, 0 after the end
    lengths: torch.Tensor  # [b] generated tokens, the final EOS / stop token included
    ended_with_eos: torch.Tensor  # [b] bool
    ended_with_stop: torch.Tensor  # [b] bool
    prefill_seconds: float = 0.0  # wall time of the prompt forward (diagnostics: HFSampler.last_stats)
    decode_seconds: float = 0.0  # wall time of the token-by-token loop


@dataclass(frozen=True)
class DecodeOptions:
    max_new_tokens: int
    sampling: SamplingSettings
    eos_ids: torch.Tensor  # [E] long
    pad_id: int
    logits_to_keep: bool  # the model accepts ``logits_to_keep`` (skip the LM head on prompt positions)
    static_cache: bool = True  # preallocated KV buffers written in place (``kv_cache.PreallocatedLayer``)
    share_prefix: bool = True  # the batch's common prompt prefix prefilled once (``prefill.py``)
    fused_sampling: bool = True  # plain sampling in place in a reused buffer (``sampling._fused_plain_sample``)


def decode_batch(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    repeats: torch.Tensor,
    options: DecodeOptions,
    generator: torch.Generator | None,
    stop_checker: StopChecker | None,
    images: list[tuple] | None = None,
) -> BatchOutput:
    """Sample ``repeats[i]`` continuations of prompt row ``i``; output rows are in repeat-interleaved order.

    Each distinct prompt is prefilled once (its images encoded once, ``images[i]`` per prompt row), the prefix
    that all prompts share once for the whole batch (``prefill.py``); the cache is then copied to the samples.
    """
    device = prompt_ids.device
    started = time.perf_counter()
    extra = {"logits_to_keep": 1} if options.logits_to_keep else {}
    cache_kwarg = cache_argument(model)
    cache = make_decode_cache(model, prompt_ids.shape[1] + options.max_new_tokens, options.static_cache)
    done = prefill(model, prompt_ids, prompt_mask, images, cache, cache_kwarg, extra, options.share_prefix)
    cache, logits = done.cache, done.logits

    expand = torch.arange(prompt_ids.shape[0], device=device).repeat_interleave(repeats.to(device))
    if expand.numel() != prompt_ids.shape[0]:
        cache.reorder_cache(expand)
        logits = logits[expand]
    prompt_ids, prompt_mask = prompt_ids[expand], prompt_mask[expand]
    next_position = done.next_position[expand]
    attention = done.attention[expand]

    rows, max_new = prompt_ids.shape[0], options.max_new_tokens
    tokens = torch.full((rows, max_new), options.pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((rows, max_new), dtype=torch.float32, device=device)
    lengths = torch.full((rows,), max_new, dtype=torch.long, device=device)
    ended_with_eos = torch.zeros(rows, dtype=torch.bool, device=device)
    ended_with_stop = torch.zeros(rows, dtype=torch.bool, device=device)
    running = torch.arange(rows, device=device)  # output row of each row still in the batch
    eos_ids = options.eos_ids.to(device)
    steps = 0
    scratch = Scratch() if options.fused_sampling else None
    decode_started = time.perf_counter()

    for step in range(max_new):
        token, token_logprob = sample_next(logits, options.sampling, generator, scratch)
        tokens[running, step] = token
        logprobs[running, step] = token_logprob
        steps = step + 1
        done = torch.isin(token, eos_ids)
        ended_with_eos[running[done]] = True
        if stop_checker is not None:
            start = max(0, steps - stop_checker.window)
            hit = stop_checker.hits(tokens[running, start:steps]) & ~done
            ended_with_stop[running[hit]] = True
            done |= hit
        finished_now = bool(done.any())
        if finished_now:
            lengths[running[done]] = steps
        if steps == max_new or bool(done.all()):
            break
        if finished_now:
            keep = (~done).nonzero().squeeze(1)
            cache.reorder_cache(keep)
            running, attention, next_position, token = running[keep], attention[keep], next_position[keep], token[keep]
        attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
        out = model(
            input_ids=token.unsqueeze(1),
            attention_mask=attention,
            position_ids=next_position.unsqueeze(1),
            use_cache=True,
            **{cache_kwarg: cache},
            **extra,
        )
        cache, logits = output_cache(out), out.logits[:, -1, :]
        next_position = next_position + 1

    return BatchOutput(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        tokens=tokens[:, :steps],
        logprobs=logprobs[:, :steps],
        lengths=lengths,
        ended_with_eos=ended_with_eos,
        ended_with_stop=ended_with_stop,
        prefill_seconds=decode_started - started,
        decode_seconds=time.perf_counter() - decode_started,
    )
