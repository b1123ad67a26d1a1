"""Deprecated re-export: the stage table moved to ``alignloop.stages.registry`` and ``run_stage`` to
``alignloop.pipeline.launch``; the old path works for one release."""

import warnings

from alignloop.pipeline.launch import run_stage
from alignloop.stages.registry import STAGES, register_stage, resolve_out_dir, stage_classes

__all__ = ["STAGES", "register_stage", "resolve_out_dir", "run_stage", "stage_classes"]
warnings.warn("alignloop.train.registry moved to alignloop.stages.registry (run_stage: alignloop.pipeline.launch)",
              DeprecationWarning, stacklevel=2)
