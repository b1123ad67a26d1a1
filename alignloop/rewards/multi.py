"""Multi-objective rewards: fixed weights (``WeightedSum``) or constraints with online Lagrange multipliers.

``ConstrainedReward`` maximises one objective subject to ``constraint_i ≥ τ_i`` (e.g. "helpful
subject to harmless ≥ 0"), as in Safe-RLHF. The policy is trained on the Lagrangian

    r = (r_objective + Σ_i λ_i · (c_i − τ_i)) / (1 + Σ_i λ_i)        (÷ only when ``normalize``)

and after each scored batch every multiplier takes a projected gradient step on the dual:

    λ_i ← clip(λ_i + lr_i · (τ_i − mean(c_i)), 0, max_multiplier)

so λ_i rises while the constraint is violated on average and falls (to 0) once it holds. Every
objective's scores are in ``last_components`` (logged by the RL stages); ``metrics()`` gives the
multipliers and constraint means. ``build_constrained`` (in ``alignloop.rewards.build``) reads the config form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from alignloop.errors import ConfigError
from alignloop.rewards.base import RewardSource, WeightedSum, as_score_tensor, has_uncertainty

__all__ = ["Constraint", "ConstrainedReward", "WeightedSum"]


@dataclass
class Constraint:
    """``source`` must score at least ``threshold`` on average; ``lr`` is the multiplier's step size."""

    source: Any
    threshold: float
    name: str | None = None
    lr: float = 0.05
    initial_multiplier: float = 0.0
    max_multiplier: float = 100.0

    def __post_init__(self) -> None:
        if not isinstance(self.source, RewardSource):
            raise ConfigError(f"constraint {self.name!r}: {self.source!r} is not a reward source")
        if self.lr < 0 or self.initial_multiplier < 0 or self.max_multiplier < self.initial_multiplier:
            raise ConfigError(f"constraint {self.label!r}: need lr ≥ 0 and 0 ≤ initial_multiplier ≤ max_multiplier")

    @property
    def label(self) -> str:
        return self.name or self.source.name


class ConstrainedReward:
    """Maximise ``objective`` subject to each constraint; multipliers update online on every ``score`` call."""

    def __init__(self, objective: Any, constraints: Sequence[Constraint], *, normalize: bool = True,
                 update_on_score: bool = True, name: str = "constrained"):
        if not isinstance(objective, RewardSource):
            raise ConfigError(f"objective: {objective!r} is not a reward source")
        if not constraints:
            raise ConfigError("a constrained reward needs at least one constraint")
        self.objective = objective
        self.constraints = list(constraints)
        labels = [objective.name] + [c.label for c in self.constraints]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"objective and constraint names must differ, got {labels}")
        self.multipliers = [float(c.initial_multiplier) for c in self.constraints]
        self.normalize = normalize
        self.update_on_score = update_on_score
        self.name = name
        self.last_components: dict[str, torch.Tensor] = {}
        self.last_means: dict[str, float] = {}

    @property
    def supports_uncertainty(self) -> bool:
        return has_uncertainty(self.objective) or any(has_uncertainty(c.source) for c in self.constraints)

    def _weights(self) -> list[float]:
        scale = 1.0 / (1.0 + sum(self.multipliers)) if self.normalize else 1.0
        return [scale] + [scale * lam for lam in self.multipliers]

    def score(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor:
        n = len(completions)
        objective = self.objective.score(prompts, completions, **fields)
        values = [as_score_tensor(objective, n, f"objective {self.objective.name!r}")]
        for c in self.constraints:
            values.append(as_score_tensor(c.source.score(prompts, completions, **fields), n, f"constraint {c.label!r}"))
        weights = self._weights()
        total = weights[0] * values[0]
        for weight, c, v in zip(weights[1:], self.constraints, values[1:]):
            total = total + weight * (v - c.threshold)
        constraint_values = {c.label: v for c, v in zip(self.constraints, values[1:])}
        self.last_components = {self.objective.name: values[0], **constraint_values}
        self.last_means = {name: float(v.mean()) for name, v in self.last_components.items()}
        if self.update_on_score:
            self.update([float(v.mean()) for v in values[1:]])
        return total

    def update(self, constraint_means: Sequence[float]) -> None:
        """One dual step per constraint: λ ← clip(λ + lr·(τ − mean), 0, max)."""
        if len(constraint_means) != len(self.constraints):
            raise ValueError(f"{len(constraint_means)} means for {len(self.constraints)} constraints")
        for i, (c, mean) in enumerate(zip(self.constraints, constraint_means)):
            self.multipliers[i] = min(max(self.multipliers[i] + c.lr * (c.threshold - mean), 0.0), c.max_multiplier)

    def uncertainty(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor:
        """``sqrt(Σ w_i² std_i²)`` at the current weights, over the parts that report a std."""
        variance = torch.zeros(len(completions))
        sources = [self.objective] + [c.source for c in self.constraints]
        for weight, source in zip(self._weights(), sources):
            if has_uncertainty(source):
                std = as_score_tensor(source.uncertainty(prompts, completions, **fields), len(completions), source.name)
                variance += (weight * std) ** 2
        return variance.sqrt()

    def metrics(self) -> dict[str, float]:
        """``lagrange/<name>`` per multiplier and ``objectives/<name>`` (mean of the last batch) per objective."""
        out = {f"lagrange/{c.label}": lam for c, lam in zip(self.constraints, self.multipliers)}
        out.update({f"objectives/{name}": mean for name, mean in self.last_means.items()})
        return out

    def state_dict(self) -> dict:
        return {"multipliers": list(self.multipliers)}

    def load_state_dict(self, state: dict) -> None:
        if len(state["multipliers"]) != len(self.constraints):
            raise ConfigError("saved multipliers do not match the configured constraints")
        self.multipliers = [float(x) for x in state["multipliers"]]

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{c.label}≥{c.threshold:g} (λ={lam:.3g})" for c, lam in zip(self.constraints, self.multipliers)
        )
        return f"ConstrainedReward(max {self.objective.name} s.t. {parts})"
