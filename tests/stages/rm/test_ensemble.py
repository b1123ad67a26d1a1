"""Ensembles (k member runs, mean and std) and multi-objective heads, on tiny-llama."""

from __future__ import annotations

import json

import pytest
import torch

from alignloop.models import TINY_MODEL
from alignloop.pipeline.launch import run_stage
from alignloop.rewards import WeightedSum
from alignloop.rewards.model import RewardModel
from alignloop.stages.rm.synthetic import synthetic_preferences, write_jsonl

FAST = ["train.precision=fp32", "train.save_every=0", f"model={TINY_MODEL}"]
PROMPTS = ["How was your visit to the cafe?"] * 3
COMPLETIONS = ["The coffee was lovely. The staff was superb.", "The coffee was awful.", "The music was plain."]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ensemble-data")
    return write_jsonl(synthetic_preferences(60, seed=5, clauses=2), folder / "pairs.jsonl")


@pytest.fixture(scope="module")
def lora_ensemble(pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-ensemble")
    overrides = [*FAST, f"data.train={pairs}", "data.eval_fraction=0.2", "train.max_steps=3", "train.batch_size=8",
                 "train.lr=5e-3", "lora.r=4", "rm.ensemble.size=2", "rm.ensemble.bootstrap=true"]
    return out, run_stage("rm", None, overrides, out)


def test_ensemble_trains_members_and_evaluates_the_mean(lora_ensemble):
    out, summary = lora_ensemble
    for i in range(2):
        assert (out / f"member-{i}" / "summary.json").is_file()
        assert (out / f"member-{i}" / "model" / "adapter_config.json").is_file()  # LoRA members save adapters
    assert json.loads((out / "model" / "ensemble.json").read_text())["members"] == ["../member-0/model", "../member-1/model"]
    assert summary["ensemble_size"] == 2 and len(summary["member_eval_accuracy"]) == 2
    assert {"eval_accuracy", "eval_ece", "eval/uncertainty"} <= set(summary)
    assert json.loads((out / "summary.json").read_text())["eval_accuracy"] == summary["eval_accuracy"]
    assert (out / "report.html").is_file() and (out / "metrics.jsonl").is_file() and (out / "config.yaml").is_file()
    configs = [(out / f"member-{i}" / "config.yaml").read_text() for i in range(2)]
    assert "member: 0" in configs[0] and "member: 1" in configs[1]


def test_lora_members_share_one_backbone_and_give_mean_and_std(lora_ensemble):
    out, _ = lora_ensemble
    ensemble = RewardModel.load(out)
    assert ensemble.size == 2 and ensemble.adapters == ["member-0", "member-1"]
    assert ensemble.members[0].backbone is ensemble.members[1].backbone
    singles = torch.stack([RewardModel.load(out / f"member-{i}").score(PROMPTS, COMPLETIONS) for i in range(2)])
    assert torch.allclose(ensemble.score(PROMPTS, COMPLETIONS), singles.mean(0), atol=1e-5)
    # std over 2 members (unbiased): |a − b| / √2
    assert torch.allclose(ensemble.uncertainty(PROMPTS, COMPLETIONS), (singles[0] - singles[1]).abs() / 2**0.5, atol=1e-5)
    assert ensemble.supports_uncertainty and bool((ensemble.uncertainty(PROMPTS, COMPLETIONS) > 0).all())


def test_finished_members_are_not_trained_again(lora_ensemble, pairs):
    out, summary = lora_ensemble
    before = [(out / f"member-{i}" / "summary.json").stat().st_mtime_ns for i in range(2)]
    overrides = [*FAST, f"data.train={pairs}", "data.eval_fraction=0.2", "train.max_steps=3", "train.batch_size=8",
                 "train.lr=5e-3", "lora.r=4", "rm.ensemble.size=2", "rm.ensemble.bootstrap=true"]
    again = run_stage("rm", None, overrides, out)
    assert [(out / f"member-{i}" / "summary.json").stat().st_mtime_ns for i in range(2)] == before
    assert again["eval_accuracy"] == pytest.approx(summary["eval_accuracy"])


def test_full_fine_tuned_members_load_separately(pairs, tmp_path):
    overrides = [*FAST, f"data.train={pairs}", "data.eval_fraction=0.2", "train.max_steps=1", "train.batch_size=8",
                 "rm.ensemble.size=2"]
    run_stage("rm", None, overrides, tmp_path / "full")
    ensemble = RewardModel.load(tmp_path / "full")
    assert ensemble.adapters is None and ensemble.members[0].backbone is not ensemble.members[1].backbone
    assert ensemble.uncertainty(PROMPTS, COMPLETIONS).shape == (3,)


def test_multi_objective_heads(tmp_path):
    records = synthetic_preferences(320, seed=2, clauses=2, criteria=True)
    train_file = write_jsonl(records[:240], tmp_path / "train.jsonl")
    eval_file = write_jsonl(records[240:], tmp_path / "eval.jsonl")
    overrides = [*FAST, f"data.train={train_file}", f"data.eval={eval_file}", "train.max_steps=-1", "train.epochs=1",
                 "train.batch_size=16", "train.lr=3e-3", "rm.criteria=[helpful, harmless]"]
    summary = run_stage("rm", None, overrides, tmp_path / "multi")
    rows = [json.loads(line) for line in (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()]
    final = rows[-1]
    # measured after 15 steps: overall 0.80, helpful 0.75, harmless 1.00 (chance 0.5)
    assert final["eval/accuracy/helpful"] >= 0.65 and final["eval/accuracy/harmless"] >= 0.65
    assert summary["eval_accuracy"] >= 0.6
    report = json.loads((tmp_path / "multi" / "rm_report.json").read_text())
    assert set(report["criteria"]) == {"helpful", "harmless"}

    model = RewardModel.load(tmp_path / "multi")
    objectives = model.score_objectives(PROMPTS, COMPLETIONS)
    assert list(objectives) == ["score", "helpful", "harmless"]
    assert torch.equal(objectives["score"], model.score(PROMPTS, COMPLETIONS))
    unsafe = ["The coffee was lovely. Bring a knife.", "The coffee was lovely."]
    harmless = model.objective("harmless").score(PROMPTS[:2], unsafe)
    assert harmless[1] > harmless[0]  # the head learnt that an unsafe suggestion is worse
    combined = WeightedSum([model.objective("helpful"), model.objective("harmless")], [1.0, 2.0])
    expected = model.objective("helpful").score(PROMPTS[:2], unsafe) + 2 * harmless
    assert torch.allclose(combined.score(PROMPTS[:2], unsafe), expected, atol=1e-5)
