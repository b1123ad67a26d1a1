"""A stage's output folder: the contract every stage keeps (DESIGN.md, "Contracts").

``config.yaml`` holds the resolved config (derived values filled in), ``metrics.jsonl`` one object per logged
step, and ``summary.json`` the final metrics with ``wall_seconds`` and ``peak_rss_mb``. The training loop and
the stages that are not a loop (``StandaloneStage``) all write these through ``RunDir``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from alignloop.config import dump_config
from alignloop.errors import AlignloopError
from alignloop.utils.io import atomic_write_json
from alignloop.utils.memory import peak_rss_mb

__all__ = ["RunDir"]


class RunDir:
    def __init__(self, path: str | Path, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main  # only one process of a multi-process run writes files
        self.started = time.time()
        if self.path.exists() and not self.path.is_dir():
            raise AlignloopError(f"run directory {self.path} exists and is not a directory; pass another --out")

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def begin(self, config: BaseModel | None = None) -> "RunDir":
        """Make the folder and write ``config.yaml`` (call once the config is resolved)."""
        if self.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            if config is not None:
                dump_config(config, self.config_path)
        return self

    def timing(self) -> dict[str, float]:
        """``wall_seconds`` since this RunDir was made and the process's ``peak_rss_mb`` so far."""
        return {"wall_seconds": round(time.time() - self.started, 2), "peak_rss_mb": peak_rss_mb()}

    def finish(self, summary: dict[str, Any], write: bool = True) -> dict[str, Any]:
        """``summary`` with the timing added; written atomically to ``summary.json`` (which marks the stage done)."""
        summary = {**summary, **self.timing()}
        if write:
            self.write_summary(summary)
        return summary

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.is_main:
            atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text())
