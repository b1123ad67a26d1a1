"""Annotator quality: Cohen's κ against each other annotator, Krippendorff's α per project,
accuracy on gold items, time per item and position-bias rate."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from alignloop.feedback.answers import best_response, chose_first_position, units
from alignloop.feedback.models import Item, Label, Project, User


def cohen_kappa(pairs: list[tuple[Hashable, Hashable]]) -> float | None:
    """κ = (p_o - p_e) / (1 - p_e) for two raters' nominal judgements of the same units."""
    n = len(pairs)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in pairs) / n
    ca, cb = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    p_e = sum(ca[c] * cb[c] for c in ca) / (n * n)
    if p_e >= 1.0:
        return None  # both raters used one category throughout: κ is undefined
    return (p_o - p_e) / (1 - p_e)


def krippendorff_alpha(unit_values: Iterable[list], metric: str = "nominal") -> float | None:
    """α = 1 - D_o / D_e over units with at least two values (missing values simply absent)."""
    def delta2(a, b) -> float:
        if metric == "interval":
            return float(a - b) ** 2
        return 0.0 if a == b else 1.0

    pairable = [vals for vals in unit_values if len(vals) >= 2]
    n = sum(len(v) for v in pairable)
    if n < 2:
        return None
    observed = 0.0
    for vals in pairable:
        m = len(vals)
        observed += sum(delta2(vals[i], vals[j]) for i in range(m) for j in range(m) if i != j) / (m - 1)
    counts = Counter(v for vals in pairable for v in vals)
    expected = sum(nc * nk * delta2(c, k) for c, nc in counts.items() for k, nk in counts.items())
    if expected == 0:
        return None
    d_o, d_e = observed / n, expected / (n * (n - 1))
    return 1.0 - d_o / d_e


def project_quality(session: Session, project: Project) -> dict:
    rows = session.execute(
        select(Label, Item.is_gold, Item.gold_best).join(Item, Item.id == Label.item_id)
        .where(Label.project_id == project.id)
    ).all()
    users = {u.id: u for u in session.scalars(select(User).where(User.id.in_({r[0].user_id for r in rows})))}
    task = project.task_type
    unit_vals: dict[int, dict[tuple, Hashable]] = defaultdict(dict)  # user -> (item, unit) -> value
    gold: dict[int, list[bool]] = defaultdict(list)
    times: dict[int, list[int]] = defaultdict(list)
    first_pos: dict[int, list[bool]] = defaultdict(list)
    for label, is_gold, gold_best in rows:
        uid = label.user_id
        times[uid].append(label.duration_ms)
        chose_a = chose_first_position(task, label.answer)
        if chose_a is not None:
            first_pos[uid].append(chose_a)
        if is_gold:
            gold[uid].append(best_response(task, label.answer) == gold_best)
            continue
        for key, value in units(task, label.answer).items():
            unit_vals[uid][(label.item_id, key)] = value

    included = [u for u in unit_vals if not users[u].excluded]
    annotators = []
    for uid in sorted(users):
        kappas, weights = [], []
        for other in included:
            if other == uid:
                continue
            common = unit_vals[uid].keys() & unit_vals[other].keys()
            kappa = cohen_kappa([(unit_vals[uid][c], unit_vals[other][c]) for c in common])
            if kappa is not None:
                kappas.append(kappa)
                weights.append(len(common))
        annotators.append({
            "user_id": uid, "username": users[uid].username, "excluded": users[uid].excluded,
            "labels": len(times[uid]),
            "kappa": (sum(k * w for k, w in zip(kappas, weights)) / sum(weights)) if weights else None,
            "kappa_partners": len(kappas),
            "gold_accuracy": (sum(gold[uid]) / len(gold[uid])) if gold[uid] else None,
            "gold_labels": len(gold[uid]),
            "median_seconds": statistics.median(times[uid]) / 1000 if times[uid] else None,
            "position_a_rate": (sum(first_pos[uid]) / len(first_pos[uid])) if first_pos[uid] else None,
        })
    pooled: dict[tuple, list] = defaultdict(list)
    for uid in included:
        for key, value in unit_vals[uid].items():
            pooled[key].append(value)
    all_first = [x for uid in users if not users[uid].excluded for x in first_pos[uid]]
    return {
        "annotators": annotators,
        "alpha": krippendorff_alpha(pooled.values(), "interval" if task == "likert" else "nominal"),
        "alpha_metric": "interval" if task == "likert" else "nominal",
        "position_a_rate": (sum(all_first) / len(all_first)) if all_first else None,
        "strict_ab_choices": len(all_first),
    }
