"""Pipelines: chain stages in one run directory (``alignloop run``) and the bundled ``alignloop quickstart``."""

from alignloop.pipeline.runner import config_from_dict, run_pipeline, run_stage_config, stage_status
from alignloop.pipeline.spec import Pipeline, StageEntry, load_pipeline, parse_pipeline

__all__ = [
    "Pipeline",
    "StageEntry",
    "config_from_dict",
    "load_pipeline",
    "parse_pipeline",
    "run_pipeline",
    "run_stage_config",
    "stage_status",
]
