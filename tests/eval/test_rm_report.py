"""The reward-model report: numbers by hand, files written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alignloop.eval.rm_report import PreferenceScores, report_numbers, write_rm_report


def _scores() -> PreferenceScores:
    return PreferenceScores(
        winners=np.array([2.0, 1.0, 0.5]),
        losers=np.array([0.0, 1.5, 0.5]),
        lengths=np.array([10, 20, 30, 40]),
        scores=np.array([1.0, 2.0, 3.0, 5.0]),
        criteria={"harmless": (np.array([1.0]), np.array([0.0])), "honest": (np.array([]), np.array([]))},
        uncertainty=np.array([0.1, 0.3, 0.2, 0.2]),
    )


def test_report_numbers_by_hand():
    numbers = report_numbers(_scores())
    # pairs: right by 2, wrong by 0.5, tied (counts wrong) -> accuracy 1/3, margin (2 − 0.5 + 0)/3 = 0.5
    assert numbers["pairs"] == 3 and numbers["accuracy"] == pytest.approx(1 / 3) and numbers["margin"] == pytest.approx(0.5)
    # length and reward rise together: Spearman 1; Pearson of (10,20,30,40) vs (1,2,3,5) = 0.9827
    assert numbers["length_reward_correlation"]["spearman"] == pytest.approx(1.0)
    assert numbers["length_reward_correlation"]["pearson"] == pytest.approx(0.98270, abs=1e-5)
    assert set(numbers["criteria"]) == {"harmless"}  # a criterion with no labelled pair is left out
    assert numbers["uncertainty"] == {"mean_std": pytest.approx(0.2), "max_std": pytest.approx(0.3)}


def test_write_report_files(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "accuracy": 0.5}) + "\n" for s in (1, 2)))
    numbers = write_rm_report(tmp_path, _scores(), metrics_path=metrics, extra_rows={"member 0 eval accuracy": 0.7})
    html = (tmp_path / "report.html").read_text()
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    assert "Per-criterion heads" in html and "Reward vs length" not in html  # plots are images, titles are sections
    assert "Length and reward" in html and "Training curves" in html and "member 0 eval accuracy" in html
    saved = json.loads((tmp_path / "rm_report.json").read_text())
    assert saved["accuracy"] == pytest.approx(numbers["accuracy"]) and saved["member 0 eval accuracy"] == 0.7
