"""The driver the alignloop-vs-TRL scripts share: each side's ``alignloop_side`` / ``trl_side`` function in its own
process (TRL's in its venv), ``--runs`` pairs in ABBA order, then the standard last JSON line."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

from common import final_json_line, paired_comparison, paired_runs, print_spread, run_isolated


def compare_sides(script: str, stage: str, args: argparse.Namespace, trl_python: str, side_kwargs: dict[str, Any],
                  workload: str, *, unit: str = "updates/s",
                  keys: Sequence[str] = ("throughput", "cpu_throughput", "peak_rss_mb"),
                  trl_kwargs: dict[str, Any] | None = None, trl_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``script``'s two sides ``args.runs`` times each with ``side_kwargs`` plus a fresh ``workdir`` per run
    (``trl_kwargs`` and ``trl_env`` go to TRL's side only); print the workload, the spread and the last JSON line;
    return that payload."""
    with tempfile.TemporaryDirectory() as work:
        def kwargs(i: int) -> dict[str, Any]:
            run_dir = Path(work) / f"run-{i}"
            run_dir.mkdir(exist_ok=True)
            return {**side_kwargs, "workdir": str(run_dir)}

        pairs = paired_runs(
            args.runs,
            lambda i: run_isolated(f"{script}:alignloop_side", kwargs(i), threads=args.threads),
            lambda i: run_isolated(f"{script}:trl_side", {**kwargs(i), **(trl_kwargs or {})}, python=trl_python,
                                   env=trl_env, threads=args.threads),
        )
    print(json.dumps({"workload": workload}))
    payload = paired_comparison(stage, pairs, keys=keys, unit=unit, workload=workload, threads=args.threads)
    print_spread(payload)
    final_json_line(payload)
    return payload
