"""Stage name -> (config class, stage class): the table the CLI, the pipeline and Ray read.

Modules are named by string and imported on first use, so ``alignloop --help`` stays fast and this table imports
no stage (nor the CLI, the pipeline or ``distributed``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from alignloop.errors import AlignloopError

# name -> "module:ConfigClass:StageClass"; imported lazily so `alignloop --help` stays fast
STAGES: dict[str, str] = {
    "sft": "alignloop.stages.sft:SFTConfig:SFTStage",
    "rm": "alignloop.stages.rm.ensemble:RMConfig:RMCommand",
    "dpo": "alignloop.stages.dpo.online:DPOConfig:DPOCommand",  # offline or dpo.online
    "kto": "alignloop.stages.kto.stage:KTOConfig:KTOStage",
    "orpo": "alignloop.stages.orpo:ORPOConfig:ORPOStage",
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
