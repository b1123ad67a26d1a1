"""Evaluation metrics as pure functions of numbers and texts (numpy; torch tensors are accepted).

Formulas and how to read each one: docs/evaluation.md.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np


def _as_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().to("cpu").double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def bootstrap_ci(
    values: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    statistic: Callable[[np.ndarray], float] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` interval of ``statistic`` (default: the mean) at level 1 − alpha.

    Resamples ``values`` with replacement ``n_boot`` times and takes the alpha/2 and 1 − alpha/2
    quantiles of the resampled statistic.
    """
    data = _as_array(values)
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    if statistic is None:
        stats = np.empty(n_boot)
        chunk = max(1, 2_000_000 // data.size)  # bound the index matrix to ~16 MB
        for start in range(0, n_boot, chunk):
            rows = min(chunk, n_boot - start)
            stats[start : start + rows] = data[rng.integers(0, data.size, (rows, data.size))].mean(axis=1)
    else:
        stats = np.array([statistic(data[rng.integers(0, data.size, data.size)]) for _ in range(n_boot)])
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def win_rate(scores_a: Any, scores_b: Any) -> float:
    """Share of paired items where a beats b, a tie counting one half: mean(1[a>b] + ½·1[a=b])."""
    a, b = _as_array(scores_a), _as_array(scores_b)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"win_rate needs two equal-length, non-empty score lists, got {a.size} and {b.size}")
    return float(np.mean((a > b) + 0.5 * (a == b)))


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams, pooled over all ``texts``; tokens are ``str.split()`` words, case kept.

    0.0 when no text has n tokens.
    """
    grams = [gram for text in texts for gram in _ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def sentence_bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> float:
    """BLEU of one tokenised hypothesis against tokenised references, with BLEU+1 smoothing.

    BLEU = BP · exp(mean_k log p_k), k = 1..n, where p_k is the clipped k-gram precision
    (each k-gram counted at most as often as in the reference that has most of it). Smoothing
    (Lin & Och 2004, "BLEU+1"): p_k = (matches_k + 1) / (total_k + 1) for k ≥ 2; p_1 is unsmoothed,
    so a hypothesis sharing no word with any reference scores 0. BP = exp(1 − r/c) when the
    hypothesis length c is below r, the reference length closest to c (the shorter one on a tie),
    else 1. An empty hypothesis scores 0.
    """
    if not hypothesis or not references:
        return 0.0
    max_ref_counts: list[Counter] = []
    for k in range(1, n + 1):
        merged: Counter = Counter()
        for reference in references:
            merged |= Counter(_ngrams(reference, k))  # | keeps the max count per n-gram
        max_ref_counts.append(merged)
    return _bleu_from_counts(hypothesis, max_ref_counts, [len(r) for r in references], n)


def _bleu_from_counts(
    hypothesis: Sequence[str], max_ref_counts: list[Counter], ref_lengths: list[int], n: int
) -> float:
    log_precision = 0.0
    for k in range(1, n + 1):
        hyp_counts = Counter(_ngrams(hypothesis, k))
        total = sum(hyp_counts.values())
        matches = sum(min(count, max_ref_counts[k - 1].get(gram, 0)) for gram, count in hyp_counts.items())
        if k == 1:
            if matches == 0:
                return 0.0
            log_precision += math.log(matches / total)
        else:
            log_precision += math.log((matches + 1) / (total + 1))
    length = len(hypothesis)
    closest = min(ref_lengths, key=lambda ref_len: (abs(ref_len - length), ref_len))
    brevity = 1.0 if length >= closest else math.exp(1 - closest / length)
    return brevity * math.exp(log_precision / n)


def self_bleu(texts: Sequence[str], n: int = 4, max_samples: int | None = 200, seed: int = 0) -> float:
    """Mean over texts of BLEU(text, all other texts as references); higher = less diverse.

    With more than ``max_samples`` texts, a seeded random subset of that size is used (the cost is
    quadratic). Tokens are ``str.split()`` words; BLEU as in ``sentence_bleu``.
    """
    if len(texts) < 2:
        raise ValueError(f"self_bleu needs at least 2 texts, got {len(texts)}")
    chosen = list(texts)
    if max_samples is not None and len(chosen) > max_samples:
        keep = np.random.default_rng(seed).choice(len(chosen), size=max_samples, replace=False)
        chosen = [chosen[i] for i in sorted(keep)]
    tokens = [text.split() for text in chosen]
    lengths = [len(t) for t in tokens]
    # For each n-gram: the two largest counts over texts and which text holds the largest, so that
    # "max over the other texts" is one lookup instead of a loop over every reference.
    top: list[dict[tuple[str, ...], tuple[int, int, int]]] = []
    for k in range(1, n + 1):
        best: dict[tuple[str, ...], tuple[int, int, int]] = {}
        for owner, words in enumerate(tokens):
            for gram, count in Counter(_ngrams(words, k)).items():
                first, first_owner, second = best.get(gram, (0, -1, 0))
                if count > first:
                    best[gram] = (count, owner, first)
                else:
                    best[gram] = (first, first_owner, max(second, count))
        top.append(best)
    scores = []
    for index, words in enumerate(tokens):
        if not words:
            scores.append(0.0)
            continue
        max_ref_counts = []
        for k in range(1, n + 1):
            counts: Counter = Counter()
            for gram in set(_ngrams(words, k)):
                first, first_owner, second = top[k - 1][gram]
                counts[gram] = second if first_owner == index else first
            max_ref_counts.append(counts)
        other_lengths = lengths[:index] + lengths[index + 1 :]
        scores.append(_bleu_from_counts(words, max_ref_counts, other_lengths, n))
    return float(np.mean(scores))


def sequence_kl_mc(policy_logps_seq: Any, ref_logps_seq: Any) -> tuple[float, float]:
    """Monte-Carlo KL(policy ‖ ref) from sequences sampled from the policy: ``(mean, standard error)``.

    Inputs are each sequence's summed log-probability under the policy and under the reference.
    KL = E_{y~π}[log π(y) − log π_ref(y)], estimated by the sample mean of the differences; the
    standard error is their sample std (ddof=1) / √N (NaN for a single sample). Individual terms
    can be negative; the expectation cannot.
    """
    policy, ref = _as_array(policy_logps_seq), _as_array(ref_logps_seq)
    if policy.shape != ref.shape or policy.size == 0:
        raise ValueError(f"sequence_kl_mc needs two equal-length, non-empty arrays, got {policy.size} and {ref.size}")
    diffs = policy - ref
    stderr = float(diffs.std(ddof=1) / math.sqrt(diffs.size)) if diffs.size > 1 else float("nan")
    return float(diffs.mean()), stderr


def calibration_bins(probs: Any, labels: Any, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin over [0, 1]: (mean predicted probability, observed frequency of label 1, count).

    Bin i holds probabilities in [i/B, (i+1)/B); the last bin also holds 1.0. Empty bins give NaN.
    """
    p, y = _as_array(probs), _as_array(labels)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"calibration needs equal-length, non-empty probs and labels, got {p.size} and {y.size}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("calibration: probabilities must lie in [0, 1]")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(bins, weights=p, minlength=n_bins) / counts
        frequency = np.bincount(bins, weights=y, minlength=n_bins) / counts
    return confidence, frequency, counts


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 10) -> float:
    """ECE = Σ_b (n_b / N) · |freq_b − conf_b| over equal-width bins of P(label = 1).

    For a reward model's pairwise P(chosen ≻ rejected), pass every pair in both orders (p with label
    1, 1 − p with label 0) so that a model that is always right but underconfident still shows up.
    """
    confidence, frequency, counts = calibration_bins(probs, labels, n_bins)
    filled = counts > 0
    return float(np.sum(counts[filled] / counts.sum() * np.abs(frequency[filled] - confidence[filled])))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their positions (as in Spearman's rho)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size)
    sorted_values = values[order]
    start = 0
    while start < values.size:
        end = start
        while end + 1 < values.size and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.sum(dx * dx) * np.sum(dy * dy)))
    return float(np.sum(dx * dy) / denominator) if denominator > 0 else float("nan")


def length_reward_correlation(lengths: Any, rewards: Any) -> dict[str, float]:
    """Pearson and Spearman correlation of completion length with reward (NaN when either is constant)."""
    x, y = _as_array(lengths), _as_array(rewards)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(
            f"length_reward_correlation needs two equal-length arrays of 2+ values, got {x.size} and {y.size}"
        )
    return {"pearson": _pearson(x, y), "spearman": _pearson(_average_ranks(x), _average_ranks(y))}


def mcnemar_exact(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value for a paired right/wrong comparison of two models.

    ``gained``: items model B gets right and A wrong; ``lost``: the reverse. Under the null (no
    difference) the discordant items split as Binomial(gained + lost, 1/2).
    """
    if gained < 0 or lost < 0:
        raise ValueError(f"counts must be >= 0, got gained={gained}, lost={lost}")
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def length_split_accuracy(
    winners: Any, losers: Any, winner_lengths: Any, loser_lengths: Any
) -> dict[str, float | int]:
    """Pairwise accuracy split by which answer is longer: a length-controlled view of a reward model.

    Each ordered pair has the score and length (tokens) of the preferred (``winners``) and the dispreferred
    (``losers``) answer. ``accuracy_chosen_shorter`` is the share of pairs where the preferred answer is strictly
    shorter that the model scores the right way round (a tie counts wrong); ``accuracy_chosen_longer`` the same for
    the pairs where it is strictly longer. A model that only rewards length scores 1 on one and 0 on the other.
    Accuracies are NaN when no pair falls in the group; ``pairs_*`` count the pairs, ``pairs_same_length`` those
    in neither group.
    """
    w, l = _as_array(winners), _as_array(losers)
    wl, ll = _as_array(winner_lengths), _as_array(loser_lengths)
    if not (w.shape == l.shape == wl.shape == ll.shape):
        raise ValueError(f"length_split_accuracy needs four equal-length arrays, got {w.size}, {l.size}, "
                         f"{wl.size} and {ll.size}")
    correct = w > l
    out: dict[str, float | int] = {}
    for name, group in (("chosen_shorter", wl < ll), ("chosen_longer", wl > ll)):
        n = int(group.sum())
        out[f"accuracy_{name}"] = float(correct[group].mean()) if n else float("nan")
        out[f"pairs_{name}"] = n
    out["pairs_same_length"] = int((wl == ll).sum())
    return out


def paired_tests(scores: Any, reference_scores: Any) -> dict[str, float | int]:
    """Per-item paired comparison of a policy's scores with the reference's on the same prompts.

    ``gain_mean`` = mean(score − reference); ``wins`` / ``losses`` / ``ties`` count the signs. ``sign_p``: exact
    two-sided sign test on the non-tied items (``mcnemar_exact``). ``wilcoxon_p``: two-sided Wilcoxon signed-rank
    test (Wilcoxon 1945), zero differences dropped, average ranks for tied |d|, normal approximation with the
    tie-corrected variance n(n+1)(2n+1)/24 − Σ(t³ − t)/48 and no continuity correction (scipy's
    ``wilcoxon(..., method="asymptotic")``); meant for the 50+ prompts of an evaluation. NaN with no non-zero
    difference.
    """
    a, b = _as_array(scores), _as_array(reference_scores)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_tests needs two equal-length, non-empty score lists, got {a.size} and {b.size}")
    diff = a - b
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    nonzero = diff[diff != 0]
    wilcoxon_p = float("nan")
    if nonzero.size:
        ranks = _average_ranks(np.abs(nonzero))
        n = nonzero.size
        _, counts = np.unique(np.abs(nonzero), return_counts=True)
        variance = n * (n + 1) * (2 * n + 1) / 24 - float((counts**3 - counts).sum()) / 48
        z = (ranks[nonzero > 0].sum() - n * (n + 1) / 4) / math.sqrt(variance) if variance > 0 else 0.0
        wilcoxon_p = math.erfc(abs(z) / math.sqrt(2))
    return {"gain_mean": float(diff.mean()), "wins": wins, "losses": losses, "ties": int(diff.size - wins - losses),
            "sign_p": mcnemar_exact(wins, losses), "wilcoxon_p": wilcoxon_p}
