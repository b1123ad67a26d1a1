"""Reward-model losses: Bradley–Terry, K-wise rankings with ties, Plackett–Luce, centering."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from alignloop.algos import (
    bradley_terry_loss,
    normalize_ranking,
    pairwise_correct,
    plackett_luce_loss,
    ranking_pair_correct,
    ranking_pairs,
    ranking_pairwise_loss,
    reward_centering_loss,
)

# −log σ(d) = log(1 + e^{−d})
NLS_0 = math.log(2)  # 0.693147
NLS_1 = math.log(1 + math.exp(-1))  # 0.313262
NLS_2 = math.log(1 + math.exp(-2))  # 0.126928
NLS_M1 = math.log(1 + math.e)  # 1.313262


def test_bradley_terry_hand_example():
    # diffs [1, 0] → [0.313262, 0.693147]; mean 0.503204, sum 1.006409
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    torch.testing.assert_close(bradley_terry_loss(rc, rr, reduction="none"), torch.tensor([NLS_1, NLS_0]))
    assert bradley_terry_loss(rc, rr).item() == pytest.approx((NLS_1 + NLS_0) / 2)
    assert bradley_terry_loss(rc, rr, reduction="sum").item() == pytest.approx(NLS_1 + NLS_0)
    # margin 1 shifts the diffs to [0, −1] → [0.693147, 1.313262]
    with_margin = bradley_terry_loss(rc, rr, margin=torch.tensor([1.0, 1.0]), reduction="none")
    torch.testing.assert_close(with_margin, torch.tensor([NLS_0, NLS_M1]))
    with pytest.raises(ValueError, match="reduction"):
        bradley_terry_loss(rc, rr, reduction="avg")


def test_bradley_terry_is_stable_for_large_gaps():
    # −log σ(−200) = 200 + log(1 + e^{−200}) ≈ 200; a naive log(sigmoid(...)) would give inf
    loss = bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0]), reduction="none")
    assert loss.item() == pytest.approx(200.0)


def test_pairwise_correct_ties_count_as_wrong():
    assert pairwise_correct(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 3.0])).tolist() == [1.0, 0.0, 0.0]


def test_normalize_ranking():
    assert normalize_ranking([[0, 2], 1]) == [[0, 2], [1]]
    assert normalize_ranking([3, 1, 2, 0]) == [[3], [1], [2], [0]]
    with pytest.raises(ValueError, match="index 1 appears twice"):
        normalize_ranking([1, [0, 1]])
    with pytest.raises(ValueError, match="empty tie group"):
        normalize_ranking([0, []])
    with pytest.raises(ValueError, match="not a non-negative int"):
        normalize_ranking([0, -1])


def test_ranking_pairs_with_offsets_and_ties():
    # prompt 0 (3 completions, offset 0): [[0, 2], 1] → (0, 1), (2, 1); prompt 1 (offset 3): [1, 0] → (4, 3)
    pairs = ranking_pairs([[[0, 2], 1], [1, 0]], group_sizes=[3, 2], n_scores=5)
    assert pairs.winners.tolist() == [0, 2, 4]
    assert pairs.losers.tolist() == [1, 1, 3]
    assert pairs.prompt.tolist() == [0, 0, 1]
    # a full ranking of K = 4 gives K(K−1)/2 = 6 pairs
    assert len(ranking_pairs([[2, 0, 3, 1]]).winners) == 6
    with pytest.raises(ValueError, match="ranking 1: index 2 out of range for 2 completions"):
        ranking_pairs([[0, 1], [2, 0]], group_sizes=[2, 2])
    with pytest.raises(ValueError, match="group sizes sum to 4 but there are 5 scores"):
        ranking_pairwise_loss(torch.zeros(5), [[0, 1], [1, 0]], group_sizes=[2, 2])


def naive_ranking_loss(scores, rankings, group_sizes):
    """Python-loop reference: per prompt, mean of −log σ over better/worse pairs; mean over prompts."""
    per_prompt = []
    offset = 0
    for ranking, size in zip(rankings, group_sizes):
        level = {}
        for position, entry in enumerate(ranking):
            for index in entry if isinstance(entry, list) else [entry]:
                level[index] = position
        pair_losses = [
            math.log(1 + math.exp(-(scores[offset + a] - scores[offset + b])))
            for a in level
            for b in level
            if level[a] < level[b]
        ]
        if pair_losses:
            per_prompt.append(sum(pair_losses) / len(pair_losses))
        offset += size
    return sum(per_prompt) / len(per_prompt)


def test_ranking_pairwise_loss_hand_example():
    # prompt A: scores [3, 1, 2], ranking [0, 2, 1]: pairs (0,2) d=1, (0,1) d=2, (2,1) d=1
    #   → (0.313262 + 0.126928 + 0.313262)/3 = 0.251151
    # prompt B: scores [0, 0], ranking [1, 0]: pair (1, 0) d=0 → 0.693147
    # mean over prompts: (0.251151 + 0.693147)/2 = 0.472149
    scores = torch.tensor([3.0, 1.0, 2.0, 0.0, 0.0], requires_grad=True)
    rankings = [[0, 2, 1], [1, 0]]
    loss = ranking_pairwise_loss(scores, rankings, group_sizes=[3, 2])
    expected = ((NLS_1 + NLS_2 + NLS_1) / 3 + NLS_0) / 2
    assert loss.item() == pytest.approx(expected)
    assert expected == pytest.approx(0.472149, abs=1e-6)
    loss.backward()
    assert scores.grad is not None


def test_ranking_pairwise_loss_ties_and_fully_tied_prompt():
    # [[0, 2], 1] with scores [3, 1, 2]: pairs (0,1) d=2, (2,1) d=1 → (0.126928 + 0.313262)/2 = 0.220095
    # the second prompt ties everything → no pair → left out of the mean
    scores = torch.tensor([3.0, 1.0, 2.0, 5.0, -5.0])
    loss = ranking_pairwise_loss(scores, [[[0, 2], 1], [[0, 1]]], group_sizes=[3, 2])
    assert loss.item() == pytest.approx((NLS_2 + NLS_1) / 2)
    only_ties = torch.tensor([1.0, 2.0], requires_grad=True)
    zero = ranking_pairwise_loss(only_ties, [[[0, 1]]])
    assert zero.item() == 0.0
    zero.backward()  # still part of the graph
    assert only_ties.grad.tolist() == [0.0, 0.0]


def test_ranking_pairwise_loss_matches_python_loop():
    torch.manual_seed(0)
    group_sizes = [4, 3, 5, 2]
    rankings = [[3, [0, 1], 2], [0, 1, 2], [[4, 1], 0, [2, 3]], [[0, 1]]]
    scores = torch.randn(sum(group_sizes), dtype=torch.float64)
    loss = ranking_pairwise_loss(scores, rankings, group_sizes)
    assert loss.item() == pytest.approx(naive_ranking_loss(scores.tolist(), rankings, group_sizes), rel=1e-12)


def test_ranking_pair_correct_hand_example():
    # scores [3, 1, 2], ranking [1, 0, 2]: pairs in order (1,0): 1>3 no; (1,2): 1>2 no; (0,2): 3>2 yes
    correct = ranking_pair_correct(torch.tensor([3.0, 1.0, 2.0]), [[1, 0, 2]])
    assert correct.tolist() == [0.0, 0.0, 1.0]


def test_plackett_luce_hand_examples():
    # scores log [1, 2, 3] → strengths 1, 2, 3 (total 6)
    s = torch.log(torch.tensor([1.0, 2.0, 3.0]))
    # [2, 1, 0]: 3/6 · 2/3 = 1/3 → NLL ln 3 = 1.098612
    assert plackett_luce_loss(s, [[2, 1, 0]]).item() == pytest.approx(math.log(3))
    # [0, 1, 2]: 1/6 · 2/5 = 1/15 → ln 15 = 2.708050
    assert plackett_luce_loss(s, [[0, 1, 2]]).item() == pytest.approx(math.log(15))
    # tie first: group {1,2} chosen from {0,1,2} with prob (2+3)/6 = 5/6 → ln(6/5) = 0.182322
    assert plackett_luce_loss(s, [[[1, 2], 0]]).item() == pytest.approx(math.log(6 / 5))
    # tie last: 2 first with prob 3/6, then {0,1} as a set from {0,1} → 1; NLL ln 2
    assert plackett_luce_loss(s, [[2, [0, 1]]]).item() == pytest.approx(math.log(2))
    # mean over prompts: (ln 3 + ln 15)/2; an all-tied prompt is left out
    both = plackett_luce_loss(torch.cat([s, s, s]), [[2, 1, 0], [0, 1, 2], [[0, 1, 2]]], group_sizes=[3, 3, 3])
    assert both.item() == pytest.approx((math.log(3) + math.log(15)) / 2)


def test_plackett_luce_two_items_is_bradley_terry():
    a, b = 0.7, -0.4
    pl = plackett_luce_loss(torch.tensor([a, b]), [[0, 1]])
    bt = bradley_terry_loss(torch.tensor([a]), torch.tensor([b]))
    assert pl.item() == pytest.approx(bt.item())


def test_plackett_luce_is_a_distribution_over_strict_rankings():
    # Σ over all 4! orders of exp(−NLL) must be 1: an independent check of the normalisers
    torch.manual_seed(1)
    s = torch.randn(4, dtype=torch.float64)
    total = sum(math.exp(-plackett_luce_loss(s, [list(p)]).item()) for p in itertools.permutations(range(4)))
    assert total == pytest.approx(1.0, abs=1e-12)


def test_reward_centering_hand_example():
    # pair form: (1 + 2)² = 9, (−1 + 0)² = 1 → mean 5 → 0.01 · 5 = 0.05
    assert reward_centering_loss(torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.0])).item() == pytest.approx(0.05)
    # single tensor: mean(1, 4, 9) = 14/3 → 0.1 · 14/3 = 0.466667
    assert reward_centering_loss(torch.tensor([1.0, 2.0, 3.0]), coef=0.1).item() == pytest.approx(14 / 30)
