"""metrics.jsonl (one object per logged step, with ``step``), optional TensorBoard, and the progress bar."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from alignloop.utils.io import read_jsonl, write_jsonl
from alignloop.utils.memory import peak_rss_mb  # noqa: F401  (re-exported for old imports)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsWriter:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._last: dict[str, float] = {}
        self._tb = None
        if enabled:
            try:  # optional dependency: TensorBoard logging only where the tensorboard package is installed
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))
            except Exception:
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so no step appears twice."""
        if self.enabled and self.path.exists():
            write_jsonl(self.path, [r for r in read_jsonl(self.path) if r.get("step", 0) <= step])

    def write(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: _clean(float(v)) for k, v in metrics.items()}}
        self._last.update({k: v for k, v in row.items() if k != "step"})
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and v is not None:
                    self._tb.add_scalar(k, v, step)

    def last_values(self) -> dict[str, float]:
        return dict(self._last)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A rich progress bar with loss and ETA (silent on non-main ranks)."""

    def __init__(self, name: str, total: int, enabled: bool = True):
        self.enabled = enabled
        self.total = total
        self.name = name
        self._bar = None
        self._task = None
        self._t0 = time.time()

    def start(self, step: int) -> None:
        if not self.enabled:
            return
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        )
        self._bar.start()
        self._task = self._bar.add_task(self.name, total=self.total, completed=step, info="")

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if self._bar is None:
            return
        info = f"loss {metrics.get('loss', float('nan')):.4f}"
        if "tokens_per_second" in metrics:
            info += f"  {metrics['tokens_per_second']:.0f} tok/s"
        self._bar.update(self._task, completed=step, info=info)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
