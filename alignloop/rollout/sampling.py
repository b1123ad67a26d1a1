"""Choosing the next token from last-position logits: temperature, top-k, top-p, greedy."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignloop.errors import ConfigError


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 means no top-k cut
    top_p: float = 1.0  # 1 means no nucleus cut

    def __post_init__(self) -> None:
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


def sample_next(
    logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of ``logits [B, V]`` (float32).

    Returns ``(tokens [B], logprobs [B])``. The log-prob is under ``softmax(logits / T)`` over
    the full vocabulary (see ``alignloop.rollout.logprobs``), also when top-k / top-p restricted
    the choice; greedy reports it at ``T = 1``.
    """
    if settings.greedy:
        scaled = logits
        log_normalizer = scaled.logsumexp(dim=-1, keepdim=True)
        tokens = logits.argmax(dim=-1)
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
        else:
            tokens = _inverse_cdf_sample(torch.exp(scaled - log_normalizer), generator)
    chosen = scaled.gather(-1, tokens.unsqueeze(-1))
    return tokens, (chosen - log_normalizer).squeeze(-1)
