"""Run one registered stage: the form of every ``alignloop <stage> CONFIG.yaml`` command and of a pipeline step.

A stage that is not a training loop (``StandaloneStage``) runs itself in its run directory; an RL stage with Ray
rollout workers (``rollout.workers ≥ 1``) goes to ``distributed.ray_stage``; every other stage runs through the
one training loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignloop.config import load_config
from alignloop.distributed.ray_stage import run_configured
from alignloop.errors import ConfigError
from alignloop.models.loading import is_vision_language_model
from alignloop.stages.registry import resolve_out_dir, stage_classes
from alignloop.train.loop import train
from alignloop.train.run_dir import RunDir
from alignloop.train.stage import StandaloneStage

__all__ = ["launch", "run_stage"]


def launch(name: str, stage_cls: type, cfg: Any, out_dir: str | Path) -> dict:
    """Run stage class ``stage_cls`` (registered as ``name``) with a validated ``cfg`` in ``out_dir``."""
    rollout = getattr(cfg, "rollout", None)
    if rollout is not None and rollout.workers > 0:  # an RL stage with Ray rollout workers
        if is_vision_language_model(cfg.model):
            raise ConfigError(f"rollout.workers: the Ray rollout roles take text prompts only, and '{cfg.model}' is "
                              "a vision-language model; set rollout.workers: 0 (docs/vlm.md, Scale)")
        return run_configured(name, cfg, out_dir)
    if issubclass(stage_cls, StandaloneStage):
        return stage_cls.run(cfg, RunDir(out_dir))
    return train(stage_cls(cfg), out_dir)


def run_stage(name: str, config: str | Path | None, overrides: list[str] | None = None,
              out: str | Path | None = None) -> dict:
    """``alignloop <name> CONFIG.yaml [--set key=value ...] [--out DIR]``; returns the stage's summary."""
    cfg_cls, stage_cls = stage_classes(name)
    cfg = load_config(cfg_cls, config, overrides or [])
    return launch(name, stage_cls, cfg, resolve_out_dir(name, cfg, out))
