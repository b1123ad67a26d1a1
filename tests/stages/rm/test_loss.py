"""The reward-model objective on a micro-batch, and the held-out metrics, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignloop.eval.rm_report import calibration_inputs, preference_metrics
from alignloop.models.shared_prompt import PackedGroups
from alignloop.stages.rm.data import PreferenceBatch, PreferenceExample
from alignloop.stages.rm.loss import (
    LossSettings,
    evaluate_examples,
    ordered_pairs,
    preference_loss,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))  # −log σ(−x)


def _batch(examples: list[PreferenceExample], index: list[list[int]]) -> PreferenceBatch:
    n = 1 + max(u for row in index for u in row)
    empty = torch.zeros(0, dtype=torch.long)
    packed = PackedGroups(empty, empty, torch.zeros(0, dtype=torch.bool), torch.zeros(n, dtype=torch.long),
                          torch.zeros(n, dtype=torch.long), index)
    return PreferenceBatch(examples, packed)


def _pair(margin=None, criteria=None) -> PreferenceExample:
    return PreferenceExample([1], [[2], [3]], [[0], [1]], is_pair=True, margin=margin, criteria=criteria or {})


def test_pairs_with_and_without_margin_by_hand():
    # pair A: r_c = 1, r_r = 0            -> −log σ(1) = softplus(−1) = 0.31326, correct, margin 1
    # pair B: r_c = 0, r_r = 0.5, m = 0.5 -> −log σ(0 − 0.5 − 0.5) = softplus(1) = 1.31326, wrong, margin −0.5
    scores = torch.tensor([[1.0], [0.0], [0.0], [0.5]])
    batch = _batch([_pair(), _pair(margin=0.5)], [[0, 1], [2, 3]])
    loss, metrics = preference_loss(scores, batch, LossSettings())
    assert loss.item() == pytest.approx(softplus(-1) + softplus(1), abs=1e-6)
    assert loss.item() == pytest.approx(0.31326 + 1.31326, abs=1e-4)
    assert metrics == pytest.approx({"accuracy": 1.0, "margin": 0.5})
    ignored, _ = preference_loss(scores, batch, LossSettings(use_margin=False))
    assert ignored.item() == pytest.approx(softplus(-1) + softplus(0.5), abs=1e-6)  # B: −log σ(−0.5)


def test_ranking_all_pairs_and_plackett_luce_by_hand():
    # ranking best first [0, 2, 1] with s = (2, 0, 1): ordered pairs (0,2) (0,1) (2,1) with differences 1, 2, 1
    scores = torch.tensor([[2.0], [0.0], [1.0]])
    example = PreferenceExample([1], [[2], [3], [4]], [[0], [2], [1]], is_pair=False)
    batch = _batch([example], [[0, 1, 2]])
    loss, metrics = preference_loss(scores, batch, LossSettings())
    # InstructGPT: mean over the 3 pairs = (0.31326 + 0.12693 + 0.31326) / 3 = 0.25115
    assert loss.item() == pytest.approx((2 * softplus(-1) + softplus(-2)) / 3, abs=1e-6)
    assert metrics == pytest.approx({"accuracy": 1.0, "margin": 4 / 3})
    # Plackett–Luce: [lse(2,0,1) − 2] + [lse(1,0) − 1] = (2.40760 − 2) + (1.31326 − 1) = 0.72086
    pl, _ = preference_loss(scores, batch, LossSettings(ranking_loss="plackett_luce"))
    expected = math.log(math.e**2 + 1 + math.e) - 2 + math.log(math.e + 1) - 1
    assert pl.item() == pytest.approx(expected, abs=1e-6) and pl.item() == pytest.approx(0.72086, abs=1e-4)


def test_ties_give_no_pair_and_each_record_weighs_the_same():
    # ranking [[0, 1], 2] with s = (1, 3, 0): pairs (0,2) diff 1 and (1,2) diff 3; per-record mean
    scores = torch.tensor([[1.0], [3.0], [0.0], [0.0], [0.0]])
    ranking = PreferenceExample([1], [[2], [3], [4]], [[0, 1], [2]], is_pair=False)
    batch = _batch([ranking, _pair()], [[0, 1, 2], [3, 4]])
    assert ordered_pairs(batch) == ([0, 1, 3], [2, 2, 4])
    loss, metrics = preference_loss(scores, batch, LossSettings())
    # ranking: (softplus(−1) + softplus(−3)) / 2; the tied pair (r_c = r_r = 0): log 2, counted wrong
    assert loss.item() == pytest.approx((softplus(-1) + softplus(-3)) / 2 + math.log(2), abs=1e-6)
    assert metrics == pytest.approx({"accuracy": 1.0, "margin": 2.0})


def test_criterion_heads_and_centering_by_hand():
    # head 0 (overall): r_c = 1, r_r = 0. head 1 (helpful): chosen 0.2, rejected 0.7, labelled −1 (rejected
    # is more helpful) -> −log σ(0.7 − 0.2). head 2 (harmless) unlabelled (0) -> no term.
    scores = torch.tensor([[1.0, 0.2, 5.0], [0.0, 0.7, -5.0]])
    batch = _batch([_pair(criteria={"helpful": -1})], [[0, 1]])
    settings = LossSettings(criteria=["helpful", "harmless"])
    loss, _ = preference_loss(scores, batch, settings)
    assert loss.item() == pytest.approx(softplus(-1) + softplus(-0.5), abs=1e-6)
    # centering 0.1·(r_c + r_r)² per pair on every trained head: 0.1·1² (overall) + 0.1·0.9² (helpful)
    settings.center_coef = 0.1
    centred, _ = preference_loss(scores, batch, settings)
    assert centred.item() - loss.item() == pytest.approx(0.1 * 1.0 + 0.1 * 0.81, abs=1e-6)


def test_centering_of_a_ranking_is_the_mean_square():
    scores = torch.tensor([[2.0], [0.0], [1.0]])
    batch = _batch([PreferenceExample([1], [[2], [3], [4]], [[0], [2], [1]], is_pair=False)], [[0, 1, 2]])
    plain, _ = preference_loss(scores, batch, LossSettings())
    centred, _ = preference_loss(scores, batch, LossSettings(center_coef=0.3))
    assert centred.item() - plain.item() == pytest.approx(0.3 * (4 + 0 + 1) / 3, abs=1e-6)


def test_preference_metrics_by_hand():
    # pair 1 right by 1, pair 2 wrong by 1. Both orders: σ(1) = 0.731 twice (labels 1 and 0) in bin 7,
    # σ(−1) = 0.269 twice (labels 1 and 0) in bin 2; each bin: |0.5 − conf| = 0.2311 -> ECE 0.2311
    metrics = preference_metrics([1.0, 0.0], [0.0, 1.0])
    assert metrics["accuracy"] == 0.5 and metrics["margin"] == 0.0 and metrics["pairs"] == 2
    assert metrics["ece"] == pytest.approx(1 / (1 + math.exp(-1)) - 0.5, abs=1e-9)
    probs, labels = calibration_inputs([3.0], [1.0])
    assert probs == pytest.approx([1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))]) and labels.tolist() == [1, 0]
    assert math.isnan(preference_metrics([], [])["accuracy"])


def test_evaluate_examples_collects_pairs_lengths_and_uncertainty():
    batch = _batch([_pair(criteria={"helpful": 1})], [[0, 1]])
    batch.examples[0].completions = [[2, 3, 4], [5]]
    scores = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    metrics, result = evaluate_examples(
        [batch], lambda packed: (scores, torch.tensor([0.5, 0.1])), LossSettings(criteria=["helpful"])
    )
    assert metrics["eval/accuracy"] == 1.0 and metrics["eval/margin"] == 2.0
    assert metrics["eval/accuracy/helpful"] == 0.0  # the chosen one is more helpful but scored 1 < 3
    assert metrics["eval/loss"] == pytest.approx(softplus(-2) + softplus(2), abs=1e-6)
    assert metrics["eval/uncertainty"] == pytest.approx(0.3)
    assert result.lengths.tolist() == [3, 1] and result.scores.tolist() == [2.0, 0.0]
    assert np.allclose(result.criteria["helpful"][0], [1.0])
