"""Validate what an annotator submitted (in displayed positions) and map it to response indices.

The stored answer keeps both: what was on screen (positions, display order) and the canonical
form (response indices), so position bias can be measured and pairs derived at export time."""

from __future__ import annotations

from itertools import combinations
from typing import Any

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PAIR_CHOICES = ("A", "B", "tie", "both_bad")
CRITERION_CHOICES = ("A", "B", "tie")
LIKERT_MIN, LIKERT_MAX = 1, 7


class AnswerError(ValueError):
    """The submitted answer does not fit the task; the message says which field is wrong."""


def canonical_answer(task_type: str, raw: dict[str, Any], display_order: list[int], criteria: list[str]) -> dict:
    if not isinstance(raw, dict):
        raise AnswerError("answer: must be an object")
    k = len(display_order)
    if task_type == "pairwise":
        choice = raw.get("choice")
        if choice not in PAIR_CHOICES:
            raise AnswerError(f"choice: must be one of {', '.join(PAIR_CHOICES)}")
        winner = display_order[LETTERS.index(choice)] if choice in ("A", "B") else None
        outcome = "win" if winner is not None else choice
        return {"choice": choice, "display_order": display_order, "winner": winner, "outcome": outcome}
    if task_type == "criteria":
        given = raw.get("criteria")
        if not isinstance(given, dict):
            raise AnswerError("criteria: must map each criterion to A, B or tie")
        out: dict[str, int | str] = {}
        for name in criteria:
            c = given.get(name)
            if c not in CRITERION_CHOICES:
                raise AnswerError(f"criteria.{name}: must be one of {', '.join(CRITERION_CHOICES)}")
            out[name] = display_order[LETTERS.index(c)] if c in ("A", "B") else "tie"
        return {"criteria_display": {n: given[n] for n in criteria}, "display_order": display_order, "criteria": out}
    if task_type == "ranking":
        groups = _ranking_groups(raw.get("ranking"), k)
        return {
            "ranking_display": groups,
            "display_order": display_order,
            "ranking": [sorted(display_order[p] for p in g) for g in groups],
        }
    if task_type == "likert":
        scores = raw.get("scores")
        if not isinstance(scores, list) or len(scores) != k:
            raise AnswerError(f"scores: need {k} scores, one per response")
        for i, s in enumerate(scores):
            if not isinstance(s, int) or isinstance(s, bool) or not LIKERT_MIN <= s <= LIKERT_MAX:
                raise AnswerError(f"scores[{i}]: must be an integer from {LIKERT_MIN} to {LIKERT_MAX}")
        by_idx = [0] * k
        for pos, s in enumerate(scores):
            by_idx[display_order[pos]] = s
        return {"scores_display": scores, "display_order": display_order, "scores": by_idx}
    raise AnswerError(f"task type {task_type!r} is unknown")


def _ranking_groups(ranking: Any, k: int) -> list[list[int]]:
    """Accept ``[0, [1, 2], 3]`` (ties nested) and return ``[[0], [1, 2], [3]]``; positions once each."""
    if not isinstance(ranking, list) or not ranking:
        raise AnswerError("ranking: must be a list of positions, best first (ties as nested lists)")
    groups = [g if isinstance(g, list) else [g] for g in ranking]
    flat = [p for g in groups for p in g]
    if any(not isinstance(p, int) or isinstance(p, bool) for p in flat) or sorted(flat) != list(range(k)):
        raise AnswerError(f"ranking: must hold each position 0..{k - 1} exactly once")
    if any(not g for g in groups):
        raise AnswerError("ranking: empty tie group")
    return groups


def preferences(task_type: str, answer: dict) -> list[tuple[int, int, float | None, dict | None]]:
    """Strict preferences in one label as ``(better_idx, worse_idx, margin, criteria)``.
    Ties and "both bad" carry no preference, so they give no pair."""
    if task_type == "pairwise":
        w = answer["winner"]
        return [] if w is None else [(w, 1 - w, None, None)]
    if task_type == "criteria":
        crit = answer["criteria"]
        wins0 = sum(1 for v in crit.values() if v == 0)
        wins1 = sum(1 for v in crit.values() if v == 1)
        if wins0 == wins1:
            return []
        w = 0 if wins0 > wins1 else 1
        signs = {n: (0 if v == "tie" else (1 if v == w else -1)) for n, v in crit.items()}
        return [(w, 1 - w, None, signs)]
    if task_type == "ranking":
        groups = answer["ranking"]
        return [(a, b, None, None) for gi, gj in combinations(range(len(groups)), 2)
                for a in groups[gi] for b in groups[gj]]
    if task_type == "likert":
        s = answer["scores"]
        out = []
        for i, j in combinations(range(len(s)), 2):
            if s[i] != s[j]:
                hi, lo = (i, j) if s[i] > s[j] else (j, i)
                out.append((hi, lo, float(s[hi] - s[lo]), None))
        return out
    raise AnswerError(f"task type {task_type!r} is unknown")


def units(task_type: str, answer: dict) -> dict[str, Any]:
    """The label as categorical judgements, keyed so two annotators' keys line up (for κ and α).
    Ranking gives one unit per response pair ('<', '=', '>'); Likert one numeric unit per response."""
    if task_type == "pairwise":
        return {"overall": str(answer["winner"]) if answer["winner"] is not None else answer["outcome"]}
    if task_type == "criteria":
        return {name: str(v) for name, v in answer["criteria"].items()}
    if task_type == "ranking":
        rank_of = {idx: gi for gi, g in enumerate(answer["ranking"]) for idx in g}
        out = {}
        for i, j in combinations(sorted(rank_of), 2):
            out[f"{i}-{j}"] = ">" if rank_of[i] < rank_of[j] else ("=" if rank_of[i] == rank_of[j] else "<")
        return out
    if task_type == "likert":
        return {str(i): s for i, s in enumerate(answer["scores"])}
    raise AnswerError(f"task type {task_type!r} is unknown")


def best_response(task_type: str, answer: dict) -> int | None:
    """The single response this label puts first, or None when it names no unique best."""
    if task_type in ("pairwise", "criteria"):
        prefs = preferences(task_type, answer)
        return prefs[0][0] if prefs else None
    if task_type == "ranking":
        top = answer["ranking"][0]
        return top[0] if len(top) == 1 else None
    if task_type == "likert":
        s = answer["scores"]
        m = max(s)
        return s.index(m) if s.count(m) == 1 else None
    return None


def chose_first_position(task_type: str, answer: dict) -> bool | None:
    """For position bias: did a strict A/B choice pick the response shown first?"""
    if task_type != "pairwise" or answer["choice"] not in ("A", "B"):
        return None
    return answer["choice"] == "A"
