"""Splitting prompts across rollout workers and joining their rollouts back into one ``Rollout``."""

from __future__ import annotations

from typing import Sequence

from alignloop.rollout import concat_rollouts

__all__ = ["concat_rollouts", "split_evenly"]  # concat_rollouts lives in alignloop.rollout (the RL stages use it)


def split_evenly(items: Sequence, parts: int) -> list[list]:
    """Contiguous chunks whose sizes differ by at most one (empty chunks dropped): prompt order is kept."""
    n = len(items)
    bounds = [n * i // parts for i in range(parts + 1)]
    return [list(items[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]
