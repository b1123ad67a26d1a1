"""The simulated annotator: Bradley–Terry labels on a gold scorer, noise, determinism, rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignloop.errors import ConfigError
from alignloop.feedback.simulated import SimulatedAnnotator, preference_probability


class NumberGold:
    """Gold score = the number written in the completion (so tests choose score gaps exactly)."""

    name = "number"

    def score(self, prompts, completions):
        return [float(text.split("#")[0]) for text in completions]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_preference_probability_formula():
    # Δ = 0.3 - 0.1 = 0.2, T = 0.1: σ(2) = 0.8808 ; with flip 0.1: 0.9*0.8808 + 0.1*0.1192 = 0.8047
    assert preference_probability([0.3], [0.1], 0.1)[0] == pytest.approx(sigmoid(2.0))
    assert preference_probability([0.3], [0.1], 0.1, 0.1)[0] == pytest.approx(0.9 * sigmoid(2.0) + 0.1 * sigmoid(-2.0))
    assert preference_probability([1.0, 0.0, 0.5], [0.0, 1.0, 0.5], 0.0).tolist() == [1.0, 0.0, 0.5]
    assert preference_probability([1000.0], [-1000.0], 0.01)[0] == 1.0  # no overflow


@pytest.mark.parametrize("temperature", [0.0, 1e-6])
def test_zero_temperature_agrees_with_gold_ordering(temperature):
    annotator = SimulatedAnnotator(NumberGold(), temperature=temperature, seed=0)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=200), rng.normal(size=200)  # smallest gap here is far above 1e-6
    records = annotator.label_pairs(["p"] * 200, [f"{x}" for x in a], [f"{x}" for x in b])
    assert len(records) == 200
    assert all(float(r["chosen"]) > float(r["rejected"]) for r in records)
    assert records[0]["source"] == "simulated:number"
    assert set(records[0]) == {"prompt", "chosen", "rejected", "source"}


@pytest.mark.parametrize("flip_prob", [0.0, 0.2])
def test_agreement_rate_matches_bradley_terry(flip_prob):
    # gap Δ = 0.1, T = 0.1: P(higher chosen) = σ(1) = 0.7311; with flip 0.2: 0.8*0.7311 + 0.2*0.2689 = 0.6387
    n = 4000
    expected = (1 - flip_prob) * sigmoid(1.0) + flip_prob * sigmoid(-1.0)
    annotator = SimulatedAnnotator(NumberGold(), temperature=0.1, flip_prob=flip_prob, seed=3)
    # "#i" keeps the texts distinct while the gold scores repeat
    records = annotator.label_pairs(["p"] * n, [f"0.6#{i}" for i in range(n)], [f"0.5#{i}" for i in range(n)])
    agree = np.mean([r["chosen"].startswith("0.6") for r in records])
    tolerance = 4 * math.sqrt(expected * (1 - expected) / n)  # 4 binomial standard errors (~0.028)
    assert abs(agree - expected) < tolerance


def test_flip_prob_one_always_prefers_the_worse():
    annotator = SimulatedAnnotator(NumberGold(), temperature=0.0, flip_prob=1.0, seed=0)
    records = annotator.label_pairs(["p"] * 50, [f"{i + 1}" for i in range(50)], [f"{-i}" for i in range(50)])
    assert all(float(r["chosen"]) < float(r["rejected"]) for r in records)


def test_seeded_determinism_and_identical_pairs_skipped():
    prompts = ["p1", "p2", "p3", "p4"]
    a, b = ["I love it", "same", "bad day", "great"], ["I hate it", "same", "good day", "awful"]

    def run(seed: int) -> list[dict]:
        return SimulatedAnnotator("vader", temperature=0.5, seed=seed).label_pairs(prompts, a, b)

    first = run(7)
    assert first == run(7)
    assert [r["prompt"] for r in first] == ["p1", "p3", "p4"]  # the identical pair is skipped
    assert first[0]["source"] == "simulated:vader"
    # over seeds, both labels occur for a pair with a moderate gold gap
    outcomes = {SimulatedAnnotator(NumberGold(), temperature=1.0, seed=s).label_pairs(["p"], ["0.5"], ["0"])[0]["chosen"] for s in range(30)}
    assert outcomes == {"0.5", "0"}


def test_label_groups_ranking():
    annotator = SimulatedAnnotator(NumberGold(), temperature=0.0, seed=0)
    record = annotator.label_groups("p", ["1", "3", "2", "3"])
    # "3" appears twice: a tie of indices 1 and 3, then "2" (index 2), then "1" (index 0)
    assert record["ranking"] == [[1, 3], 2, 0]
    assert record["completions"] == ["1", "3", "2", "3"] and record["source"] == "simulated:number"


def test_label_groups_plackett_luce_top_choice_frequency():
    # P(top = i) = exp(s_i/T) / Σ exp(s_j/T); scores 0, 1, 2 with T = 1: e^2/(1+e+e^2) = 0.6652
    annotator = SimulatedAnnotator(NumberGold(), temperature=1.0, seed=11)
    n = 3000
    tops = [annotator.label_groups("p", ["0", "1", "2"])["ranking"][0] for _ in range(n)]
    expected = math.exp(2) / (1 + math.e + math.exp(2))
    assert abs(np.mean(np.array(tops) == 2) - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="temperature must be >= 0, got -1"):
        SimulatedAnnotator(NumberGold(), temperature=-1)
    with pytest.raises(ConfigError, match=r"flip_prob must be in \[0, 1\], got 1.5"):
        SimulatedAnnotator(NumberGold(), flip_prob=1.5)
    with pytest.raises(ConfigError, match="label_pairs: got 2 prompts, 1 and 2 completions"):
        SimulatedAnnotator(NumberGold()).label_pairs(["a", "b"], ["1"], ["1", "2"])
