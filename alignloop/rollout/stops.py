"""Stop strings: detected incrementally during decoding, removed from the final text."""

from __future__ import annotations

from typing import Any, Sequence

import torch

# Extra tokens decoded before the window that can hold a stop string: the first token of a
# window may decode badly (a split UTF-8 character, a dropped leading space), so keep it away
# from the stop text.
_WINDOW_SLACK = 2


def normalize_stops(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    return [s for s in stops if s]


class StopChecker:
    """Finds rows whose newest tokens complete a stop string.

    Called once per decoding step, it decodes only the last few tokens of the still-running
    rows (one batched, Rust-side decode) instead of the whole response. A stop string first
    appears when its last byte arrives, and every token carries at least one byte, so it lies
    within the last ``len(stop.encode())`` tokens.
    """

    def __init__(self, tokenizer: Any, stops: list[str]):
        self.tokenizer = tokenizer
        self.stops = stops
        self.window = max(len(s.encode("utf-8")) for s in stops) + _WINDOW_SLACK

    def hits(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, t]`` are the response tokens so far of the running rows; returns ``[B]`` bool."""
        tail = tokens[:, -self.window :].tolist()
        texts = self.tokenizer.batch_decode(tail, skip_special_tokens=True)
        found = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(found, dtype=torch.bool, device=tokens.device)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    positions = [pos for pos in (text.find(stop) for stop in stops) if pos >= 0]
    if not positions:
        return text, False
    return text[: min(positions)], True
