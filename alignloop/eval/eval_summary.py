"""From per-sample records to the numbers in ``report.json``: pure functions, no models.

A sample record (one line of ``samples.jsonl``) holds ``policy``, ``prompt``, ``completion``,
``gold``, ``proxy`` (null without a reward model) and, for sampled policies, ``logp`` / ``ref_logp``
(the completion's summed log-probability under the policy and the reference), ``length`` (tokens),
``eos`` (the completion ended by itself) and ``prompt_index`` / ``sample_index``, which pair a
policy's sample with the reference's sample for the same prompt.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from alignloop.eval.metrics import (
    bootstrap_ci,
    distinct_n,
    paired_tests,
    self_bleu,
    sequence_kl_mc,
    win_rate,
)


def prompt_text(prompt: Any) -> str:
    """The text a gold scorer sees for a prompt: the string itself, or the last user message."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else str(prompt[-1].get("content", "")) if prompt else ""
    return str(prompt)


def simplify_prompt(prompt: Any) -> Any:
    """A single user message becomes its text (the record loader turns every prompt into messages)."""
    if (isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], dict)
            and prompt[0].get("role") == "user"):
        return prompt[0].get("content", "")
    return prompt


def best_of_n_kl(n: int) -> float:
    """The analytic KL of best-of-N to its base policy: log N − (N − 1)/N nats.

    Exact for continuous, untied rewards and an upper bound otherwise (Beirami et al. 2024).
    For N = 4: log 4 − 3/4 = 1.3863 − 0.75 = 0.6363; for N = 16: 2.7726 − 0.9375 = 1.8351.
    """
    if n < 1:
        raise ValueError(f"best-of-N needs N >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def _paired(records: Sequence[dict], reference: Sequence[dict]) -> tuple[list[float], list[float]]:
    """Gold scores of ``records`` and of the reference sample for the same (prompt, sample) slot."""
    ref_by_slot = {(r["prompt_index"], r["sample_index"]): r["gold"] for r in reference}
    ours, theirs = [], []
    for r in records:
        slot = (r["prompt_index"], r["sample_index"])
        if slot in ref_by_slot:
            ours.append(float(r["gold"]))
            theirs.append(float(ref_by_slot[slot]))
    return ours, theirs


def summarize_policy(
    records: Sequence[dict],
    reference: Sequence[dict],
    kl: dict[str, Any],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The report.json entry of one policy.

    ``kl`` says how KL to the reference is known: ``{"method": "zero"}`` for the reference itself,
    ``{"method": "analytic_best_of_n", "n": N}`` or ``{"method": "monte_carlo"}`` (from each
    record's ``logp`` − ``ref_logp``, samples drawn from the policy at temperature 1).
    """
    if not records:
        raise ValueError("summarize_policy needs at least one sample")
    gold = np.array([float(r["gold"]) for r in records])
    proxies = [r.get("proxy") for r in records]
    has_proxy = all(p is not None for p in proxies)
    texts = [str(r["completion"]) for r in records]
    entry: dict[str, Any] = {
        "gold_reward_mean": float(gold.mean()),
        "gold_reward_ci95": list(bootstrap_ci(gold, n_boot=n_boot, seed=seed)),
        "proxy_reward_mean": float(np.mean(proxies)) if has_proxy else None,
        "proxy_reward_ci95": list(bootstrap_ci(proxies, n_boot=n_boot, seed=seed)) if has_proxy else None,
    }
    method = kl["method"]
    if method == "zero":
        entry["kl_to_ref"], entry["kl_stderr"] = 0.0, None
    elif method == "analytic_best_of_n":
        entry["kl_to_ref"], entry["kl_stderr"] = best_of_n_kl(int(kl["n"])), None
    elif method == "monte_carlo":
        mean, stderr = sequence_kl_mc([r["logp"] for r in records], [r["ref_logp"] for r in records])
        entry["kl_to_ref"], entry["kl_stderr"] = mean, (stderr if math.isfinite(stderr) else None)
    else:
        raise ValueError(f"unknown KL method {method!r}")
    entry["kl_method"] = method
    ours, theirs = _paired(records, reference)
    entry["win_rate_vs_ref"] = win_rate(ours, theirs) if ours else None
    paired = paired_tests(ours, theirs) if ours and method != "zero" else None
    entry["paired_vs_ref"] = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                              for k, v in paired.items()} if paired else None
    lengths = [r.get("length") for r in records]
    entry["mean_length"] = (
        float(np.mean(lengths)) if all(v is not None for v in lengths)
        else float(np.mean([len(t.split()) for t in texts]))
    )
    entry["distinct_1"] = distinct_n(texts, 1)
    entry["distinct_2"] = distinct_n(texts, 2)
    entry["self_bleu"] = self_bleu(texts) if len(texts) >= 2 else None
    entry["no_eos_fraction"] = float(np.mean([not bool(r.get("eos", True)) for r in records]))
    entry["n_samples"] = len(records)
    return entry


def best_of_n_pick(groups: Sequence[Sequence[dict]], n: int) -> list[dict]:
    """From each group of candidates (same prompt, drawn from the reference), the proxy-best of the first ``n``.

    Ties keep the earliest candidate, so the pick is deterministic.
    """
    picks = []
    for group in groups:
        if len(group) < n:
            raise ValueError(f"best-of-{n} needs {n} candidates per prompt, got {len(group)}")
        candidates = list(group[:n])
        if any(c.get("proxy") is None for c in candidates):
            raise ValueError("best-of-N needs a proxy reward on every candidate")
        best = max(range(n), key=lambda i: (candidates[i]["proxy"], -i))
        picks.append(dict(candidates[best]))
    return picks


def overoptimisation_curve(points: Sequence[dict], sort: bool = True) -> dict[str, list]:
    """Points ``{"label", "kl", "proxy", "gold"}`` as columns for the plot and report.json, sorted by KL
    (or kept in the given order, e.g. training steps, whose Monte-Carlo KL is noisy near zero)."""
    ordered = sorted(points, key=lambda p: p["kl"]) if sort else list(points)
    return {
        "label": [p["label"] for p in ordered],
        "kl": [float(p["kl"]) for p in ordered],
        "sqrt_kl": [math.sqrt(max(float(p["kl"]), 0.0)) for p in ordered],
        "proxy": [p["proxy"] for p in ordered],
        "gold": [p["gold"] for p in ordered],
    }
