"""The sampler–trainer log-prob gap of a rollout and its truncated-importance-sampling correction (``tis``).

``RLStage.rollout_phase`` calls ``correct_off_policy`` once per rollout, after the algorithm made its targets. When
the trainer computed its own old log-probs (``reuse_sampler_logprobs: false``, which ``tis`` implies), the gap to
the sampler's log-probs is logged (``algos.logprob_gap_stats``); with ``tis`` set the advantages are multiplied by
the detached weights ``algos.tis_weights`` — the same as weighting every registered policy loss per token (see
algos/off_policy.py). The trainer's old log-probs stay the PPO/GRPO ratio's denominator. docs/grpo.md.
"""

from __future__ import annotations

from typing import Any

import torch

from alignloop.algos import logprob_gap_stats, tis_weights
from alignloop.stages.rl.experience import Experience

__all__ = ["correct_off_policy"]


def correct_off_policy(experience: Experience, sampler_logp: torch.Tensor | None, response_mask: torch.Tensor,
                       opts: Any) -> dict[str, float]:
    """Log the gap (when the sampler's log-probs are there and the trainer's were computed apart) and apply TIS.

    ``sampler_logp`` ``[N, R]``: the rollout's own log-probs, or None when the old log-probs ARE the sampler's
    (``reuse_sampler_logprobs``), in which case there is nothing to compare and nothing to correct.
    """
    if sampler_logp is None:
        return {}
    old = experience.old_logprobs
    sampler_logp = sampler_logp.to(old.device).float()
    cap = getattr(opts, "tis", None)
    stats = {k: float(v) for k, v in logprob_gap_stats(old, sampler_logp, response_mask, cap).items()}
    if cap is not None:
        weights = tis_weights(old, sampler_logp, response_mask, cap, mode=opts.tis_mode, level=opts.tis_level)
        experience.advantages = experience.advantages * weights.to(experience.advantages)
        stats["rollout/tis_weight_mean"] = float(weights[response_mask.bool()].mean()) if response_mask.any() else 0.0
    return stats
