"""One progress bar for a standalone stage that samples (evaluation, labelling), counted in samples."""

from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class SampleProgress:
    """``with SampleProgress(total) as p: p.describe("ppo"); p.advance(16)``; silent when ``enabled`` is False."""

    def __init__(self, total: int, title: str = "eval", enabled: bool | None = None):
        self.total = total
        self.title = title
        self.enabled = sys.stderr.isatty() or sys.stdout.isatty() if enabled is None else enabled
        self._bar: Progress | None = None
        self._task = None

    def __enter__(self) -> "SampleProgress":
        if self.enabled:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("samples"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            )
            self._bar.start()
            self._task = self._bar.add_task(self.title, total=self.total)
        return self

    def describe(self, what: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.title}: {what}")

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
