"""KL(π ‖ π_ref) estimators per token, and controllers for the KL coefficient β.

Sign convention: tokens are SAMPLED FROM THE POLICY π, and

    log_ratio = log π(y_t) − log π_ref(y_t)          (``logp − ref_logp``)

Following Schulman, "Approximating KL divergence" (2020), with
``r = π_ref/π = exp(−log_ratio)``, the estimators of KL(π ‖ π_ref) are

    k1 = −log r        = log_ratio                   unbiased, high variance, can be < 0
    k2 = ½ (log r)²    = ½ log_ratio²                biased, low variance, ≥ 0
    k3 = (r − 1) − log r = exp(−log_ratio) − 1 + log_ratio   unbiased, ≥ 0 (GRPO's choice)
    abs = |log_ratio|

Summing k1 over a response gives the sequence log-ratio that PPO-RLHF
subtracts from the reward (Ziegler et al. 2019, Stiennon et al. 2020).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "KL_ESTIMATORS",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_abs",
    "kl_penalty",
    "FixedKLController",
    "AdaptiveKLController",
    "UncertaintyKLController",
]

# exp(20) ≈ 4.9e8: keeps k3 finite in fp32/bf16 when a token's log-ratio is extreme.
_K3_LOG_RATIO_CLAMP = 20.0


def kl_k1(log_ratio: Tensor) -> Tensor:
    """k1 = log π − log π_ref."""
    return log_ratio


def kl_k2(log_ratio: Tensor) -> Tensor:
    """k2 = ½ (log π − log π_ref)²."""
    return 0.5 * log_ratio.square()


def kl_k3(log_ratio: Tensor) -> Tensor:
    """k3 = (r − 1) − log r with r = π_ref/π, i.e. ``exp(−lr) − 1 + lr``.

    The log-ratio is clamped to ±20 first so ``exp`` cannot overflow; this only
    changes values for tokens whose probabilities differ by a factor > 4.9e8.
    """
    lr = log_ratio.clamp(-_K3_LOG_RATIO_CLAMP, _K3_LOG_RATIO_CLAMP)
    return torch.expm1(-lr) + lr


def kl_abs(log_ratio: Tensor) -> Tensor:
    """|log π − log π_ref|."""
    return log_ratio.abs()


KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
    "abs": kl_abs,
}


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k1") -> Tensor:
    """Per-token KL estimate from the policy's and the reference's log-probs of the sampled tokens."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; choose one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](logp - ref_logp)


class FixedKLController:
    """A constant β."""

    def __init__(self, beta: float):
        if beta < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {beta}")
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No change; returns β."""
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller driving the observed KL toward ``target`` (Ziegler et al. 2019, §2.2).

    ``e = clip(KL/target − 1, −0.2, 0.2)``;  ``β ← β · (1 + e · n_steps / horizon)``

    ``n_steps`` is the number of samples (or steps) since the last update.
    """

    def __init__(self, init_beta: float, target: float, horizon: float):
        if init_beta <= 0 or target <= 0 or horizon <= 0:
            raise ValueError(f"init_beta, target and horizon must be > 0, got {init_beta}, {target}, {horizon}")
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])


class UncertaintyKLController:
    """Per-sample β that grows where the reward ensemble disagrees.

    ``β_i = min(β · (1 + coef · std_i / mean_j(std_j)), max_scale · β)``

    where β comes from ``base`` (fixed or adaptive) and ``std_i`` is the
    ensemble's standard deviation for sample i. Dividing by the batch mean
    makes ``coef`` independent of the reward scale; samples the ensemble is
    unsure about are held closer to the reference, where reward hacking is
    most likely (in the spirit of Coste et al. 2024, uncertainty-weighted
    optimisation). If every std is 0, all β_i = β.
    """

    def __init__(self, base: FixedKLController | AdaptiveKLController, coef: float = 1.0, max_scale: float = 5.0):
        if coef < 0 or max_scale < 1:
            raise ValueError(f"coef must be >= 0 and max_scale >= 1, got {coef}, {max_scale}")
        self.base = base
        self.coef = float(coef)
        self.max_scale = float(max_scale)

    @property
    def value(self) -> float:
        return self.base.value

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.base.update(current_kl, n_steps)

    def per_sample_beta(self, std: Tensor) -> Tensor:
        std = std.detach().float()
        mean_std = std.mean()
        safe_mean = mean_std.clamp(min=torch.finfo(std.dtype).tiny)
        relative = torch.where(mean_std > 0, std / safe_mean, torch.zeros_like(std))
        return (self.value * (1.0 + self.coef * relative)).clamp(max=self.max_scale * self.value)

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "coef": self.coef, "max_scale": self.max_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        self.coef = float(state["coef"])
        self.max_scale = float(state["max_scale"])
