"""The no-EOS policies that learn from the rollouts: ``penalty_gap`` (the reward's running premium for cut answers),
``adaptive`` (a penalty that a controller raises while the policy's cut rate is above a target) and ``residual``
(the part of the score that length predicts, fitted on every rollout so far, taken out)."""

from __future__ import annotations

from typing import Any

import torch

from alignloop.algos import length_coefficients, length_features, length_residual, regression_sums
from alignloop.stages.rl.rewards import RunningMoments, apply_truncation

__all__ = ["LengthGap", "CutRateController", "LengthResidual", "NoEosControl"]


class LengthGap:
    """How much more the reward pays, on average, for an answer cut at the token limit than for a finished one:
    running mean score of cut answers minus that of finished ones over every rollout so far, never negative.
    ``truncation: penalty_gap`` subtracts it from cut answers, so running to the limit earns nothing on average
    whatever the reward model's scale (it differs from seed to seed)."""

    def __init__(self) -> None:
        self.cut = RunningMoments()
        self.finished = RunningMoments()

    def update(self, scores: torch.Tensor, finished: torch.Tensor, reduce=None) -> None:
        done = finished.bool().cpu()
        self.cut.update(scores[~done], reduce)
        self.finished.update(scores[done], reduce)

    @property
    def gap(self) -> float:
        if self.cut.count == 0 or self.finished.count == 0:
            return 0.0
        return max(0.0, self.cut.mean - self.finished.mean)

    def state_dict(self) -> dict[str, dict[str, float]]:
        return {"cut": self.cut.state_dict(), "finished": self.finished.state_dict()}

    def load_state_dict(self, state: dict[str, dict[str, float]] | None) -> None:
        if state is not None:  # None: nothing saved (a checkpoint written before this existed)
            self.cut.load_state_dict(state["cut"])
            self.finished.load_state_dict(state["finished"])


class CutRateController:
    """An integral controller on the share of answers cut at the token limit, like the adaptive KL controller but
    on a rate: after each rollout ``coef ← max(floor, coef + gain·(rate − target))``, and cut answers lose
    ``coef × the running std of the raw scores`` (std units, so one setting fits reward models of any scale).
    The floor is the starting coefficient: below the target the penalty falls back to it, not to nothing (a
    rollout's rate is noisy, and a policy that runs long again is hard to bring back).
    ``target`` None: the first rollout's rate, i.e. the starting policy's (the reference's, before any update)."""

    def __init__(self, coef: float, gain: float, target: float | None = None) -> None:
        self.floor = max(0.0, float(coef))
        self.coef, self.gain, self.target = self.floor, float(gain), target
        self.scale = RunningMoments()
        self.rate = 0.0

    def update(self, scores: torch.Tensor, finished: torch.Tensor, reduce=None) -> None:
        local = [float(finished.numel()), float((~finished.bool()).sum())]
        n, cut = reduce(local) if reduce is not None else local
        if n == 0:
            return
        self.rate = cut / n
        if self.target is None:
            self.target = self.rate
        self.coef = max(self.floor, self.coef + self.gain * (self.rate - self.target))
        self.scale.update(scores, reduce)

    @property
    def penalty(self) -> float:
        return self.coef * self.scale.std  # RunningMoments.std is 1.0 until two scores are seen

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self.coef, "target": self.target, "rate": self.rate, "scale": self.scale.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coef, self.target, self.rate = float(state["coef"]), state["target"], float(state["rate"])
        self.scale.load_state_dict(state["scale"])


class LengthResidual:
    """A least-squares fit of the raw score on the answer's length and on whether it was cut, over every rollout so
    far (this one included); ``adjust`` subtracts what the fit predicts beyond the mean. The reward model's
    premium for length, gradual or a jump at the limit, then earns nothing on average, in either direction,
    without a penalty to size: a fixed penalty's right size differs between reward models, and a controller on
    the cut rate flips it (docs/ppo.md, Holding the no-EOS rate)."""

    features = 2  # length in tokens, cut at the limit

    def __init__(self) -> None:
        self.sums = torch.zeros(2 + self.features + self.features**2 + self.features, dtype=torch.float64)

    def adjust(self, scores: torch.Tensor, lengths: torch.Tensor, finished: torch.Tensor, reduce=None) -> torch.Tensor:
        x = length_features(lengths, finished)
        local = regression_sums(x, scores)
        self.sums += torch.tensor(reduce(local.tolist()), dtype=torch.float64) if reduce is not None else local
        slopes, mean_x = self.coefficients()
        return length_residual(scores, x, slopes, mean_x)  # the shift is formed on the CPU, then cast to scores

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        return length_coefficients(self.sums, self.features)

    def state_dict(self) -> list[float]:
        return self.sums.tolist()

    def load_state_dict(self, state: list[float]) -> None:
        self.sums = torch.tensor(state, dtype=torch.float64)


class NoEosControl:
    """The RL stage's ``truncation`` option with whatever state it keeps across rollouts (checkpointed)."""

    def __init__(self, policy: str, value: float, gain: float = 2.0, target: float | None = None) -> None:
        self.policy, self.value = policy, value
        self.gap = LengthGap()  # penalty_gap's penalty; tracked (and checkpointed) under every policy
        self.controller = CutRateController(value, gain, target) if policy == "adaptive" else None
        self.residual = LengthResidual() if policy == "residual" else None

    def apply(
        self, scores: torch.Tensor, finished: torch.Tensor, reduce=None, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores after the policy (what it learned from this rollout included) and the rows kept in the losses.
        ``lengths`` (tokens per answer) is needed by ``residual`` only."""
        self.gap.update(scores, finished, reduce)
        if self.residual is not None:
            if lengths is None:
                raise ValueError("truncation: residual needs the answers' lengths")
            return self.residual.adjust(scores, lengths, finished, reduce), torch.ones_like(finished.bool().cpu())
        if self.controller is not None:
            self.controller.update(scores, finished, reduce)
            return apply_truncation(scores, finished, "penalty", self.controller.penalty)
        return apply_truncation(scores, finished, self.policy, self.value, self.gap.gap)

    def stats(self) -> dict[str, float]:
        if self.controller is not None:
            return {"objective/truncation_penalty": self.controller.penalty,
                    "objective/truncation_coef": self.controller.coef,
                    "objective/truncation_target": float(self.controller.target or 0.0)}
        if self.policy == "penalty_gap":
            return {"objective/truncation_penalty": self.value * self.gap.gap}
        if self.residual is not None:
            slopes, _ = self.residual.coefficients()
            return {"objective/length_slope": float(slopes[0]), "objective/cut_premium": float(slopes[1])}
        return {}

    def state_dict(self) -> dict[str, Any]:
        controller = self.controller.state_dict() if self.controller is not None else None
        residual = self.residual.state_dict() if self.residual is not None else None
        return {"length_gap": self.gap.state_dict(), "controller": controller, "residual": residual}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """``state`` None or without a controller: a checkpoint from before this option (it starts afresh)."""
        if state is None:
            return
        self.gap.load_state_dict(state.get("length_gap"))
        if self.controller is not None and state.get("controller") is not None:
            self.controller.load_state_dict(state["controller"])
        if self.residual is not None and state.get("residual") is not None:
            self.residual.load_state_dict(state["residual"])
