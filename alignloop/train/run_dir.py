"""A stage's output folder: the contract every stage keeps (DESIGN.md, "Contracts").

``config.yaml`` holds the resolved config (derived values filled in), ``metrics.jsonl`` one object per logged
step, and ``summary.json`` the final metrics with ``wall_seconds`` and ``peak_rss_mb``. The training loop and
the stages that are not a loop (``StandaloneStage``) all write these through ``RunDir``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from alignloop.config import dump_config
from alignloop.errors import AlignloopError
from alignloop.utils.io import atomic_write_json
from alignloop.utils.memory import peak_rss_mb

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, run directories are not locked
    fcntl = None

__all__ = ["RunDir"]

LOCK_NAME = ".lock"
# run directories this process has locked: path -> [open lock file, holders]; a lock is per process, so a stage
# that evaluates into its own run directory does not lock itself out
_HELD: dict[Path, list] = {}


def _lock(path: Path) -> None:
    key = path.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        return
    if fcntl is None:
        return
    handle = open(path / LOCK_NAME, "a+")
    try:
        # flock is released by the kernel when the holder dies, so a lock left by a killed run is taken over
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise AlignloopError(f"run directory {path} is in use by {holder}; wait for it to finish or pass another "
                             "--out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    _HELD[key] = [handle, 1]


def _unlock(path: Path) -> None:
    key = path.resolve()
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        held[0].close()  # closing the file releases the flock


class RunDir:
    def __init__(self, path: str | Path, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main  # only one process of a multi-process run writes files
        self.started = time.time()
        self.locked = False
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
            if not self.locked:
                _lock(self.path)
                self.locked = True
            if config is not None:
                dump_config(config, self.config_path)
        return self

    def timing(self) -> dict[str, float]:
        """``wall_seconds`` since this RunDir was made and the process's ``peak_rss_mb`` so far."""
        return {"wall_seconds": round(time.time() - self.started, 2), "peak_rss_mb": peak_rss_mb()}

    def finish(self, summary: dict[str, Any], write: bool = True) -> dict[str, Any]:
        """``summary`` with the timing added; written atomically to ``summary.json`` (which marks the stage done)."""
        summary = {**summary, **self.timing()}
        if write:  # else the caller writes it (after saving the model) and then calls release()
            self.write_summary(summary)
            self.release()
        return summary

    def release(self) -> None:
        """Unlock the folder for other processes (also done by the OS when this process ends)."""
        if self.locked:
            _unlock(self.path)
            self.locked = False

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.is_main:
            atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text())
