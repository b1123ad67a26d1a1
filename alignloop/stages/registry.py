"""Stage name -> (config class, stage class). The CLI and the pipeline runner both go through here."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from alignloop.config import load_config
from alignloop.errors import AlignloopError

# name -> "module:ConfigClass:StageClass"; imported lazily so `alignloop --help` stays fast
STAGES: dict[str, str] = {
    "sft": "alignloop.stages.sft:SFTConfig:SFTStage",
    "rm": "alignloop.stages.rm.stage:RMConfig:RMStage",
    "dpo": "alignloop.stages.dpo.stage:DPOConfig:DPOStage",
    "ppo": "alignloop.stages.rl.ppo:PPOConfig:PPOStage",
    "grpo": "alignloop.stages.rl.grpo:GRPOConfig:GRPOStage",
    "bon": "alignloop.stages.bon:BoNConfig:BoNStage",
    "prm": "alignloop.stages.prm:PRMConfig:PRMStage",
    "label": "alignloop.stages.label:LabelConfig:LabelStage",
    "constitution": "alignloop.stages.constitution:ConstitutionConfig:ConstitutionStage",
    "collect": "alignloop.stages.collect:CollectConfig:CollectStage",
    "eval": "alignloop.stages.evaluate.stage:EvalConfig:EvalStage",
}


def register_stage(name: str, spec: str) -> None:
    STAGES[name] = spec


def stage_classes(name: str) -> tuple[type, type]:
    if name not in STAGES:
        raise AlignloopError(f"unknown stage {name!r}; known: {', '.join(sorted(STAGES))}")
    module, cfg_cls, stage_cls = STAGES[name].split(":")
    mod = importlib.import_module(module)
    return getattr(mod, cfg_cls), getattr(mod, stage_cls)


def resolve_out_dir(name: str, cfg: Any, out: str | Path | None) -> Path:
    if out is not None:
        return Path(out)
    if getattr(cfg, "out", None):
        return Path(cfg.out)
    return Path("runs") / name


def run_stage(name: str, config: str | Path | None, overrides: list[str] | None = None, out: str | Path | None = None) -> dict:
    from alignloop.train.loop import train

    cfg_cls, stage_cls = stage_classes(name)
    cfg = load_config(cfg_cls, config, overrides or [])
    out_dir = resolve_out_dir(name, cfg, out)
    rollout = getattr(cfg, "rollout", None)
    if rollout is not None and rollout.workers > 0:  # an RL stage with Ray rollout workers
        from alignloop.distributed.ray_stage import run_configured

        return run_configured(name, cfg, out_dir)
    runner = getattr(stage_cls, "run_standalone", None)
    if runner is not None:  # stages that are not a training loop (best-of-N, labelling, eval)
        return runner(cfg, out_dir)
    return train(stage_cls(cfg), out_dir)
