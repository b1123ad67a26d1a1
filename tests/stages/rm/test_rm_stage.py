"""The RM stage end to end on tiny-llama: it learns a hidden rule, writes its artifacts, resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from alignloop.config import load_config
from alignloop.errors import ConfigError
from alignloop.eval.report import read_metrics
from alignloop.models import TINY_MODEL
from alignloop.pipeline.launch import run_stage
from alignloop.stages.rm.stage import RMConfig, RMStage
from alignloop.stages.rm.synthetic import (
    bayes_accuracy,
    synthetic_preferences,
    write_jsonl,
)
from alignloop.train.loop import train

FAST = ["train.precision=fp32", "train.save_every=0", f"model={TINY_MODEL}"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """240 train / 80 eval pairs from the hidden sentiment rule with Bradley–Terry noise (T = 0.5)."""
    folder = tmp_path_factory.mktemp("synthetic")
    records = synthetic_preferences(320, seed=1, clauses=2)
    train_file = write_jsonl(records[:240], folder / "train.jsonl")
    eval_file = write_jsonl(records[240:], folder / "eval.jsonl")
    small_file = write_jsonl(records[:40], folder / "small.jsonl")  # for the mechanics tests
    return train_file, eval_file, bayes_accuracy(records[240:]), small_file


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    train_file, eval_file = synthetic[:2]
    out = tmp_path_factory.mktemp("rm")
    overrides = [*FAST, f"data.train={train_file}", f"data.eval={eval_file}", "train.max_steps=-1",
                 "train.epochs=1", "train.lr=3e-3", "train.batch_size=16", "train.eval_every=8"]
    torch.manual_seed(0)
    summary = run_stage("rm", None, overrides, out)
    return out, summary


def test_tiny_model_learns_the_hidden_rule(trained, synthetic):
    out, summary = trained
    bayes = synthetic[2]
    # measured: eval accuracy 0.81 after 15 steps (Bayes-optimal 0.86 on these noisy labels, chance 0.5)
    assert 0.65 <= summary["eval_accuracy"] <= bayes + 0.1
    assert 0.0 <= summary["eval_ece"] < 0.2
    saved = json.loads((out / "summary.json").read_text())
    assert saved["eval_accuracy"] == summary["eval_accuracy"] and saved["eval_ece"] == summary["eval_ece"]
    rows = read_metrics(out / "metrics.jsonl")
    train_rows = [r for r in rows if "accuracy" in r]
    assert {"loss", "accuracy", "margin", "tokens_per_second", "step_time"} <= set(train_rows[0])
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [8, 15] and {"eval/loss", "eval/margin", "eval/ece"} <= set(evals[-1])
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert sum(r["loss"] for r in train_rows[-3:]) < sum(r["loss"] for r in train_rows[:3])


def test_run_directory_holds_model_report_and_plain_hf_backbone(trained):
    from transformers import AutoModel

    out, _ = trained
    for name in ("config.yaml", "report.html", "reliability.png", "rm_report.json", "model/alignloop_rm.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "rm_report.json").read_text())
    assert {"accuracy", "ece", "margin", "length_reward_correlation"} <= set(report)
    backbone = AutoModel.from_pretrained(out / "model")  # no alignloop needed for the backbone
    assert backbone.config.hidden_size == 64


def test_reward_model_scores_match_the_held_out_evaluation(trained, synthetic):
    from alignloop.rewards import build_reward
    from alignloop.rewards.model import RewardModel

    out, summary = trained
    records = [json.loads(line) for line in synthetic[1].read_text().splitlines()]
    model = build_reward(str(out))
    assert isinstance(model, RewardModel) and not model.supports_uncertainty
    chosen = model.score([r["prompt"] for r in records], [r["chosen"] for r in records])
    rejected = model.score([r["prompt"] for r in records], [r["rejected"] for r in records])
    assert chosen.dtype == torch.float32 and chosen.shape == (80,)
    assert float((chosen > rejected).float().mean()) == pytest.approx(summary["eval_accuracy"])
    assert torch.equal(model.uncertainty(["p"], ["c"]), torch.zeros(1))


def test_score_file_writes_one_line_per_record(trained, synthetic, tmp_path):
    from alignloop.rewards.model import score_file

    out, summary = trained
    result = score_file(out, synthetic[1], tmp_path / "scores.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert result["records"] == len(lines) == 80 and result["kind"] == "pair"
    assert result["accuracy"] == pytest.approx(summary["eval_accuracy"])
    assert set(lines[0]) == {"index", "chosen_score", "rejected_score", "p_chosen"}
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"prompt": "How was the cafe?", "completion": "The coffee was lovely."}) + "\n")
    score_file(out, sft, tmp_path / "sft_scores.jsonl")
    assert set(json.loads((tmp_path / "sft_scores.jsonl").read_text())) == {"index", "score"}
    ranks = write_jsonl([{"prompt": "Hi?", "completions": ["The view was superb.", "The view was awful."],
                          "ranking": [0, 1]}], tmp_path / "ranks.jsonl")
    ranked = score_file(out, ranks, tmp_path / "rank_scores.jsonl")
    line = json.loads((tmp_path / "rank_scores.jsonl").read_text())
    assert len(line["scores"]) == 2 and ranked["accuracy"] == float(line["scores"][0] > line["scores"][1])


def test_rankings_train_with_both_losses(tmp_path):
    ranks = write_jsonl(synthetic_preferences(24, seed=3, kind="ranking", k=4, clauses=2), tmp_path / "ranks.jsonl")
    for loss in ("pairwise", "plackett_luce"):
        overrides = [*FAST, f"data.train={ranks}", "data.eval_fraction=0.25", "train.max_steps=3",
                     "train.batch_size=6", "train.lr=3e-3", f"rm.ranking_loss={loss}"]
        summary = run_stage("rm", None, overrides, tmp_path / loss)
        assert summary["train_records"] == 18 and summary["eval_records"] == 6
        assert 0.0 <= summary["eval_accuracy"] <= 1.0 and summary["eval/accuracy"] == summary["eval_accuracy"]


def _head(out) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(out / "model" / "head.safetensors"))["weight"]


def test_resume_gives_the_same_model(synthetic, tmp_path):
    train_file = synthetic[3]
    base = [*FAST, f"data.train={train_file}", "data.eval_fraction=0.1", "train.batch_size=8",
            "train.micro_batch_size=4", "train.lr=1e-3", "train.lr_schedule=constant"]
    straight = load_config(RMConfig, None, [*base, "train.max_steps=4"])
    train(RMStage(straight), tmp_path / "straight")
    first = load_config(RMConfig, None, [*base, "train.max_steps=2"])
    train(RMStage(first), tmp_path / "resumed")
    train(RMStage(straight), tmp_path / "resumed")  # continues from the step-2 checkpoint
    assert torch.allclose(_head(tmp_path / "straight"), _head(tmp_path / "resumed"), atol=1e-6)


def test_epoch_end_evaluation_and_early_stopping(synthetic, tmp_path):
    train_file = synthetic[3]
    overrides = [*FAST, f"data.train={train_file}", "data.eval_fraction=0.5", "train.max_steps=-1",
                 "train.epochs=4", "train.batch_size=10", "train.lr=1e-7", "rm.early_stopping_patience=1",
                 "rm.early_stopping_min_delta=0.01"]
    summary = run_stage("rm", None, overrides, tmp_path / "early")
    rows = read_metrics(tmp_path / "early" / "metrics.jsonl")
    # 20 train pairs / 10 = 2 steps per epoch: evaluated at step 2 (epoch 1) and step 4 (epoch 2); at lr 1e-7
    # the eval loss moves by < 0.01, so patience 1 stops the run after the second evaluation (4 of 8 steps)
    assert [r["step"] for r in rows if "eval/loss" in r][:2] == [2, 4]
    assert summary["steps"] == 4 and summary["early_stopped"] is True


def test_ensemble_config_outside_the_runner_is_refused(synthetic, tmp_path):
    cfg = load_config(RMConfig, None, [*FAST, f"data.train={synthetic[3]}", "rm.ensemble.size=2"])
    with pytest.raises(ConfigError, match="rm.ensemble.size > 1"):
        train(RMStage(cfg), tmp_path / "x")
