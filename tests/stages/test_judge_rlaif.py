"""RLAIF end to end: a judge labels pairs (label stage), the RM stage trains on the AI labels."""

from __future__ import annotations

import json

import pytest

from alignloop.config import load_config
from alignloop.pipeline.launch import run_stage
from alignloop.stages.label import LabelConfig, LabelStage
from alignloop.train.run_dir import RunDir


@pytest.mark.slow
def test_ai_labels_train_a_reward_model(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about day {i}."}) + "\n" for i in range(4)))
    label_cfg = load_config(LabelConfig, None, [
        "model=tiny-llama", f"data.train={prompts}", "label.samples_per_prompt=3", "label.max_new_tokens=6",
    ])
    label_summary = LabelStage.run(label_cfg, RunDir(tmp_path / "label"))
    labels = tmp_path / "label" / "labels.jsonl"
    assert label_summary["pairs_written"] >= 8  # 4 prompts × 3 pairs, minus any identical samples

    rm_summary = run_stage("rm", None, [
        "model=tiny-llama", f"data.train={labels}", "data.eval_fraction=0", "train.max_steps=6", "train.batch_size=4",
        "train.lr=3e-3", "train.lr_schedule=constant", "train.precision=fp32", "train.save_every=0",
    ], tmp_path / "rm")
    rows = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert rm_summary["steps"] == 6
    # the AI soft labels (their margins) are what the RM fits: the loss falls on them
    assert sum(losses[-2:]) < sum(losses[:2])
    assert (tmp_path / "rm" / "model").is_dir()
