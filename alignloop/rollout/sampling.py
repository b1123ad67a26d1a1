"""Choosing the next token from last-position logits: temperature, top-k, top-p, greedy.

Which log-prob is reported with each token (``SamplingSettings.logprobs``):

* ``full`` (default): ``log softmax(logits / T)[token]`` over the whole vocabulary, also when top-k / top-p cut
  the choice: the policy's own log-prob, which the trainer recomputes from the logits alone (so it can stand in
  for π_old, ``reuse_sampler_logprobs``);
* ``sampled``: the log-prob under the distribution the token was really drawn from, the top-k / top-p candidates
  renormalised at temperature T (greedy: 0, a point mass). Truncated importance sampling needs it: under ``full``
  the truncation is invisible to the ratio π_old / π_sampler. Without top-k / top-p both are the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from alignloop.errors import ConfigError


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 means no top-k cut
    top_p: float = 1.0  # 1 means no nucleus cut
    logprobs: Literal["full", "sampled"] = "full"  # which distribution the reported log-probs are under

    def __post_init__(self) -> None:
        if self.logprobs not in ("full", "sampled"):
            raise ConfigError(f"logprobs: expected 'full' or 'sampled', got {self.logprobs!r}")
        if self.temperature < 0:
            raise ConfigError(f"temperature: must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k: must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _nucleus_cut(sorted_logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask (to -inf) the tail of descending-sorted logits outside the smallest set with mass >= top_p."""
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    # The most likely token has mass_before == 0, so it always survives.
    return sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))


def _inverse_cdf_sample(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row with probability proportional to ``weights [B, K]`` (non-negative, unnormalised).

    One uniform per row and a binary search in the float64 running sum. ``torch.multinomial``
    on CPU draws an exponential for every vocabulary entry instead, which costs more than the
    rest of the step's sampling for a 50k vocabulary.
    """
    cdf = weights.double().cumsum(dim=-1)
    uniform = torch.rand((weights.shape[0], 1), dtype=torch.float64, device=weights.device, generator=generator)
    # right=True: the first entry whose cdf exceeds the target, so zero-weight entries are never picked.
    index = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True)
    return index.squeeze(-1).clamp(max=weights.shape[-1] - 1)


BLOCK = 1024  # vocabulary entries per block of the two-level inverse-CDF search


class Scratch:
    """One ``[B, V]`` float32 buffer reused by every step of a decode batch. A fresh 12 MB tensor per step (batch 64,
    49k vocabulary) is above glibc's mmap threshold and page-faults in on every use."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def take(self, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
        numel = shape[0] * shape[1]
        if self.buffer is None or self.buffer.numel() < numel or self.buffer.device != device:
            self.buffer = torch.empty(numel, dtype=torch.float32, device=device)
        return self.buffer[:numel].view(shape)


def _fused_plain_sample(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None, scratch: Scratch
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sample_next`` without top-k / top-p, in place in one scratch buffer, with a two-level search.

    The same distribution and the same uniform per row as the plain path: the tempered logits are cast into the
    buffer, ``exp(x - max)`` overwrites them, and the token is found first among blocks of ``BLOCK`` entries (their
    float64 sums) and then inside its block (a float64 running sum of ``BLOCK`` entries), instead of a float64
    running sum over the whole vocabulary. Only the summation order differs, so a token can differ from the plain
    path's only when the uniform falls within float64 rounding of a boundary; log-probs agree to float32 rounding.
    """
    rows, vocab = logits.shape
    x = scratch.take((rows, vocab), logits.device).copy_(logits)  # float32, as the plain path computes
    if temperature != 1.0:
        x.div_(temperature)
    peak = x.amax(dim=-1, keepdim=True)
    weights = x.sub_(peak).exp_()  # exp(x - max), in place
    full = vocab // BLOCK * BLOCK
    sums = weights[:, :full].view(rows, -1, BLOCK).sum(dim=-1, dtype=torch.float64)
    if full < vocab:
        sums = torch.cat([sums, weights[:, full:].sum(dim=-1, keepdim=True, dtype=torch.float64)], dim=1)
    cdf = sums.cumsum(dim=-1)
    total = cdf[:, -1:]
    uniform = torch.rand((rows, 1), dtype=torch.float64, device=logits.device, generator=generator)
    # strictly below the total, so the search lands in a block (and on an entry) with positive weight
    target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    block = torch.searchsorted(cdf, target, right=True)
    before = torch.where(block > 0, cdf.gather(1, (block - 1).clamp(min=0)), torch.zeros_like(target))
    index = block * BLOCK + torch.arange(BLOCK, device=logits.device)
    inside = index < vocab
    local = weights.gather(1, index.clamp(max=vocab - 1)).double().masked_fill_(~inside, 0.0).cumsum_(dim=-1)
    rest = torch.minimum(target - before, torch.nextafter(local[:, -1:], torch.zeros_like(target)))
    tokens = (block * BLOCK + torch.searchsorted(local, rest, right=True).clamp(max=BLOCK - 1)).squeeze(-1)
    log_normalizer = peak + total.log().float()  # log sum exp(x), from the float64 block sums
    chosen = logits.gather(-1, tokens.unsqueeze(-1)).float()
    chosen = chosen / temperature if temperature != 1.0 else chosen
    return tokens, (chosen - log_normalizer).squeeze(-1)


def sample_next(
    logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None,
    scratch: Scratch | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of ``logits [B, V]`` (float32, or the model's dtype when ``scratch`` is given).

    Returns ``(tokens [B], logprobs [B])``. With ``settings.logprobs == "full"`` the log-prob is under
    ``softmax(logits / T)`` over the full vocabulary (see ``alignloop.rollout.logprobs``), also when top-k / top-p
    restricted the choice; greedy reports it at ``T = 1``. With ``"sampled"`` it is under the renormalised
    candidates the token was drawn from (greedy: 0). With a ``scratch`` buffer, plain sampling (no top-k / top-p,
    where both conventions agree) takes the fused in-place path (``_fused_plain_sample``).
    """
    plain = not settings.greedy and not 0 < settings.top_k < logits.shape[-1] and settings.top_p >= 1.0
    if scratch is not None and plain:
        return _fused_plain_sample(logits, settings.temperature, generator, scratch)
    logits = logits.float()
    if settings.greedy:
        tokens = logits.argmax(dim=-1)
        if settings.logprobs == "sampled":  # a point mass on the argmax
            return tokens, torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        scaled = logits
        log_normalizer = scaled.logsumexp(dim=-1, keepdim=True)
    else:
        scaled = logits / settings.temperature if settings.temperature != 1.0 else logits
        log_normalizer = scaled.logsumexp(dim=-1, keepdim=True)
        vocab = scaled.shape[-1]
        use_top_k = 0 < settings.top_k < vocab
        if use_top_k or settings.top_p < 1.0:
            # Sample among candidates only: top-k gives them already sorted; top-p alone needs a full sort.
            if use_top_k:
                candidates, candidate_ids = scaled.topk(settings.top_k, dim=-1)
            else:
                candidates, candidate_ids = scaled.sort(dim=-1, descending=True)
            if settings.top_p < 1.0:
                candidates = _nucleus_cut(candidates, settings.top_p)
            choice = _inverse_cdf_sample(torch.exp(candidates - candidates[:, :1]), generator)
            tokens = candidate_ids.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
            if settings.logprobs == "sampled":  # renormalised over the candidates (cut ones are -inf)
                picked = candidates.gather(-1, choice.unsqueeze(-1))
                return tokens, (picked - candidates.logsumexp(dim=-1, keepdim=True)).squeeze(-1)
        else:
            tokens = _inverse_cdf_sample(torch.exp(scaled - log_normalizer), generator)
    chosen = scaled.gather(-1, tokens.unsqueeze(-1))
    return tokens, (chosen - log_normalizer).squeeze(-1)
