"""`alignloop run` on a tiny pipeline, killed in the middle of a training stage, then run again: finished
stages are not repeated, the killed stage resumes from its checkpoint, and the run's report is complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

PIPELINE = {
    "name": "tiny-resume",
    "defaults": {"model": "tiny-llama", "lora": {"r": 4, "alpha": 8}, "train": {"seed": 0, "precision": "fp32"}},
    "stages": [
        {"name": "base", "stage": "sft", "config": {"data": {"max_length": 96},
                                                    "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-3}}},
        {"name": "tuned", "stage": "sft", "config": {
            "model": "${base}", "data": {"max_length": 96},
            "train": {"max_steps": 30, "batch_size": 2, "lr": 1e-3, "save_every": 1, "keep_checkpoints": 2}}},
        {"name": "prefs", "stage": "collect", "config": {
            "model": "${tuned}", "collect": {"n_prompts": 3, "samples_per_prompt": 2, "max_new_tokens": 6, "batch_size": 6}}},
        {"name": "eval", "stage": "eval", "config": {
            "model": "${base}", "eval": {"reference": "base", "policies": {"tuned": "${tuned}"}, "n_prompts": 3,
                                         "max_new_tokens": 6, "batch_size": 6, "n_boot": 100}}},
    ],
}


def pipeline_command(path: Path, out: Path) -> list[str]:
    """`alignloop run` once the CLI has the command; the same function through its module entry point before."""
    from alignloop.cli import app

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    if "run" in names:
        return [sys.executable, "-m", "alignloop", "run", str(path), "--out", str(out)]
    return [sys.executable, "-m", "alignloop.pipeline", "run", str(path), "--out", str(out)]


def _steps(metrics: Path) -> list[int]:
    """Steps of the training rows (the final evaluation adds a row with only eval/ keys)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [row["step"] for row in rows if "loss" in row]


@pytest.mark.slow
def test_run_killed_mid_stage_resumes_without_repeating_finished_stages(tmp_path):
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(PIPELINE))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = pipeline_command(path, out)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "tuned" / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and first.poll() is None:
        if metrics.exists() and len(_steps(metrics)) >= 3 and (out / "tuned" / "checkpoints" / "latest").exists():
            break
        time.sleep(0.2)
    assert first.poll() is None, f"the run ended before it could be interrupted:\n{first.communicate()[0]}"
    first.send_signal(signal.SIGKILL)  # the harshest interruption: no chance to save anything more
    first.communicate()
    assert (out / "base" / "summary.json").is_file() and not (out / "tuned" / "summary.json").exists()
    base_summary_mtime = (out / "base" / "summary.json").stat().st_mtime_ns
    killed_at = _steps(metrics)[-1]
    assert 3 <= killed_at < 30

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert "base (sft): finished earlier, skipped" in output
    assert "tuned (sft): resuming" in output and "resumed from" in output
    assert (out / "base" / "summary.json").stat().st_mtime_ns == base_summary_mtime
    assert _steps(metrics) == list(range(1, 31))  # every step exactly once, across the kill
    report = json.loads((out / "report.json").read_text())
    assert set(report["policies"]) == {"base", "tuned"} and report["reference"] == "base"
    assert [report["stages"][s]["status"] for s in ("base", "tuned", "prefs", "eval")] == ["skipped", "resumed", "ran", "ran"]
    assert all(report["stages"][s]["seconds"] > 0 for s in report["stages"])
    ledger = json.loads((out / "pipeline.json").read_text())
    assert ledger["stages"]["tuned"]["attempts"] == 2 and ledger["stages"]["base"]["attempts"] == 1
    assert (out / "report.html").is_file() and (out / "samples.jsonl").read_text().count("\n") == 6
    assert (out / "prefs" / "pairs.jsonl").is_file()
