"""What the CLI commands ``run``, ``quickstart`` and ``eval`` call (the CLI only parses arguments)."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

from alignloop.config import load_config
from alignloop.eval.eval_report import print_report_table
from alignloop.pipeline.runner import run_pipeline
from alignloop.pipeline.spec import load_pipeline
from alignloop.stages.evaluate.stage import EvalConfig, evaluate
from alignloop.stages.registry import resolve_out_dir

QUICKSTART = "quickstart.yaml"


def bundled_pipeline(name: str = QUICKSTART) -> Path:
    """Path of a pipeline YAML shipped in ``alignloop/resources/pipelines``."""
    return Path(str(resources.files("alignloop.resources").joinpath("pipelines", name)))


def run_command(pipeline: str | Path, overrides: list[str] | None = None, out: str | Path | None = None,
                variant: str | None = None, console: Any = None) -> dict:
    """``alignloop run PIPELINE.yaml [--set STAGE.key=value ...] [--out DIR]``; returns the run's report."""
    return run_pipeline(load_pipeline(pipeline, overrides, out, variant), console=console)


def quickstart(fast: bool = False, out: str | Path | None = None, overrides: list[str] | None = None,
               console: Any = None, seed: int | None = None) -> dict:
    """``alignloop quickstart [--fast] [--out DIR] [--seed N]``: the whole loop on the bundled model, then the report.

    A seed gets its own default folder: a finished stage of another seed would be skipped, not rerun."""
    console = console or Console()
    default_out = Path("runs") / f"quickstart{'-fast' if fast else ''}{f'-seed{seed}' if seed is not None else ''}"
    overrides = list(overrides or []) + ([f"defaults.train.seed={seed}"] if seed is not None else [])
    console.print(
        "[bold]alignloop quickstart[/]: SFT → preferences from a simulated annotator (VADER sentiment as the hidden "
        "gold) → reward model → PPO, DPO, best-of-N → evaluation against the gold scorer."
    )
    t0 = time.time()
    report = run_command(bundled_pipeline(), overrides, out or default_out, "fast" if fast else None, console)
    console.print(f"quickstart finished in {time.time() - t0:.0f} s")
    return report


def eval_command(config: str | Path | None, overrides: list[str] | None = None, out: str | Path | None = None,
                 console: Any = None) -> dict:
    """``alignloop eval CONFIG.yaml``: evaluate one or several policies; prints the table, returns the report."""
    cfg = load_config(EvalConfig, config, overrides or [])
    out_dir = resolve_out_dir("eval", cfg, out)
    report = evaluate(cfg, out_dir)
    print_report_table(report, console)
    if console is not None:
        console.print(f"report: {out_dir / 'report.html'}")
    return report
