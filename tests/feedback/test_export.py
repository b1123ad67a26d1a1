"""Pairs, rankings and SFT records derived from raw labels; consensus by ranked pairs; loads with alignloop.data."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from alignloop.data import load_records
from alignloop.feedback import store
from alignloop.feedback.answers import LETTERS, AnswerError, canonical_answer
from alignloop.feedback.db import run_tx
from alignloop.feedback.export import (
    export_records,
    item_agreement,
    layers,
    ranked_pairs,
    write_jsonl,
)
from alignloop.feedback.models import Label, User

from .conftest import make_project, make_users


def answer_for(task, display_order, want):
    """Build the on-screen answer that means ``want`` (expressed in response indices)."""
    pos = {idx: p for p, idx in enumerate(display_order)}
    if task == "pairwise":
        return {"choice": want if want in ("tie", "both_bad") else LETTERS[pos[want]]}
    if task == "ranking":
        return {"ranking": [[pos[i] for i in g] for g in want]}
    if task == "likert":
        return {"scores": [want[idx] for idx in display_order]}
    return {"criteria": {c: (v if v == "tie" else LETTERS[pos[v]]) for c, v in want.items()}}


def label(factory, user, project, want, edited=None):
    def go(s):
        p = store.get_project(s, project.id)
        a = store.next_assignment(s, user, p)
        store.submit_label(s, user, a.id, answer_for(p.task_type, a.display_order, want), edited_response=edited)

    run_tx(factory, go)


def export(factory, project, **kw):
    return run_tx(factory, lambda s: export_records(s, store.get_project(s, project.id), **kw))


def test_canonical_answer_maps_positions_to_responses():
    # shown as [B=resp 0, A=resp 1]: choosing A means response 1 won
    assert canonical_answer("pairwise", {"choice": "A"}, [1, 0], [])["winner"] == 1
    ranked = canonical_answer("ranking", {"ranking": [2, [0, 1]]}, [2, 0, 1], [])
    assert ranked["ranking"] == [[1], [0, 2]]
    with pytest.raises(AnswerError, match="ranking: must hold each position 0..2 exactly once"):
        canonical_answer("ranking", {"ranking": [0, 0, 1]}, [0, 1, 2], [])
    with pytest.raises(AnswerError, match=r"scores\[1\]: must be an integer from 1 to 7"):
        canonical_answer("likert", {"scores": [1, 9]}, [0, 1], [])


def test_pairwise_all_and_majority(sqlite_factory):
    f = sqlite_factory
    u1, u2, u3 = make_users(f, "u1", "u2", "u3")
    project = make_project(f, n_items=1, overlap=3)
    for u, want in ((u1, 0), (u2, 0), (u3, 1)):
        label(f, u, project, want)
    everyone = export(f, project)
    assert [(r["chosen"], r["source"]) for r in everyone] == [
        ("response 0 to prompt 0", f"human:{u1.id}"), ("response 0 to prompt 0", f"human:{u2.id}"),
        ("response 1 to prompt 0", f"human:{u3.id}")]
    majority = export(f, project, aggregate="majority")
    assert majority == [{"prompt": "prompt 0", "chosen": "response 0 to prompt 0",
                         "rejected": "response 1 to prompt 0", "source": "human:majority"}]
    # agreement: 2 of 3 labels give the most common judgement -> 0.667
    assert len(export(f, project, aggregate="majority", min_agreement=0.6)) == 1
    assert export(f, project, aggregate="majority", min_agreement=0.7) == []


def test_ties_and_both_bad_give_no_pair_and_block_a_majority(sqlite_factory):
    f = sqlite_factory
    users = make_users(f, "u1", "u2", "u3")
    project = make_project(f, n_items=1, overlap=3)
    for u, want in zip(users, (0, "tie", "both_bad")):
        label(f, u, project, want)
    assert len(export(f, project)) == 1  # only u1's strict choice
    assert export(f, project, aggregate="majority") == []  # 1 of 3 is no majority


def test_ranking_pairs_records_and_consensus(sqlite_factory):
    f = sqlite_factory
    u1, u2 = make_users(f, "u1", "u2")
    project = make_project(f, task_type="ranking", n_items=1, k=3, overlap=2)
    label(f, u1, project, [[0], [1, 2]])
    label(f, u2, project, [[0], [2], [1]])
    pairs = export(f, project)
    # u1: 0>1, 0>2 (1 and 2 tied -> no pair); u2: 0>2, 0>1, 2>1 -> 5 pairs
    assert len(pairs) == 5
    ranks = export(f, project, format="ranking")
    assert [r["ranking"] for r in ranks] == [[0, [1, 2]], [0, 2, 1]]
    consensus = export(f, project, format="ranking", aggregate="majority")
    # votes: 0>1 x2, 0>2 x2, 2>1 x1 -> locked 0>1, 0>2, 2>1 -> 0, 2, 1
    assert consensus[0]["ranking"] == [0, 2, 1]
    # majority pairs need > half of 2 labels: 0>1 and 0>2 (2 votes each); 2>1 has only 1
    assert {(r["chosen"][9], r["rejected"][9]) for r in export(f, project, aggregate="majority")} == {("0", "1"), ("0", "2")}


def test_ranked_pairs_breaks_a_condorcet_cycle_at_its_weakest_link():
    # margins: 0>1 by 3, 1>2 by 2, 2>0 by 1 -> lock 0>1, 1>2; 2>0 would close a cycle
    votes = {(0, 1): 3, (1, 2): 2, (2, 0): 1}
    before = ranked_pairs(3, votes)
    assert before == {(0, 1), (1, 2), (0, 2)}
    assert layers(3, before) == [[0], [1], [2]]


def test_likert_pairs_carry_score_margins(sqlite_factory):
    f = sqlite_factory
    (u,) = make_users(f, "u1")
    project = make_project(f, task_type="likert", n_items=1, k=3)
    label(f, u, project, [5, 2, 5])
    got = sorted((r["chosen"][9], r["rejected"][9], r["margin"]) for r in export(f, project))
    assert got == [("0", "1", 3.0), ("2", "1", 3.0)]


def test_criteria_pair_with_per_criterion_signs(sqlite_factory):
    f = sqlite_factory
    (u,) = make_users(f, "u1")
    project = make_project(f, task_type="criteria", n_items=1)
    label(f, u, project, {"helpful": 1, "harmless": "tie", "honest": 1})
    (rec,) = export(f, project)
    assert rec["chosen"] == "response 1 to prompt 0"
    assert rec["criteria"] == {"helpful": 1, "harmless": 0, "honest": 1}


def test_sft_records_from_edited_responses_and_excluded_annotators(sqlite_factory):
    f = sqlite_factory
    u1, u2 = make_users(f, "u1", "u2")
    project = make_project(f, n_items=1, overlap=2, allow_edit=True)
    label(f, u1, project, 0, edited="A better answer.")
    label(f, u2, project, 1)
    assert export(f, project, format="sft") == [{"messages": [
        {"role": "user", "content": "prompt 0"}, {"role": "assistant", "content": "A better answer."}],
        "source": f"human:{u1.id}"}]

    def exclude(s):
        s.get(User, u2.id).excluded = True

    run_tx(f, exclude)
    assert [r["source"] for r in export(f, project)] == [f"human:{u1.id}"]


def test_raw_labels_are_kept_not_aggregates(sqlite_factory):
    f = sqlite_factory
    u1, u2 = make_users(f, "u1", "u2")
    project = make_project(f, task_type="ranking", n_items=1, k=3, overlap=2)
    label(f, u1, project, [[1], [0, 2]])
    label(f, u2, project, [[2], [1], [0]])
    with f() as s:
        stored = [lab.answer["ranking"] for lab in s.scalars(select(Label).order_by(Label.id))]
    assert stored == [[[1], [0, 2]], [[2], [1], [0]]]


def test_item_agreement_by_hand(sqlite_factory):
    f = sqlite_factory
    users = make_users(f, "u1", "u2", "u3", "u4")
    project = make_project(f, n_items=1, overlap=4)
    for u, want in zip(users, (0, 0, 1, "tie")):
        label(f, u, project, want)
    with f() as s:
        labels = list(s.scalars(select(Label)))
    # judgements 0>1, 0>1, 1>0, none: most common share 2/4
    assert item_agreement("pairwise", labels, 2) == pytest.approx(0.5)


def test_exported_files_load_as_pairs_and_rankings(sqlite_factory, tmp_path):
    f = sqlite_factory
    u1, u2 = make_users(f, "u1", "u2")
    project = make_project(f, task_type="ranking", n_items=2, k=3, overlap=2)
    for u in (u1, u2):
        for _ in range(2):
            label(f, u, project, [[0], [1], [2]])
    pairs = write_jsonl(export(f, project), tmp_path / "prefs.jsonl")
    assert len(load_records(pairs, "pair")) == 12  # 2 items x 2 annotators x 3 pairs
    ranks = write_jsonl(export(f, project, format="ranking"), tmp_path / "ranks.jsonl")
    assert len(load_records(ranks, "ranking")) == 4
    assert json.loads(pairs.read_text().splitlines()[0])["source"].startswith("human:")
