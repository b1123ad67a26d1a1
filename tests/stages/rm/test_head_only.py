"""``rm.head_only``: a linear head trained on cached frozen-backbone features (stages/rm/probe.py)."""

from __future__ import annotations

import json

import pytest
import torch

from alignloop.errors import ConfigError
from alignloop.eval.report import read_metrics
from alignloop.models import TINY_MODEL, load_causal_lm
from alignloop.pipeline.launch import run_stage
from alignloop.rewards.model import RewardModel
from alignloop.stages.rm.probe import head_l2_penalty
from alignloop.stages.rm.synthetic import synthetic_preferences, write_jsonl

FAST = ["train.precision=fp32", "train.save_every=0", f"model={TINY_MODEL}", "rm.head_only=true"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("head_only")
    records = synthetic_preferences(160, seed=3, clauses=2)
    return write_jsonl(records[:120], folder / "train.jsonl"), write_jsonl(records[120:], folder / "eval.jsonl")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm_head_only")
    overrides = [*FAST, f"data.train={data[0]}", f"data.eval={data[1]}", "train.max_steps=-1", "train.epochs=3",
                 "train.lr=3e-2", "train.batch_size=16", "rm.head_l2=0.3"]
    torch.manual_seed(0)
    return out, run_stage("rm", None, overrides, out)


def test_head_l2_penalty_by_hand():
    # w = [[1, 2]], σ = [3, 0.5]: (1·3)² + (2·0.5)² = 9 + 1 = 10
    assert float(head_l2_penalty(torch.tensor([[1.0, 2.0]]), torch.tensor([3.0, 0.5]))) == pytest.approx(10.0)


def test_backbone_is_untouched_and_the_head_learns(trained):
    out, summary = trained
    backbone = RewardModel.load(out / "model").members[0].backbone.state_dict()
    base = load_causal_lm(TINY_MODEL).model.state_dict()
    assert set(base) <= set(backbone)
    assert all(torch.equal(backbone[k], base[k]) for k in base)
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r and "eval/loss" not in r]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_cached_evaluation_equals_the_saved_model(trained, data):
    out, summary = trained
    records = [json.loads(line) for line in data[1].read_text().splitlines()]
    model = RewardModel.load(out / "model")
    chosen = model.score([r["prompt"] for r in records], [r["chosen"] for r in records])
    rejected = model.score([r["prompt"] for r in records], [r["rejected"] for r in records])
    # the in-run evaluation scored cached features with the head; the saved model runs the whole network
    assert float((chosen > rejected).float().mean()) == pytest.approx(summary["eval_accuracy"])
    assert summary["eval_accuracy"] > 0.5


def test_head_only_refuses_lora(data, tmp_path):
    with pytest.raises(ConfigError, match="head_only"):
        run_stage("rm", None, [*FAST, f"data.train={data[0]}", "train.max_steps=1", "lora.r=4"], tmp_path / "x")
