"""What an RL algorithm (PPO, GRPO/RLOO, ...) gives ``RLStage``: targets from a rollout, and a loss.

``RLStage`` owns everything the algorithms share (sampling, scoring, the reference, the rollout schedule, the
clipped policy-gradient term, evaluation, state); an algorithm is a small object that turns a scored rollout into
training targets once per rollout (``experience``) and computes one micro-batch's loss (``loss``). A stage config
names its algorithm class in ``algorithm``; ``RLStage`` builds it with itself as the only argument.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from alignloop.stages.rl.experience import Experience, RolloutData
    from alignloop.stages.rl.kl import KLPenalty
    from alignloop.train.run import Run

__all__ = ["RLAlgorithm"]


class RLAlgorithm(Protocol):
    kl_placement: str  # "reward" or "loss": where the KL penalty lives (stages/rl/kl.py)
    needs_reference: bool  # False skips the reference model and its forward entirely
    default_micro_batch: int | None  # responses per forward when train.micro_batch_size is null

    def setup(self, run: "Run") -> None:
        """Extra models (a critic goes into ``stage.models``), after the policy and the roles exist."""

    def param_groups(self) -> list[dict] | None:
        """Optimizer groups, or None for one group of every trainable parameter."""

    def experience(self, data: "RolloutData", kl: "KLPenalty") -> tuple["Experience", dict[str, float]]:
        """Training targets of one scored rollout (advantages, returns, ...) and the rollout's stats."""

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """One micro-batch's loss, aggregated as ``loss_agg`` says, and its stats."""

    def save(self, out_dir: Path) -> None:
        """Artifacts beyond the policy (the critic)."""
