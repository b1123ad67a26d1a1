"""Bradley–Terry ratings of the models behind the responses, computed as Chatbot Arena does:
maximum likelihood with P(a beats b) = 1 / (1 + 10^-(θa - θb)), ties as half a win,
rating = 400·θ + 1000, bootstrap 95% intervals, and rank = 1 + the number of models whose
interval lies wholly above this model's (so models with overlapping intervals share a rank)."""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from alignloop.feedback.export import label_ranking
from alignloop.feedback.models import Item, Label, Project, User

SCALE, INIT = 400.0, 1000.0
# A whisper of L2 keeps θ finite when a model wins every battle (pure MLE would diverge);
# its pull on real data is far below the bootstrap spread.
RIDGE = 1e-4
LN10 = math.log(10.0)

Battle = tuple[str, str, float]  # (model_a, model_b, score of a: 1 win, 0.5 tie, 0 loss)


def _arrays(models: list[str], battles: list[Battle]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    index = {m: i for i, m in enumerate(models)}
    ia = np.array([index[a] for a, _b, _s in battles], dtype=np.int64)
    ib = np.array([index[b] for _a, b, _s in battles], dtype=np.int64)
    return ia, ib, np.array([s for _a, _b, s in battles], dtype=np.float64)


def _fit(n: int, ia: np.ndarray, ib: np.ndarray, s: np.ndarray, iters: int = 100) -> np.ndarray:
    """θ (base 10, mean 0) by Newton's method on the Bradley–Terry log-likelihood."""
    score = np.zeros((n, n))  # score[a, b]: points a took from b (a tie gives each half)
    games = np.zeros((n, n))
    np.add.at(score, (ia, ib), s)
    np.add.at(score, (ib, ia), 1.0 - s)
    np.add.at(games, (ia, ib), 1.0)
    np.add.at(games, (ib, ia), 1.0)
    theta = np.zeros(n)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.power(10.0, -(theta[:, None] - theta[None, :])))
        grad = LN10 * (score - games * p).sum(axis=1) - RIDGE * theta
        w = games * p * (1 - p) * LN10**2
        hess = -(np.diag(w.sum(axis=1)) - w) - RIDGE * np.eye(n)
        step = np.linalg.solve(hess, grad)
        theta = theta - step
        if np.abs(step).max() < 1e-10:
            break
    return theta - theta.mean()


def fit_bradley_terry(models: list[str], battles: list[Battle]) -> dict[str, float]:
    """Ratings on the Elo scale, centred on 1000."""
    theta = _fit(len(models), *_arrays(models, battles))
    return {m: float(SCALE * theta[i] + INIT) for i, m in enumerate(models)}


def bootstrap(
    models: list[str], battles: list[Battle], rounds: int = 200, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95% intervals from refitting on battles resampled with replacement."""
    rng = np.random.default_rng(seed)
    ia, ib, s = _arrays(models, battles)
    samples = np.empty((rounds, len(models)))
    for r in range(rounds):
        pick = rng.integers(0, len(battles), size=len(battles))
        samples[r] = SCALE * _fit(len(models), ia[pick], ib[pick], s[pick]) + INIT
    low, high = np.percentile(samples, 2.5, axis=0), np.percentile(samples, 97.5, axis=0)
    return {m: (float(low[i]), float(high[i])) for i, m in enumerate(models)}


def merged_ranks(intervals: dict[str, tuple[float, float]]) -> dict[str, int]:
    return {m: 1 + sum(1 for o, (lo, _hi) in intervals.items() if o != m and lo > up)
            for m, (_lo, up) in intervals.items()}


def project_battles(session: Session, project: Project) -> tuple[list[Battle], Counter]:
    excluded = select(User.id).where(User.excluded.is_(True))
    labels = session.scalars(select(Label).where(Label.project_id == project.id, Label.user_id.not_in(excluded))).all()
    items = {i.id: i for i in session.scalars(
        select(Item).options(selectinload(Item.responses)).where(Item.id.in_({lab.item_id for lab in labels})))}
    battles: list[Battle] = []
    for label in labels:
        responses = items[label.item_id].responses
        rank_of = {idx: level for level, group in enumerate(
            label_ranking(project.task_type, label.answer, len(responses))) for idx in group}
        for i, j in combinations(range(len(responses)), 2):
            ma, mb = responses[i].model, responses[j].model
            if not ma or not mb or ma == mb:
                continue
            s = 1.0 if rank_of[i] < rank_of[j] else (0.5 if rank_of[i] == rank_of[j] else 0.0)
            battles.append((ma, mb, s))
    self_named: Counter = Counter()
    for item in session.scalars(
        select(Item).options(selectinload(Item.responses)).where(Item.project_id == project.id)
    ):
        for r in item.responses:
            if r.names_own_model and r.model:
                self_named[r.model] += 1
    return battles, self_named


def leaderboard(session: Session, project: Project, rounds: int = 200) -> list[dict]:
    battles, self_named = project_battles(session, project)
    models = sorted({m for a, b, _ in battles for m in (a, b)})
    if len(models) < 2:
        return []
    ratings = fit_bradley_terry(models, battles)
    intervals = bootstrap(models, battles, rounds)
    ranks = merged_ranks(intervals)
    counts = Counter(m for a, b, _ in battles for m in (a, b))
    rows = [{"model": m, "rating": ratings[m], "ci_low": intervals[m][0], "ci_high": intervals[m][1],
             "rank": ranks[m], "battles": counts[m], "self_named_responses": self_named[m]} for m in models]
    return sorted(rows, key=lambda r: (r["rank"], -r["rating"]))
