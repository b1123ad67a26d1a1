"""Cohen's κ, Krippendorff's α, Bradley–Terry ratings: checked against hand-worked values."""

from __future__ import annotations

import math
import random

import pytest

from alignloop.feedback import store
from alignloop.feedback.db import run_tx
from alignloop.feedback.leaderboard import fit_bradley_terry, leaderboard, merged_ranks
from alignloop.feedback.quality import cohen_kappa, krippendorff_alpha, project_quality

from .conftest import make_project, make_users


def test_cohen_kappa_textbook_example():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15.
    # p_o = 35/50 = 0.7; rater 1 says yes 25/50, rater 2 30/50 -> p_e = .5*.6 + .5*.4 = 0.5; κ = 0.2/0.5 = 0.4
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([("a", "a")] * 3) is None  # one category only: undefined


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the 4-coder, 12-unit example
# with missing values: nominal α = 0.743, interval α = 0.849.
KRIPPENDORFF_UNITS = [
    [1, 1, 1], [2, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3], [2, 2, 2, 2], [1, 2, 3, 4],
    [4, 4, 4, 4], [1, 1, 2, 1], [2, 2, 2, 2], [5, 5, 5], [1, 1], [3],
]


def test_krippendorff_alpha_published_example():
    assert krippendorff_alpha(KRIPPENDORFF_UNITS, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(KRIPPENDORFF_UNITS, "interval") == pytest.approx(0.849, abs=5e-4)


def test_bradley_terry_two_models_by_hand():
    # A beats B 3 times in 4: p = 3/4 -> θA - θB = log10(3) -> 400·log10(3) = 190.85 Elo apart,
    # centred on 1000: 1095.42 and 904.58
    ratings = fit_bradley_terry(["A", "B"], [("A", "B", 1.0)] * 3 + [("A", "B", 0.0)])
    assert ratings["A"] - ratings["B"] == pytest.approx(400 * math.log10(3), abs=0.05)
    assert ratings["A"] == pytest.approx(1095.42, abs=0.05)


def test_ties_count_as_half_a_win():
    # 1 win + 2 ties for A = 2 points of 3: p = 2/3 -> 400·log10(2) = 120.41
    ratings = fit_bradley_terry(["A", "B"], [("A", "B", 1.0), ("A", "B", 0.5), ("B", "A", 0.5)])
    assert ratings["A"] - ratings["B"] == pytest.approx(400 * math.log10(2), abs=0.05)


def test_bradley_terry_matches_zermelo_iteration():
    # An independent fit: Zermelo/Hunter MM updates p_i = W_i / Σ_j n_ij / (p_i + p_j).
    rng = random.Random(0)
    models = ["m0", "m1", "m2", "m3"]
    strength = {"m0": 0.0, "m1": 0.3, "m2": 0.6, "m3": 1.0}
    battles = []
    for _ in range(400):
        a, b = rng.sample(models, 2)
        p = 1 / (1 + 10 ** (strength[b] - strength[a]))
        battles.append((a, b, 1.0 if rng.random() < p else 0.0))
    wins = {m: 0.0 for m in models}
    n = {(a, b): 0 for a in models for b in models}
    for a, b, s in battles:
        wins[a] += s
        wins[b] += 1 - s
        n[(a, b)] += 1
        n[(b, a)] += 1
    p = {m: 1.0 for m in models}
    for _ in range(2000):
        p = {i: wins[i] / sum(n[(i, j)] / (p[i] + p[j]) for j in models if j != i) for i in models}
    mean_log = sum(math.log10(v) for v in p.values()) / len(p)
    expected = {m: 400 * (math.log10(p[m]) - mean_log) + 1000 for m in models}
    got = fit_bradley_terry(models, battles)
    for m in models:
        assert got[m] == pytest.approx(expected[m], abs=0.5)


def test_ranks_merge_overlapping_intervals():
    # a's interval lies wholly above c's only: a 1, b 1 (overlaps a), c 2 (a's low 1100 > c's high 1050)
    ranks = merged_ranks({"a": (1100, 1200), "b": (1040, 1150), "c": (950, 1050)})
    assert ranks == {"a": 1, "b": 1, "c": 2}


def test_project_quality_and_leaderboard(sqlite_factory):
    f = sqlite_factory
    u1, u2 = make_users(f, "u1", "u2")
    project = make_project(f, n_items=4, gold=1, gold_rate=0.5, overlap=2, models=["good", "bad"])
    # u1 picks response 0 on items 0-1 and 1 on items 2-3; u2 picks 0 on items 0-2 and 1 on item 3;
    # both answer the gold item right (its best response is 0).
    def label_item(u, item_winner):
        def go(s):
            p = store.get_project(s, project.id)
            a = store.next_assignment(s, u, p)
            item = store.load_item(s, a.item_id)
            want = 0 if item.is_gold else item_winner(item.position)
            pos = a.display_order.index(want)
            store.submit_label(s, u, a.id, {"choice": "AB"[pos]})
        run_tx(f, go)

    for _ in range(5):
        label_item(u1, lambda pos: 0 if pos < 2 else 1)
        label_item(u2, lambda pos: 0 if pos < 3 else 1)
    q = run_tx(f, lambda s: project_quality(s, store.get_project(s, project.id)))
    by_name = {a["username"]: a for a in q["annotators"]}
    # units (u1, u2): (0,0) (0,0) (1,0) (1,1): p_o = 3/4; u1 {0:2, 1:2}, u2 {0:3, 1:1}
    # -> p_e = (2·3 + 2·1)/16 = 1/2 -> κ = (3/4 - 1/2) / (1/2) = 0.5
    assert by_name["u1"]["kappa"] == pytest.approx(0.5)
    assert by_name["u1"]["gold_accuracy"] == 1.0 and by_name["u2"]["gold_accuracy"] == 1.0
    # α nominal: n = 8 values, one disagreeing unit -> D_o = 2/8; counts {0:5, 1:3}
    # -> D_e = 2·5·3/(8·7) = 30/56 -> α = 1 - 0.25·56/30 = 0.5333
    assert q["alpha"] == pytest.approx(1 - 0.25 * 56 / 30)
    # position bias: every strict choice is recorded with its displayed side
    assert 0.0 <= q["position_a_rate"] <= 1.0 and q["strict_ab_choices"] == 10
    board = run_tx(f, lambda s: leaderboard(s, store.get_project(s, project.id), rounds=20))
    assert [r["model"] for r in board] == ["good", "bad"]


def test_position_bias_rate_counts_first_shown_choices(sqlite_factory):
    f = sqlite_factory
    (u,) = make_users(f, "clicker")
    project = make_project(f, n_items=4)

    def press(choice):
        def go(s):
            a = store.next_assignment(s, u, store.get_project(s, project.id))
            store.submit_label(s, u, a.id, {"choice": choice})
        run_tx(f, go)

    for choice in ("A", "A", "A", "tie"):
        press(choice)
    q = run_tx(f, lambda s: project_quality(s, store.get_project(s, project.id)))
    # 3 strict choices, all of the first-shown response (the tie is not a strict choice): 3/3
    assert q["position_a_rate"] == 1.0 and q["strict_ab_choices"] == 3


def test_responses_naming_their_model_are_flagged():
    from alignloop.feedback.store import names_model

    assert names_model("As SmolLM2, I think the answer is 4.", "smollm2-135m-instruct")
    assert names_model("I am tiny-llama.", "/models/tiny-llama")
    assert not names_model("The answer is 4.", "smollm2-135m-instruct")
    assert not names_model("anything", None)
