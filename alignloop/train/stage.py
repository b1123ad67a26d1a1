"""What a stage is: a few hooks around one step function. The loop (loop.py) does everything else."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from alignloop.config import StageConfig

if TYPE_CHECKING:
    from alignloop.train.batches import BatchSource
    from alignloop.train.run import Run
    from alignloop.train.run_dir import RunDir


@dataclass
class StepOutput:
    """One micro-batch's result.

    ``loss`` is a SUM over the micro-batch's loss units (tokens for SFT, pairs for RM/DPO); the loop
    divides by the units of the whole effective batch, so accumulation gives the same gradient as one
    big batch. ``metrics`` are sums over units too (averaged the same way); ``stats`` are plain values
    averaged over micro-batches.
    """

    loss: torch.Tensor
    units: float
    n_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


class Stage:
    """Subclass and fill in ``setup``, ``batches``, ``step`` and ``save``."""

    name: str = "stage"

    def __init__(self, config: StageConfig):
        self.config = config
        self.models: dict[str, nn.Module] = {}  # trainable modules; the loop wraps them (DDP, ...)
        self.run: Run | None = None

    # --- required -------------------------------------------------------------------------
    def setup(self, run: "Run") -> None:
        """Load models, tokenizer and data; fill ``self.models``."""
        raise NotImplementedError

    def batches(self) -> "BatchSource":
        raise NotImplementedError

    def units(self, batch: Any) -> float:
        """Loss units in a micro-batch (trained tokens, pairs, ...): the loss normaliser."""
        raise NotImplementedError

    def step(self, batch: Any) -> StepOutput:
        raise NotImplementedError

    def save(self, out_dir: Path) -> None:
        """Write the final model/artifacts (HF format) into ``out_dir``."""
        raise NotImplementedError

    # --- optional -------------------------------------------------------------------------
    def resolve(self, run: "Run") -> None:
        """Fill config values derived from others or from the launch (before ``config.yaml`` is written)."""

    def param_groups(self) -> list[dict]:
        params = [p for m in self.models.values() for p in m.parameters() if p.requires_grad]
        return [{"params": params}]

    def frozen_modules(self) -> list[nn.Module]:
        """Frozen models outside ``self.models`` (reward models, a frozen reference), for ``train.frozen_bf16``."""
        return []

    def evaluate(self) -> dict[str, float]:
        return {}

    def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        """Called after every optimizer step (KL controllers, sample logging, early stops)."""

    def state_dict(self) -> dict:
        """Stage state beyond weights and optimizer (controllers, running stats)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {}

    def should_stop(self) -> bool:
        return False

    # --- helpers --------------------------------------------------------------------------
    def unwrap(self, name: str) -> nn.Module:
        assert self.run is not None
        return self.run.accelerator.unwrap_model(self.models[name])

    @contextlib.contextmanager
    def eval_mode(self):
        was = {k: m.training for k, m in self.models.items()}
        for m in self.models.values():
            m.eval()
        try:
            with torch.no_grad(), self.run.autocast():
                yield
        finally:
            for k, m in self.models.items():
                m.train(was[k])


class StandaloneStage:
    """A stage that is not a training loop (labelling, constitution, collection, best-of-N, evaluation).

    ``run`` does the work in ``run_dir``: ``run_dir.begin(cfg)`` once the inputs are checked, artifacts into
    ``run_dir.path``, and ``run_dir.finish(summary)`` last (``summary.json`` marks the stage done).
    """

    name: str = "stage"

    @classmethod
    def run(cls, cfg: StageConfig, run_dir: "RunDir") -> dict[str, Any]:
        raise TypeError(f"{cls.__name__} is a StandaloneStage: it must define the classmethod run(cfg, run_dir)")
