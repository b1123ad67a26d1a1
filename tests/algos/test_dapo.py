"""DAPO's pieces that are pure functions: which groups dynamic sampling keeps, and the soft overlong punishment."""

from __future__ import annotations

import pytest
import torch

from alignloop.algos import informative_groups, soft_overlong_penalty


def test_informative_groups_are_the_ones_with_unequal_rewards():
    # G = 2: [1, 1] all equal → dropped; [0, 1] → kept; [2, 2] → dropped; [0.5, 0.25] → kept
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0, 0.5, 0.25])
    assert informative_groups(scores, 2).tolist() == [False, True, False, True]
    # G = 3: one different reward is enough
    assert informative_groups(torch.tensor([0.0, 0.0, 1.0, 3.0, 3.0, 3.0]), 3).tolist() == [True, False]
    with pytest.raises(ValueError, match="cannot be split into groups of 4"):
        informative_groups(scores[:6], 4)


def test_soft_overlong_penalty_hand_example():
    # L_max = 10, L_cache = 4 → no penalty up to L_max − L_cache = 6, then (6 − L)/4, −1 past 10
    #   L = 3, 6 → 0;  L = 7 → (6 − 7)/4 = −0.25;  L = 9 → −3/4 = −0.75;  L = 10 → −4/4 = −1;  L = 12 → −1
    lengths = torch.tensor([3, 6, 7, 9, 10, 12])
    assert soft_overlong_penalty(lengths, max_len=10, buffer=4).tolist() == [0.0, 0.0, -0.25, -0.75, -1.0, -1.0]
    # the factor scales it: 0.5 · −0.25 = −0.125
    assert soft_overlong_penalty(torch.tensor([7]), 10, 4, factor=0.5).tolist() == [-0.125]
    # a buffer as long as the limit punishes from the first token: L = 1 of 4 → (0 − 1)/4 = −0.25
    assert soft_overlong_penalty(torch.tensor([0, 1]), 4, 4).tolist() == [0.0, -0.25]
    for bad in (0, 11):
        with pytest.raises(ValueError, match=r"the overlong buffer must be in \[1, max_len=10\]"):
            soft_overlong_penalty(lengths, 10, bad)
