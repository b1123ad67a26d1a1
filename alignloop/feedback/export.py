"""Derive training records (pair / ranking / SFT, as in DESIGN.md) from the stored raw labels.

``aggregate="all"``: every annotator's label gives its own records (``source: human:<user id>``).
``aggregate="majority"``: one consensus per item. Responses are ordered by ranked pairs
(Tideman; Condorcet-consistent) over the annotators' strict preferences, and a pair is kept
only when more than half of the item's labels prefer its winner.
Ties and "both bad" express no preference, so they yield no pair; in ranking records they
become a tie group. Gold items and flagged/skipped items are left out.

Labels of excluded and deactivated annotators stay in the database. By default the export drops excluded
annotators' labels (an admin judged them unreliable) and keeps deactivated annotators' (deactivation ends
access, it is no judgement of the work); ``include_excluded`` and ``include_deactivated`` choose otherwise.
A record kept from such an annotator is marked ``"annotator_status": "excluded" | "deactivated"``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from alignloop.feedback.answers import preferences
from alignloop.feedback.models import Item, Label, Project, User
from alignloop.utils.io import atomic_write_text

FORMATS = ("pair", "ranking", "sft")
AGGREGATES = ("all", "majority")


@dataclass
class ItemLabels:
    item: Item
    labels: list[Label]


def annotator_status(session: Session) -> dict[int, str]:
    """``user id -> "excluded" | "deactivated"`` for every annotator whose labels are marked (excluded wins)."""
    rows = session.execute(select(User.id, User.excluded, User.active)
                           .where(User.excluded.is_(True) | User.active.is_(False))).all()
    return {r.id: "excluded" if r.excluded else "deactivated" for r in rows}


def collect(session: Session, project: Project, include_excluded: bool = False,
            include_deactivated: bool = True) -> list[ItemLabels]:
    query = select(Label).where(Label.project_id == project.id)
    if not include_excluded:
        query = query.where(Label.user_id.not_in(select(User.id).where(User.excluded.is_(True))))
    if not include_deactivated:
        query = query.where(Label.user_id.not_in(select(User.id).where(User.active.is_(False))))
    labels = session.scalars(query.order_by(Label.id)).all()
    by_item: dict[int, list[Label]] = defaultdict(list)
    for label in labels:
        by_item[label.item_id].append(label)
    items = session.scalars(
        select(Item).options(selectinload(Item.responses))
        .where(Item.id.in_(list(by_item)), Item.is_gold.is_(False)).order_by(Item.position)
    ).all()
    return [ItemLabels(item, by_item[item.id]) for item in items]


def pair_votes(task_type: str, labels: list[Label], k: int) -> dict[tuple[int, int], int]:
    """``votes[(a, b)]``: how many labels strictly prefer response a over response b."""
    votes: dict[tuple[int, int], int] = defaultdict(int)
    for label in labels:
        for better, worse, _m, _c in preferences(task_type, label.answer):
            votes[(better, worse)] += 1
    return votes


def item_agreement(task_type: str, labels: list[Label], k: int) -> float | None:
    """Mean over response pairs of the share of labels giving the most common judgement
    (a over b, b over a, or no preference). None with fewer than two labels."""
    n = len(labels)
    if n < 2:
        return None
    votes = pair_votes(task_type, labels, k)
    shares = []
    for a, b in combinations(range(k), 2):
        ab, ba = votes.get((a, b), 0), votes.get((b, a), 0)
        shares.append(max(ab, ba, n - ab - ba) / n)
    return sum(shares) / len(shares)


def ranked_pairs(k: int, votes: dict[tuple[int, int], int]) -> set[tuple[int, int]]:
    """Tideman's ranked pairs: lock majorities from the largest margin down, skipping any that
    would close a cycle. Returns the transitive closure of the locked edges (a before b)."""
    edges = []
    for a, b in combinations(range(k), 2):
        ab, ba = votes.get((a, b), 0), votes.get((b, a), 0)
        if ab != ba:
            win, lose = (a, b) if ab > ba else (b, a)
            edges.append((-abs(ab - ba), -max(ab, ba), win, lose))
    locked: dict[int, set[int]] = defaultdict(set)

    def reaches(src: int, dst: int) -> bool:
        stack, seen = [src], set()
        while stack:
            node = stack.pop()
            if node == dst:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(locked[node])
        return False

    for _neg_margin, _neg_votes, win, lose in sorted(edges):
        if not reaches(lose, win):
            locked[win].add(lose)
    return {(a, b) for a in range(k) for b in range(k) if a != b and reaches(a, b)}


def layers(k: int, before: set[tuple[int, int]]) -> list[list[int]]:
    """Group responses into levels of the consensus order (best first; a level may hold ties)."""
    remaining, out = set(range(k)), []
    while remaining:
        top = sorted(r for r in remaining if not any((o, r) in before for o in remaining))
        out.append(top)
        remaining -= set(top)
    return out


def label_ranking(task_type: str, answer: dict, k: int) -> list[list[int]]:
    if task_type == "ranking":
        return [list(g) for g in answer["ranking"]]
    if task_type == "likert":
        scores = answer["scores"]
        return [[i for i in range(k) if scores[i] == s] for s in sorted(set(scores), reverse=True)]
    prefs = preferences(task_type, answer)
    return [[prefs[0][0]], [prefs[0][1]]] if prefs else [list(range(k))]


def _ranking_field(groups: list[list[int]]) -> list:
    return [g[0] if len(g) == 1 else g for g in groups]


def item_records(task_type: str, il: ItemLabels, fmt: str, aggregate: str) -> list[dict]:
    texts = [r.text for r in il.item.responses]
    k, prompt = len(texts), il.item.prompt
    if fmt == "sft":
        return [{"messages": [{"role": "user", "content": prompt},
                              {"role": "assistant", "content": lab.edited_response}],
                 "source": f"human:{lab.user_id}"} for lab in il.labels if lab.edited_response]
    if aggregate == "all":
        out = []
        for lab in il.labels:
            if fmt == "ranking":
                out.append({"prompt": prompt, "completions": texts,
                            "ranking": _ranking_field(label_ranking(task_type, lab.answer, k)),
                            "source": f"human:{lab.user_id}"})
                continue
            for better, worse, margin, criteria in preferences(task_type, lab.answer):
                rec = {"prompt": prompt, "chosen": texts[better], "rejected": texts[worse]}
                if margin is not None:
                    rec["margin"] = margin
                if criteria is not None:
                    rec["criteria"] = criteria
                rec["source"] = f"human:{lab.user_id}"
                out.append(rec)
        return out
    votes = pair_votes(task_type, il.labels, k)
    before = ranked_pairs(k, votes)
    if fmt == "ranking":
        return [{"prompt": prompt, "completions": texts, "ranking": _ranking_field(layers(k, before)),
                 "source": "human:majority"}]
    n = len(il.labels)
    return [{"prompt": prompt, "chosen": texts[a], "rejected": texts[b], "source": "human:majority"}
            for a, b in sorted(before) if 2 * votes.get((a, b), 0) > n]


def export_records(session: Session, project: Project, format: str = "pair", aggregate: str = "all",
                   min_agreement: float | None = None, include_excluded: bool = False,
                   include_deactivated: bool = True) -> list[dict]:
    if format not in FORMATS:
        raise ValueError(f"format: must be one of {', '.join(FORMATS)}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate: must be one of {', '.join(AGGREGATES)}")
    records: list[dict] = []
    marked = {f"human:{uid}": status for uid, status in annotator_status(session).items()}
    for il in collect(session, project, include_excluded, include_deactivated):
        if min_agreement is not None:
            agreement = item_agreement(project.task_type, il.labels, len(il.item.responses))
            if agreement is None or agreement < min_agreement:
                continue
        for rec in item_records(project.task_type, il, format, aggregate):
            status = marked.get(rec.get("source", ""))
            records.append({**rec, "annotator_status": status} if status else rec)
    return records


def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, to_jsonl(records))
    return path
