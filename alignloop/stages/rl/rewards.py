"""Scoring a rollout: reward source call, truncation policy, normalisation, and per-token RLHF rewards."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from alignloop.models import last_token_index
from alignloop.rewards.base import has_uncertainty

__all__ = ["RunningMoments", "batch_moments", "ScoredRollout", "prompt_text", "score_rollout",
           "apply_truncation", "normalise_scores", "token_rewards"]


def prompt_text(prompt: Any) -> str:
    """The text a reward function sees: a string as is, one user message's content, or all turns joined."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        if len(prompt) == 1:
            return str(prompt[0].get("content", ""))
        return "\n\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)
    return str(prompt)


@dataclass
class ScoredRollout:
    scores: torch.Tensor  # [N] the reward source's total score (raw, before truncation policy / normalisation)
    components: dict[str, torch.Tensor] = field(default_factory=dict)  # per-function scores of a weighted sum
    uncertainty: torch.Tensor | None = None  # [N] ensemble std, when asked for and available


def score_rollout(
    reward: Any, prompts: list[Any], responses: list[str], fields: dict[str, list], want_uncertainty: bool = False
) -> ScoredRollout:
    texts = [prompt_text(p) for p in prompts]
    scores = reward.score(texts, list(responses), **fields).float().cpu()
    parts = getattr(reward, "last_components", None) or {getattr(reward, "name", "reward"): scores}
    components = {k: v.float().cpu() for k, v in parts.items()}
    uncertainty = None
    if want_uncertainty and has_uncertainty(reward):
        uncertainty = reward.uncertainty(texts, list(responses), **fields).float().cpu()
    return ScoredRollout(scores=scores, components=components, uncertainty=uncertainty)


def apply_truncation(
    scores: torch.Tensor, finished: torch.Tensor, policy: str, value: float, gap: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores after the no-EOS policy, and a [N] bool of rows that stay in the losses.

    keep: unchanged; penalty: ``score − value``; penalty_gap: ``score − value·gap`` (``gap``: ``LengthGap.gap``);
    score: ``value``; exclude: unchanged but dropped from the losses.
    """
    truncated = ~finished.bool().cpu()
    keep_rows = torch.ones_like(truncated)
    if policy in ("penalty", "penalty_gap"):
        penalty = value * gap if policy == "penalty_gap" else value
        scores = torch.where(truncated, scores - penalty, scores)
    elif policy == "score":
        scores = torch.where(truncated, torch.full_like(scores, value), scores)
    elif policy == "exclude":
        keep_rows = ~truncated
    elif policy != "keep":
        raise ValueError(f"unknown truncation policy {policy!r}")
    return scores, keep_rows


class RunningMoments:
    """Mean and std over every score seen so far (Chan et al. parallel update), for running reward normalisation."""

    def __init__(self) -> None:
        self.count = 0.0
        self.mean = 0.0
        self.m2 = 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def update(self, values: torch.Tensor, reduce=None) -> None:
        """Add ``values``; ``reduce`` (sums a list of floats over ranks) adds every rank's values alike."""
        n, batch_mean, batch_m2 = batch_moments(values, reduce)
        if n == 0:
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = float(state["count"]), float(state["mean"]), float(state["m2"])


def batch_moments(values: torch.Tensor, reduce=None) -> tuple[float, float, float]:
    """Count, mean and sum of squared deviations of ``values`` (over every rank when ``reduce`` is given)."""
    values = values.double()
    local = [float(values.numel()), float(values.sum())]
    n, total = reduce(local) if reduce is not None else local
    mean = total / n if n else 0.0
    m2 = float(((values - mean) ** 2).sum())
    if reduce is not None:
        (m2,) = reduce([m2])
    return n, mean, m2


def normalise_scores(
    scores: torch.Tensor, mode: str, running: RunningMoments, clip: float | None, reduce=None
) -> torch.Tensor:
    """``batch``: (s − mean)/std over the rollout; ``running``: over every rollout so far (this one included).
    ``reduce`` sums over data-parallel ranks, so the rollout is the global one."""
    if mode == "batch":
        n, mean, m2 = batch_moments(scores, reduce)
        if n > 1:
            scores = (scores - mean) / (math.sqrt(m2 / (n - 1)) + 1e-8)
    elif mode == "running":
        running.update(scores, reduce)
        scores = (scores - running.mean) / (running.std + 1e-8)
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    return scores


def token_rewards(
    scores: torch.Tensor, response_mask: torch.Tensor, kl: torch.Tensor | None, beta: torch.Tensor | None,
    dense: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token rewards ``r_t = −β_i·KL_t`` plus the score on the last response token (the EOS when there is one):
    the last position where ``response_mask`` is 1, which need not be its count − 1 (masks with holes).

    ``kl`` is the per-token estimate ``[N, R]`` (None: no KL in the reward); ``beta`` is ``[N]``. With ``dense``
    (a process reward model's per-step rewards, already placed on each step's final token) those replace the
    single end-of-response score.
    """
    mask = response_mask.float()
    rewards = torch.zeros_like(mask)
    if kl is not None and beta is not None:
        rewards = -beta.unsqueeze(1) * kl * mask
    if dense is not None:
        return rewards + dense.to(rewards) * mask
    last = last_token_index(mask)  # not ``mask.sum() − 1``: a multi-turn mask has holes (tool output, docs/tools.md)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += scores.to(rewards)
    return rewards
