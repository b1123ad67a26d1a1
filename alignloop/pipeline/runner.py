"""``alignloop run PIPELINE.yaml``: run stages in order, each in ``<run>/<stage name>/``.

A stage is finished when its ``summary.json`` exists; finished stages are skipped, and an
unfinished one is run again, resuming from its last checkpoint (training stages) or its partial
results (collect, eval). At the end the run gets one ``report.json``, ``samples.jsonl`` and
``report.html`` (the last ``eval`` stage's results, training curves and stage timings).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from alignloop.config import format_validation_error
from alignloop.config import merge_defaults as merge_stage_defaults
from alignloop.errors import AlignloopError, ConfigError
from alignloop.eval.eval_report import print_report_table, render_html
from alignloop.eval.report import write_report_json
from alignloop.pipeline.launch import launch
from alignloop.pipeline.spec import Pipeline, StageEntry, merge_defaults, resolve_references
from alignloop.stages.registry import stage_classes
from alignloop.utils.io import atomic_write_json, read_jsonl, write_jsonl

log = logging.getLogger("alignloop")

NOT_TRAINING = {"collect", "label", "eval", "bon"}  # stages without training curves


def stage_classes_or_explain(kind: str) -> tuple[type, type]:
    try:
        return stage_classes(kind)
    except ModuleNotFoundError as err:
        raise AlignloopError(f"stage {kind!r} is registered but cannot be imported ({err})") from None


def config_from_dict(cls: type[BaseModel], data: dict, source: str) -> BaseModel:
    """Validate a stage config given as a mapping (a partial section keeps the stage's other defaults)."""
    try:
        return cls.model_validate(merge_stage_defaults(cls, data))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, cls, source)) from None


def run_stage_config(kind: str, config: dict | BaseModel, out_dir: str | Path, source: str = "<config>") -> dict:
    """Run registered stage ``kind`` with a config mapping (or an already-validated config) in ``out_dir``."""
    cfg_cls, stage_cls = stage_classes_or_explain(kind)
    cfg = config if isinstance(config, cfg_cls) else config_from_dict(cfg_cls, dict(config), source)
    return launch(kind, stage_cls, cfg, Path(out_dir))


def stage_status(out_dir: Path) -> str:
    """finished (summary.json), partial (folder with work in it: it resumes) or new."""
    if (out_dir / "summary.json").is_file():
        return "finished"
    if out_dir.is_dir() and any(out_dir.iterdir()):
        return "partial"
    return "new"


def resolved_configs(pipeline: Pipeline) -> list[tuple[StageEntry, BaseModel]]:
    """Every stage's validated config, with ``${stage}`` references and defaults applied, before anything runs."""
    folders: dict[str, Path] = {"run": pipeline.out}
    out = []
    for i, entry in enumerate(pipeline.stages):
        try:
            cfg_cls, _ = stage_classes_or_explain(entry.stage)
        except AlignloopError as err:
            raise ConfigError(f"{pipeline.source}: stages[{i}].stage: {err}") from None
        where = f"{pipeline.source}: stages[{i}] ({entry.name}).config"
        data = merge_defaults(pipeline.defaults, entry.config, set(cfg_cls.model_fields))
        data = resolve_references(data, folders, where)
        data.pop("out", None)  # the pipeline decides where each stage writes
        out.append((entry, config_from_dict(cfg_cls, data, where)))
        folders[entry.name] = pipeline.stage_dir(entry.name)
    return out


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


class _Ledger:
    """``<run>/pipeline.json``: seconds spent per stage, added up over interrupted attempts."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"stages": {}}

    def _entry(self, name: str) -> dict:
        return self.data["stages"].setdefault(name, {"seconds": 0.0, "attempts": 0})

    def start(self, name: str) -> None:
        self._entry(name)["attempts"] += 1
        atomic_write_json(self.path, self.data)

    def add(self, name: str, seconds: float) -> None:
        """Time of an attempt that ended (a process killed outright never gets here: its time is not counted)."""
        entry = self._entry(name)
        entry["seconds"] = round(entry["seconds"] + seconds, 2)
        atomic_write_json(self.path, self.data)

    def seconds(self, name: str) -> float | None:
        return self.data["stages"].get(name, {}).get("seconds")


def _print_plan(console: Any, pipeline: Pipeline, statuses: dict[str, str]) -> None:
    table = Table(title=f"pipeline {pipeline.name} → {pipeline.out}")
    for col in ("#", "stage", "kind", "status", "expected time"):
        table.add_column(col)
    total = 0.0
    for i, entry in enumerate(pipeline.stages, 1):
        status = statuses[entry.name]
        todo = status != "finished"
        total += (entry.estimate_seconds or 0.0) if todo else 0.0
        shown = {"finished": "done (skipped)", "partial": "resumes", "new": "to run"}[status]
        table.add_row(str(i), entry.name, entry.stage, shown, human_seconds(entry.estimate_seconds) if todo else "–")
    console.print(table)
    if any(e.estimate_seconds for e in pipeline.stages):
        console.print(f"expected total: about {human_seconds(total)} (estimates measured on a 2-core CPU)")


def run_pipeline(pipeline: Pipeline, console: Any = None) -> dict:
    """Run (or finish) every stage of ``pipeline``; return the run's report (also written to disk)."""
    console = console or Console()
    plan = resolved_configs(pipeline)
    pipeline.out.mkdir(parents=True, exist_ok=True)
    ledger = _Ledger(pipeline.out / "pipeline.json")
    statuses = {entry.name: stage_status(pipeline.stage_dir(entry.name)) for entry, _ in plan}
    _print_plan(console, pipeline, statuses)
    stages: dict[str, dict] = {}
    for i, (entry, cfg) in enumerate(plan, 1):
        out_dir = pipeline.stage_dir(entry.name)
        status = statuses[entry.name]
        header = f"[bold][{i}/{len(plan)}] {entry.name}[/] ({entry.stage})"
        if status == "finished":
            console.print(f"{header}: finished earlier, skipped")
        else:
            expect = f", about {human_seconds(entry.estimate_seconds)}" if entry.estimate_seconds else ""
            console.print(f"{header}{': resuming' if status == 'partial' else ''}{expect} → {out_dir}")
            t0 = time.time()
            ledger.start(entry.name)
            try:
                run_stage_config(entry.stage, cfg, out_dir)
            finally:
                ledger.add(entry.name, time.time() - t0)
        summary = json.loads((out_dir / "summary.json").read_text())
        seconds = ledger.seconds(entry.name) or summary.get("wall_seconds")
        stages[entry.name] = {"kind": entry.stage, "seconds": seconds,
                              "status": "skipped" if status == "finished"
                              else ("resumed" if status == "partial" else "ran"),
                              **_stage_figures(summary)}
    return write_pipeline_report(pipeline, stages, console)


def _stage_figures(summary: dict) -> dict:
    """The few figures of a stage's summary the run report carries, under names that say what they measure."""
    out = {k: summary[k] for k in ("steps", "pairs", "loss") if k in summary}
    if "accuracy" in summary:  # the training loop's last logged value: one batch, not the held-out split
        out["train_accuracy_last_batch"] = summary["accuracy"]
    # a reward model's held-out accuracy, or DPO's implicit-reward accuracy on its held-out pairs
    for key, count in (("eval/accuracy", "eval_records"), ("eval_accuracy", "eval_records"),
                       ("eval/rewards/accuracies", "eval_pairs")):
        if key in summary:
            out["heldout_accuracy"] = summary[key]
            n = summary.get(count)
            if isinstance(n, int) and n > 0 and summary[key] is not None:
                out["heldout_pairs"] = n
                out["heldout_accuracy_ci95"] = wilson_interval(round(summary[key] * n), n)
            break
    return out


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion (sound near 0 and 1, unlike the normal approximation)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def write_pipeline_report(pipeline: Pipeline, stages: dict[str, dict], console: Any = None) -> dict:
    evals = [e for e in pipeline.stages if e.stage == "eval"]
    report: dict[str, Any] = {"policies": {}, "reference": None, "gold_scorer": None}
    samples: list[dict] = []
    if evals:
        eval_dir = pipeline.stage_dir(evals[-1].name)
        report = json.loads((eval_dir / "report.json").read_text())
        samples = read_jsonl(eval_dir / "samples.jsonl")
    report["pipeline"] = pipeline.name
    report["variant"] = pipeline.variant
    report["smoke_run"] = pipeline.smoke
    report["stages"] = stages
    training = {e.name: read_jsonl(pipeline.stage_dir(e.name) / "metrics.jsonl")
                for e in pipeline.stages if e.stage not in NOT_TRAINING}
    out = pipeline.out
    write_report_json(out / "report.json", report)
    write_jsonl(out / "samples.jsonl", samples)
    render_html(out / "report.html", report, samples, training=training, title=f"alignloop run: {pipeline.name}")
    if console is not None:
        print_report_table(report, console)
        console.print(f"report: {out / 'report.html'}  ·  {out / 'report.json'}")
    return report
