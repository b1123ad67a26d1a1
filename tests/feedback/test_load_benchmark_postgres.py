"""The full-size load benchmark (benchmarks/feedback_load.py: 50 annotators x 100 labels beside a 24-thread
login storm) against the PostgreSQL the suite starts, so CI reports it on every run. Only correctness is
asserted (nothing lost or duplicated, no 5xx); the latencies are printed and written to
test-output/feedback/load_postgresql.json, never asserted (timings are not unit tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import PG_ENV, missing_service

REPO = Path(__file__).resolve().parents[2]
REPORTED = ("labels_acked", "labels_stored", "lost", "duplicated", "items_over_overlap", "responses_5xx",
            "load_wall_s", "labels_per_s", "label_post_p50_ms", "label_post_p99_ms", "me_idle_p99_ms",
            "me_storm_p99_ms", "me_storm_and_load_p99_ms", "storm_attempts")


@pytest.mark.slow
def test_full_load_on_postgresql_loses_and_duplicates_nothing(capsys):
    base = os.environ.get(PG_ENV)
    if not base:
        missing_service(f"PostgreSQL (env {PG_ENV})")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "feedback_load.py"), "--db-url", base],
                          capture_output=True, text=True, timeout=1200, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    out = REPO / "test-output" / "feedback"
    out.mkdir(parents=True, exist_ok=True)
    (out / "load_postgresql.json").write_text(json.dumps(summary, indent=1))
    with capsys.disabled():
        print("\nfeedback load benchmark on PostgreSQL: " + ", ".join(f"{k}={summary[k]}" for k in REPORTED))
    assert summary["db"] == "postgresql"
    assert summary["labels_stored"] == summary["labels_acked"] == 50 * 100
    assert summary["lost"] == summary["duplicated"] == summary["items_over_overlap"] == 0
    assert summary["responses_5xx"] == 0 and summary["errors"] == 0
    assert summary["ok"] is True
