"""Where the KL penalty to the reference lives and how large it is: the one answer for every RL stage.

The coefficient β comes from a controller chosen by name (``KL_CONTROLLERS``): ``fixed``; ``adaptive``
(Ziegler et al. 2019 §2.2, toward ``kl_target``); ``uncertainty`` (β_i scaled by a reward ensemble's std).
The penalty sits in one of two places (``placement``):

- ``reward``: ``r_t = −β_i·KL_t`` in the per-token reward (PPO's default, Ziegler et al.), estimated once per
  rollout from the sampling log-probs;
- ``loss``: a ``β·KL`` loss term on the current log-probs (GRPO, DeepSeekMath; PPO's ``kl_placement: loss``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from alignloop.algos import (
    AdaptiveKLController,
    FixedKLController,
    UncertaintyKLController,
    aggregate_loss,
    kl_penalty,
    masked_mean,
)
from alignloop.errors import ConfigError

__all__ = ["KL_CONTROLLERS", "KLPenalty", "make_kl_controller"]


def _fixed(opts: Any) -> FixedKLController:
    return FixedKLController(opts.kl_coef)


def _adaptive(opts: Any) -> AdaptiveKLController:
    return AdaptiveKLController(opts.kl_coef, opts.kl_target, opts.kl_horizon)


def _uncertainty(opts: Any) -> UncertaintyKLController:
    return UncertaintyKLController(FixedKLController(opts.kl_coef), opts.uncertainty_coef, opts.uncertainty_max_scale)


KL_CONTROLLERS: dict[str, Callable[[Any], Any]] = {"fixed": _fixed, "adaptive": _adaptive, "uncertainty": _uncertainty}


def make_kl_controller(opts: Any, section: str) -> Any:
    """The controller named by ``opts.kl_controller`` (``fixed`` when the stage has no such option)."""
    name = getattr(opts, "kl_controller", "fixed")
    if name not in KL_CONTROLLERS:
        raise ConfigError(f"{section}.kl_controller: unknown {name!r}; known: {', '.join(sorted(KL_CONTROLLERS))}")
    if name != "fixed" and opts.kl_coef <= 0:
        raise ConfigError(f"{section}.kl_coef: the {name} controller needs kl_coef > 0")
    return KL_CONTROLLERS[name](opts)


class KLPenalty:
    """β (a controller), the estimator, and the placement of one stage's KL penalty."""

    def __init__(self, opts: Any, section: str, placement: str):
        self.controller = make_kl_controller(opts, section)
        self.estimator = opts.kl_estimator
        self.placement = placement
        self.per_sample = getattr(opts, "kl_controller", "fixed") == "uncertainty"

    @property
    def in_reward(self) -> bool:
        return self.placement == "reward"

    @property
    def value(self) -> float:
        return float(self.controller.value)

    def betas(self, n: int, uncertainty: torch.Tensor | None = None) -> torch.Tensor:
        """β per sample ``[n]``: the controller's value, or scaled by each sample's reward std."""
        if self.per_sample:
            return self.controller.per_sample_beta(uncertainty)
        return torch.full((n,), self.value)

    def per_token(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The per-token estimate ``[N, R]`` (zero off the response)."""
        return kl_penalty(logprobs, ref_logprobs, self.estimator) * mask

    def loss_term(self, logprobs: torch.Tensor, batch: dict, mask: torch.Tensor, agg: str,
                  max_len: int) -> tuple[torch.Tensor | None, dict[str, float]]:
        """``aggregate(β·KL)`` on the current log-probs when the batch carries the loss placement's inputs."""
        if batch.get("ref_logprobs") is None or batch.get("kl_coef") is None:
            return None, {}
        kl = kl_penalty(logprobs, batch["ref_logprobs"], self.estimator)
        beta = batch["kl_coef"].to(kl).unsqueeze(1)
        return aggregate_loss(beta * kl, mask, agg, max_len), {"kl": float(masked_mean(kl.detach(), mask))}

    def update(self, mean_kl: float, samples: int) -> None:
        """The controller sees a rollout's sequence KL and sets β for the next rollout."""
        self.controller.update(mean_kl, samples)

    def state_dict(self) -> dict:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state)
