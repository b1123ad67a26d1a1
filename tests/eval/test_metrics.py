"""Evaluation metrics against hand-computed values and known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignloop.eval.metrics import (
    bootstrap_ci,
    distinct_n,
    expected_calibration_error,
    length_reward_correlation,
    mcnemar_exact,
    paired_tests,
    self_bleu,
    sentence_bleu,
    sequence_kl_mc,
    win_rate,
)
from alignloop.eval.report import reliability_diagram


def test_win_rate_counts_ties_half():
    # 1>0 win, 2=2 tie, 3<4 loss, 3>1 win: (1 + 0.5 + 0 + 1) / 4 = 0.625
    assert win_rate([1, 2, 3, 3], [0, 2, 4, 1]) == 0.625
    assert win_rate(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])) == 0.5
    with pytest.raises(ValueError, match="equal-length"):
        win_rate([1, 2], [1])


def test_distinct_n_hand_examples():
    texts = ["a b a b", "a c"]
    # unigrams a b a b a c: 3 unique / 6 = 0.5
    assert distinct_n(texts, 1) == 0.5
    # bigrams "a b", "b a", "a b", "a c": 3 unique / 4 = 0.75
    assert distinct_n(texts, 2) == 0.75
    # trigrams only from the first text: "a b a", "b a b": 2 / 2
    assert distinct_n(texts, 3) == 1.0
    assert distinct_n(["a b"], 3) == 0.0
    assert distinct_n(["A a"], 1) == 1.0  # case is kept


def test_sentence_bleu_hand_computation():
    hyp, ref = "the cat sat on the mat".split(), "the cat sat on a mat".split()
    # unigrams: "the" clipped to 1 -> 5/6; bigrams: 3 of 5 match -> (3+1)/(5+1) = 2/3; BP = 1
    assert sentence_bleu(hyp, [ref], n=2) == pytest.approx(math.sqrt(5 / 6 * 2 / 3))  # 0.745356
    # short hypothesis "the cat" vs 6 words: p1 = 1, p2 = (1+1)/(1+1) = 1, BP = exp(1 - 6/2) = 0.135335
    assert sentence_bleu("the cat".split(), [ref], n=2) == pytest.approx(math.exp(-2))
    # clipping by the reference holding most "the": 2 of 3; closest reference length 3 -> BP 1
    assert sentence_bleu("the the the".split(), ["the cat".split(), "the the dog".split()], n=1) == pytest.approx(2 / 3)
    # length 4 between references of 3 and 5: the shorter is taken, so no brevity penalty
    assert sentence_bleu("a b c d".split(), ["a b c".split(), "a b c d e".split()], n=1) == 1.0
    assert sentence_bleu("x y".split(), [ref]) == 0.0  # no shared word
    assert sentence_bleu([], [ref]) == 0.0


def test_self_bleu_hand_and_against_the_direct_computation():
    # "a b c" vs {"a b d", "x y z"}: p1 = 2/3, p2 = (1+1)/(2+1) = 2/3 -> 2/3; "a b d" likewise;
    # "x y z" shares nothing -> 0. Mean = (2/3 + 2/3 + 0) / 3 = 4/9
    assert self_bleu(["a b c", "a b d", "x y z"], n=2) == pytest.approx(4 / 9)
    rng = np.random.default_rng(0)
    vocab = list("abcdef")
    texts = [" ".join(rng.choice(vocab, size=rng.integers(1, 9))) for _ in range(12)]
    direct = np.mean(
        [sentence_bleu(t.split(), [o.split() for j, o in enumerate(texts) if j != i]) for i, t in enumerate(texts)]
    )
    assert self_bleu(texts, n=4) == pytest.approx(direct)
    assert self_bleu(["same words here"] * 3) == pytest.approx(1.0)
    assert 0.0 <= self_bleu(texts, max_samples=5, seed=1) <= 1.0
    with pytest.raises(ValueError, match="at least 2 texts"):
        self_bleu(["one"])


def test_sequence_kl_mc_matches_exact_kl_of_two_categoricals():
    p = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    q = np.full(5, 0.2)
    exact = float(np.sum(p * np.log(p / q)))  # KL(p‖q) = Σ p log(p/q) = 0.2921
    samples = np.random.default_rng(0).choice(5, size=20000, p=p)
    estimate, stderr = sequence_kl_mc(torch.tensor(np.log(p[samples])), np.log(q[samples]))
    assert abs(estimate - exact) < 4 * stderr
    variance = float(np.sum(p * (np.log(p / q) - exact) ** 2))
    assert stderr == pytest.approx(math.sqrt(variance / 20000), rel=0.1)
    # hand example: differences 1, 2, 3 -> mean 2, std (ddof 1) 1, stderr 1/√3
    assert sequence_kl_mc([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]) == pytest.approx((2.0, 1 / math.sqrt(3)))
    assert math.isnan(sequence_kl_mc([1.0], [0.0])[1])


def test_bootstrap_ci_basic():
    assert bootstrap_ci([3.0] * 10) == (3.0, 3.0)
    low, high = bootstrap_ci(np.arange(100), seed=1)
    assert low < 49.5 < high
    assert bootstrap_ci(np.arange(100), seed=1) == (low, high)  # seeded
    med_low, med_high = bootstrap_ci(np.arange(101), n_boot=200, statistic=np.median)
    assert med_low <= 50 <= med_high
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])


def test_bootstrap_ci_coverage_on_a_normal_mean():
    # 300 data sets of 40 draws from N(1, 2²): the 95% interval should hold the true mean 1 in
    # about 95% of them (the percentile bootstrap runs a little low at n = 40, ~93-94%).
    rng = np.random.default_rng(123)
    trials = 300
    hits = sum(low <= 1.0 <= high for low, high in (bootstrap_ci(rng.normal(1.0, 2.0, 40), n_boot=400, seed=t) for t in range(trials)))
    assert 0.89 <= hits / trials <= 0.99


def test_expected_calibration_error_hand_examples():
    # four bins with one item each: |0-.05| + |1-.15| + |1-.85| + |1-.95| = 1.1, / 4 = 0.275
    assert expected_calibration_error([0.05, 0.15, 0.85, 0.95], [0, 1, 1, 1]) == pytest.approx(0.275)
    # 2 bins, all in [0.5, 1]: mean prob (0.6+0.7+0.65+0.62)/4 = 0.6425, frequency 3/4 -> 0.1075
    assert expected_calibration_error([0.6, 0.7, 0.65, 0.62], [1, 0, 1, 1], n_bins=2) == pytest.approx(0.1075)
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0  # 1.0 falls in the last bin
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        expected_calibration_error([1.2], [1])


def test_reliability_diagram_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.random(200)
    path = reliability_diagram(probs, rng.random(200) < probs, tmp_path / "plots" / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_length_reward_correlation():
    assert length_reward_correlation([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx({"pearson": 1.0, "spearman": 1.0})
    # ranks with a tie: x -> [1, 2.5, 2.5, 4], y -> [1, 3, 2, 4]; Σdxdy = 4.5, Σdx² = 4.5, Σdy² = 5
    # spearman = 4.5 / √22.5 = 0.948683 ; pearson on the raw values = 3 / √10 = 0.948683
    result = length_reward_correlation([1, 2, 2, 3], [1, 3, 2, 4])
    assert result == pytest.approx({"pearson": 3 / math.sqrt(10), "spearman": 4.5 / math.sqrt(22.5)})
    assert math.isnan(length_reward_correlation([5, 5, 5], [1, 2, 3])["pearson"])


def test_length_reward_correlation_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 20, 60)  # many ties
    rewards = lengths * 0.1 + rng.normal(size=60)
    result = length_reward_correlation(lengths, rewards)
    assert result["pearson"] == pytest.approx(stats.pearsonr(lengths, rewards)[0])
    assert result["spearman"] == pytest.approx(stats.spearmanr(lengths, rewards)[0])


def test_mcnemar_exact_by_hand():
    # 3 gained, 0 lost: P(X <= 0 | Bin(3, 1/2)) = 1/8, two-sided 1/4
    assert mcnemar_exact(3, 0) == pytest.approx(0.25)
    # 6 vs 1: P(X <= 1 | Bin(7, 1/2)) = (1 + 7) / 128, two-sided 1/8; symmetric in its arguments
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_mcnemar_exact_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for gained, lost in [(17, 7), (30, 12), (2, 9)]:
        expected = stats.binomtest(min(gained, lost), gained + lost, 0.5).pvalue
        assert mcnemar_exact(gained, lost) == pytest.approx(expected)


def test_paired_tests_by_hand():
    # d = [1, 2, -0.5, 3, 0]: the zero is dropped; |d| ranks 0.5->1, 1->2, 2->3, 3->4, W+ = 2 + 3 + 4 = 9
    # n = 4: mean n(n+1)/4 = 5, variance n(n+1)(2n+1)/24 = 7.5, z = 4 / sqrt(7.5) = 1.460593, p = erfc(z/sqrt 2)
    result = paired_tests([1, 2, -0.5, 3, 7], [0, 0, 0, 0, 7])
    assert result["gain_mean"] == pytest.approx(5.5 / 5)
    assert (result["wins"], result["losses"], result["ties"]) == (3, 1, 1)
    assert result["sign_p"] == pytest.approx(0.625)  # 2 * (1 + 4) / 16
    assert result["wilcoxon_p"] == pytest.approx(0.144127, abs=1e-6)
    # tied |d| = [0.5, 0.5, 0.5] share rank 2: W+ = 2, mean 3, variance 3.5 - (27 - 3)/48 = 3.0, z = -1/sqrt(3)
    tied = paired_tests([0.5, -0.5, -0.5], [0, 0, 0])
    assert tied["wilcoxon_p"] == pytest.approx(math.erfc(1 / math.sqrt(3) / math.sqrt(2)))
    assert math.isnan(paired_tests([1, 2], [1, 2])["wilcoxon_p"])
    with pytest.raises(ValueError):
        paired_tests([1, 2], [1])


def test_paired_tests_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    a = np.round(rng.normal(0.3, 1, size=80), 1)  # rounding makes zeros and tied |d|
    b = np.round(rng.normal(0.0, 1, size=80), 1)
    expected = stats.wilcoxon(a, b, zero_method="wilcox", correction=False, method="asymptotic").pvalue
    assert paired_tests(a, b)["wilcoxon_p"] == pytest.approx(expected, rel=1e-9)

