"""Reward-model evaluation: pairwise accuracy, margin, calibration, and the run directory's report.

Calibration reads ``p = σ(r_better − r_worse)`` as the model's P(better is preferred). Every pair is passed
in both orders (``p`` with label 1, ``1 − p`` with label 0), so an always-right but underconfident model
shows a gap too (see docs/evaluation.md). The report adds score histograms of preferred vs dispreferred
completions, the length–reward correlation (a reward model that mostly prefers longer answers invites
length hacking), per-criterion accuracies and, for ensembles, the members' disagreement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from alignloop.eval.metrics import expected_calibration_error, length_reward_correlation, length_split_accuracy
from alignloop.eval.report import (
    Section,
    Table,
    figure_png,
    plot_reliability,
    plot_reward_histograms,
    plot_training_curves,
    write_report,
    write_report_json,
)


@dataclass
class PreferenceScores:
    """Scores of a held-out set: per ordered pair (overall head), per criterion, and per completion."""

    winners: np.ndarray  # score of the preferred completion, one per ordered pair
    losers: np.ndarray  # score of the dispreferred completion
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0))  # tokens, one per unique completion
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # overall score, one per unique completion
    criteria: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    uncertainty: np.ndarray | None = None  # ensemble std, one per unique completion
    winner_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0))  # tokens, one per ordered pair
    loser_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0))
    length_head: np.ndarray | None = None  # ODIN's length head (dropped at use), one per unique completion


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def calibration_inputs(winners: Any, losers: Any) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) with every pair in both orders: σ(w − l) labelled 1 and σ(l − w) labelled 0."""
    diff = np.asarray(winners, dtype=np.float64) - np.asarray(losers, dtype=np.float64)
    probs = np.concatenate([_sigmoid(diff), _sigmoid(-diff)])
    labels = np.concatenate([np.ones_like(diff), np.zeros_like(diff)])
    return probs, labels


def preference_metrics(winners: Any, losers: Any, n_bins: int = 10) -> dict[str, float]:
    """``accuracy`` (ties count wrong), ``margin`` (mean r_w − r_l), ``ece`` and ``pairs``; NaN when empty."""
    w, l = np.asarray(winners, dtype=np.float64), np.asarray(losers, dtype=np.float64)
    if w.size == 0:
        return {"accuracy": float("nan"), "margin": float("nan"), "ece": float("nan"), "pairs": 0}
    probs, labels = calibration_inputs(w, l)
    return {
        "accuracy": float(np.mean(w > l)),
        "margin": float(np.mean(w - l)),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "pairs": int(w.size),
    }


def report_numbers(scores: PreferenceScores, n_bins: int = 10) -> dict[str, Any]:
    """Everything the report shows, as plain numbers (written to ``rm_report.json``)."""
    numbers: dict[str, Any] = dict(preference_metrics(scores.winners, scores.losers, n_bins))
    if scores.lengths.size >= 2:
        numbers["length_reward_correlation"] = length_reward_correlation(scores.lengths, scores.scores)
        if scores.length_head is not None:
            numbers["length_head_correlation"] = length_reward_correlation(scores.lengths, scores.length_head)
    if scores.winner_lengths.size and scores.winner_lengths.size == scores.winners.size:
        numbers["length_split"] = length_split_accuracy(scores.winners, scores.losers, scores.winner_lengths,
                                                        scores.loser_lengths)
    numbers["criteria"] = {
        name: preference_metrics(a, b, n_bins) for name, (a, b) in scores.criteria.items() if len(a)
    }
    if scores.uncertainty is not None and scores.uncertainty.size:
        numbers["uncertainty"] = {
            "mean_std": float(scores.uncertainty.mean()),
            "max_std": float(scores.uncertainty.max()),
        }
    return numbers


def length_bias_summary(scores: PreferenceScores) -> dict[str, Any]:
    """The length-bias entries of ``summary.json``: ``eval_length_correlation`` (Pearson of score and length over
    the held-out completions) and the accuracies on pairs whose preferred answer is shorter / longer, with their
    pair counts (an accuracy is None when no pair falls in its group)."""
    out: dict[str, Any] = {}
    if scores.lengths.size >= 2:
        pearson = length_reward_correlation(scores.lengths, scores.scores)["pearson"]
        out["eval_length_correlation"] = None if np.isnan(pearson) else pearson
        if scores.length_head is not None:
            head = length_reward_correlation(scores.lengths, scores.length_head)["pearson"]
            out["eval_length_head_correlation"] = None if np.isnan(head) else head
    if scores.winner_lengths.size and scores.winner_lengths.size == scores.winners.size:
        split = length_split_accuracy(scores.winners, scores.losers, scores.winner_lengths, scores.loser_lengths)
        for group in ("chosen_shorter", "chosen_longer"):
            accuracy = split[f"accuracy_{group}"]
            out[f"eval_accuracy_{group}"] = None if np.isnan(accuracy) else accuracy
            out[f"eval_pairs_{group}"] = split[f"pairs_{group}"]
    return out


def _length_scatter(lengths: np.ndarray, rewards: np.ndarray) -> Figure:
    figure = Figure(figsize=(5.5, 4))
    axis = figure.add_subplot(1, 1, 1)
    axis.scatter(lengths, rewards, s=8, alpha=0.5)
    axis.set_xlabel("completion length (tokens)")
    axis.set_ylabel("reward")
    axis.set_title("Reward vs length")
    return figure


def write_rm_report(
    out_dir: str | Path,
    scores: PreferenceScores,
    *,
    metrics_path: str | Path | None = None,
    title: str = "Reward model",
    extra_rows: dict[str, Any] | None = None,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Write ``report.html``, ``reliability.png`` and ``rm_report.json`` into ``out_dir``; return the numbers."""
    out_dir = Path(out_dir)
    numbers = report_numbers(scores, n_bins)
    if extra_rows:
        numbers.update(extra_rows)
    rows: list[list[Any]] = [
        ["held-out ordered pairs", numbers["pairs"]],
        ["pairwise accuracy", numbers["accuracy"]],
        ["mean margin (r_preferred − r_other)", numbers["margin"]],
        ["expected calibration error", numbers["ece"]],
    ]
    correlation = numbers.get("length_reward_correlation")
    if correlation:
        rows += [
            ["length–reward Pearson r", correlation["pearson"]],
            ["length–reward Spearman ρ", correlation["spearman"]],
        ]
    if "length_head_correlation" in numbers:
        rows.append(["length head (dropped at use): length Pearson r", numbers["length_head_correlation"]["pearson"]])
    split = numbers.get("length_split")
    if split:
        rows += [
            [f"accuracy, preferred answer shorter ({split['pairs_chosen_shorter']} pairs)",
             split["accuracy_chosen_shorter"]],
            [f"accuracy, preferred answer longer ({split['pairs_chosen_longer']} pairs)",
             split["accuracy_chosen_longer"]],
        ]
    if "uncertainty" in numbers:
        rows += [["mean ensemble std", numbers["uncertainty"]["mean_std"]]]
    for key, value in (extra_rows or {}).items():
        if isinstance(value, (int, float, str)):
            rows.append([key, value])
    sections: list[Any] = [Section("Held-out evaluation", [Table(["metric", "value"], rows)])]
    if numbers["criteria"]:
        criteria_rows = [[name, m["pairs"], m["accuracy"], m["ece"]] for name, m in numbers["criteria"].items()]
        criteria_table = Table(["criterion", "pairs", "accuracy", "ECE"], criteria_rows)
        sections.append(Section("Per-criterion heads", [criteria_table]))
    if scores.winners.size:
        probs, labels = calibration_inputs(scores.winners, scores.losers)
        reliability = figure_png(plot_reliability(probs, labels, n_bins=n_bins, title="Reward-model calibration"))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "reliability.png").write_bytes(reliability)  # rendered once: the same PNG goes in the report
        sections.append(
            Section(
                "Calibration and separation",
                [
                    "σ(r_a − r_b) read as P(a preferred), every pair in both orders; bars below the diagonal mean "
                    "overconfident.",
                    reliability,
                    plot_reward_histograms(scores.winners, scores.losers),
                ],
            )
        )
    if scores.lengths.size >= 2:
        sections.append(
            Section(
                "Length and reward",
                [
                    "A strong positive correlation means the model mostly rewards length: a reward-hacking risk. "
                    "The accuracy on pairs whose preferred answer is the shorter one (table above) is what it knows "
                    "beyond length.",
                    _length_scatter(scores.lengths, scores.scores),
                ],
            )
        )
    if metrics_path is not None and Path(metrics_path).is_file():
        keys = ["loss", "accuracy", "margin", "eval/loss", "eval/accuracy", "eval/ece"]
        sections.append(Section("Training curves", [plot_training_curves(metrics_path, keys=keys)]))
    write_report(out_dir / "report.html", title, sections)
    write_report_json(out_dir / "rm_report.json", numbers)
    return numbers
