"""Schema, SQLite settings, assignment rules and write-once labels, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text

from alignloop.feedback import store
from alignloop.feedback.db import run_tx
from alignloop.feedback.models import Assignment, Base, Label

from .conftest import make_project, make_users


def test_migrations_match_models(factory):
    with factory() as s:
        diff = compare_metadata(MigrationContext.configure(s.connection()), Base.metadata)
    assert diff == []


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path):
    from alignloop.feedback.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    migrate(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


RNG = random.Random(0)


def _label(factory, user, project, choice="A"):
    def go(s):
        a = store.next_assignment(s, user, store.get_project(s, project.id), RNG)
        if a is None:
            return None
        store.submit_label(s, user, a.id, {"choice": choice})
        return a

    return run_tx(factory, go)


def test_never_same_item_twice_and_overlap_respected(factory):
    users = make_users(factory, "u1", "u2", "u3")
    project = make_project(factory, n_items=3, overlap=2)
    seen = {u.username: [] for u in users}
    for _ in range(4):
        for u in users:
            a = _label(factory, u, project)
            if a is not None:
                seen[u.username].append(a.item_id)
    for items in seen.values():
        assert len(items) == len(set(items))
    # 3 items x overlap 2 = 6 labels in all, each item exactly twice
    with factory() as s:
        counts = dict(s.execute(select(Label.item_id, func.count()).group_by(Label.item_id)).all())
    assert sorted(counts.values()) == [2, 2, 2]
    assert sum(len(v) for v in seen.values()) == 6


def test_ab_order_randomised_and_recorded(factory):
    (u,) = make_users(factory, "u1")
    project = make_project(factory, n_items=40)
    orders = []
    for _ in range(40):
        a = _label(factory, u, project, "A")
        orders.append(tuple(a.display_order))
    assert set(orders) == {(0, 1), (1, 0)}
    with factory() as s:
        labels = s.scalars(select(Label)).all()
    # choosing the displayed "A" records the response that was shown first
    assert all(lab.answer["winner"] == lab.answer["display_order"][0] for lab in labels)


def test_gold_items_mixed_in_at_rate(factory):
    (u,) = make_users(factory, "u1")
    project = make_project(factory, n_items=30, gold=30, gold_rate=0.5)
    golds = []
    for _ in range(30):
        a = _label(factory, u, project)
        with factory() as s:
            golds.append(s.get(Assignment, a.id).item.is_gold)
    # 30 draws at rate 0.5: between 5 and 25 gold is all but certain (binomial tail < 1e-4)
    assert 5 <= sum(golds) <= 25


def test_label_written_exactly_once(factory):
    (u,) = make_users(factory, "u1")
    project = make_project(factory, n_items=1)
    a = run_tx(factory, lambda s: store.next_assignment(s, u, store.get_project(s, project.id)))
    results = []

    def submit():
        results.append(run_tx(factory, lambda s: store.submit_label(s, u, a.id, {"choice": "B"})[1]))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Label)) == 1
    with pytest.raises(store.Conflict):
        run_tx(factory, lambda s: store.submit_label(s, u, a.id, {"choice": "A"}))


def test_skip_frees_the_slot_and_flag_records_reason(factory):
    u1, u2 = make_users(factory, "u1", "u2")
    project = make_project(factory, n_items=1, overlap=1)
    a = run_tx(factory, lambda s: store.next_assignment(s, u1, store.get_project(s, project.id)))
    assert run_tx(factory, lambda s: store.next_assignment(s, u2, store.get_project(s, project.id))) is None
    run_tx(factory, lambda s: store.release(s, u1, a.id, "skipped"))
    b = run_tx(factory, lambda s: store.next_assignment(s, u2, store.get_project(s, project.id)))
    assert b is not None and b.item_id == a.item_id
    run_tx(factory, lambda s: store.release(s, u2, b.id, "flagged", "contains a slur"))
    # u1 skipped it, u2 flagged it: neither sees it again
    for u in (u1, u2):
        assert run_tx(factory, lambda s, u=u: store.next_assignment(s, u, store.get_project(s, project.id))) is None
    with factory() as s:
        assert s.get(Assignment, b.id).flag_reason == "contains a slur"


def test_other_users_assignment_is_not_found(factory):
    u1, u2 = make_users(factory, "u1", "u2")
    project = make_project(factory, n_items=2)
    a = run_tx(factory, lambda s: store.next_assignment(s, u1, store.get_project(s, project.id)))
    with pytest.raises(store.NotFound):
        run_tx(factory, lambda s: store.submit_label(s, u2, a.id, {"choice": "A"}))


def test_bound_parameters_keep_sql_in_strings_inert(factory):
    make_users(factory, "u1")
    name = "x'); DROP TABLE labels; --"
    make_project(factory, name=name, n_items=1)
    with factory() as s:
        assert s.execute(text("SELECT count(*) FROM labels")).scalar() == 0
