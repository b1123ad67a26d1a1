"""Length-bias metrics of a reward model: accuracy split by the preferred answer's length, summary entries, report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from alignloop.eval.metrics import length_split_accuracy
from alignloop.eval.rm_report import PreferenceScores, length_bias_summary, write_rm_report

# six ordered pairs: (score preferred, score other, length preferred, length other)
#   0: right, shorter   1: wrong, longer   2: tie (wrong), same length   3: right, shorter
#   4: right, same length   5: wrong, shorter
WINNERS = [2.0, 1.0, 0.5, 3.0, 1.5, 0.0]
LOSERS = [1.0, 2.0, 0.5, 0.0, 1.0, 1.0]
W_LEN = [5, 10, 7, 3, 4, 2]
L_LEN = [8, 6, 7, 9, 4, 3]


def test_length_split_accuracy_by_hand():
    split = length_split_accuracy(WINNERS, LOSERS, W_LEN, L_LEN)
    # shorter: pairs 0, 3, 5 -> right, right, wrong = 2/3; longer: pair 1 -> wrong = 0; same length: pairs 2, 4
    assert split == {"accuracy_chosen_shorter": pytest.approx(2 / 3), "pairs_chosen_shorter": 3,
                     "accuracy_chosen_longer": 0.0, "pairs_chosen_longer": 1, "pairs_same_length": 2}


def test_length_split_accuracy_empty_groups_and_bad_input():
    split = length_split_accuracy([1.0], [0.0], [3], [3])
    assert math.isnan(split["accuracy_chosen_shorter"]) and math.isnan(split["accuracy_chosen_longer"])
    assert split["pairs_chosen_shorter"] == split["pairs_chosen_longer"] == 0 and split["pairs_same_length"] == 1
    with pytest.raises(ValueError, match="four equal-length arrays"):
        length_split_accuracy([1.0], [0.0], [3, 4], [3])


def _scores(length_head=None) -> PreferenceScores:
    return PreferenceScores(
        winners=np.array(WINNERS), losers=np.array(LOSERS),
        lengths=np.array([10, 20, 30, 40]), scores=np.array([1.0, 2.0, 3.0, 5.0]),
        winner_lengths=np.array(W_LEN), loser_lengths=np.array(L_LEN), length_head=length_head,
    )


def test_summary_entries_by_hand():
    summary = length_bias_summary(_scores())
    # Pearson of (10, 20, 30, 40) and (1, 2, 3, 5): centred (−15, −5, 5, 15)·(−1.75, −0.75, 0.25, 2.25) = 65,
    # norms √500 and √8.75 -> 65 / 66.144 = 0.98271
    assert summary == {"eval_length_correlation": pytest.approx(0.982708, abs=1e-6),
                       "eval_accuracy_chosen_shorter": pytest.approx(2 / 3), "eval_pairs_chosen_shorter": 3,
                       "eval_accuracy_chosen_longer": 0.0, "eval_pairs_chosen_longer": 1}
    with_head = length_bias_summary(_scores(length_head=np.array([4.0, 3.0, 2.0, 1.0])))
    assert with_head["eval_length_head_correlation"] == pytest.approx(-1.0)
    empty = length_bias_summary(PreferenceScores(winners=np.array([1.0]), losers=np.array([0.0]),
                                                 winner_lengths=np.array([3]), loser_lengths=np.array([3])))
    assert empty == {"eval_accuracy_chosen_shorter": None, "eval_pairs_chosen_shorter": 0,
                     "eval_accuracy_chosen_longer": None, "eval_pairs_chosen_longer": 0}


def test_report_shows_the_length_split(tmp_path):
    numbers = write_rm_report(tmp_path, _scores(length_head=np.array([4.0, 3.0, 2.0, 1.0])))
    html = (tmp_path / "report.html").read_text()
    assert "preferred answer shorter (3 pairs)" in html and "preferred answer longer (1 pairs)" in html
    assert "length head (dropped at use)" in html
    saved = json.loads((tmp_path / "rm_report.json").read_text())
    assert saved["length_split"]["pairs_chosen_shorter"] == 3 == numbers["length_split"]["pairs_chosen_shorter"]
    assert saved["length_head_correlation"]["pearson"] == pytest.approx(-1.0)
