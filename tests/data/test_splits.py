"""data.splits.load_splits: the train / held-out choice every training stage makes."""

from __future__ import annotations

import pytest

from alignloop.config import DataConfig
from alignloop.data.splits import load_splits
from alignloop.errors import DataError


def fake_load(path: str) -> list[dict]:
    return [{"path": path, "i": i} for i in range(10)]


def test_eval_file_wins_over_the_fraction():
    train, evals = load_splits(DataConfig(train="a", eval="b", eval_fraction=0.5), 0, fake_load)
    assert [r["path"] for r in train] == ["a"] * 10 and [r["path"] for r in evals] == ["b"] * 10


def test_fraction_holds_out_the_same_records_for_the_same_seed():
    data = DataConfig(train="a", eval_fraction=0.2)
    train, evals = load_splits(data, 3, fake_load)
    again_train, again_evals = load_splits(data, 3, fake_load)
    assert len(train) == 8 and len(evals) == 2
    assert sorted(r["i"] for r in train + evals) == list(range(10))  # nothing lost or duplicated
    assert [r["i"] for r in evals] == [r["i"] for r in again_evals] and list(train) == list(again_train)


def test_no_eval_and_no_fraction_means_no_eval_records():
    train, evals = load_splits(DataConfig(train="a"), 0, fake_load)
    assert len(train) == 10 and list(evals) == []


def test_too_few_records_are_not_split():
    one = lambda path: [{"i": 0}]  # noqa: E731
    train, evals = load_splits(DataConfig(train="a", eval_fraction=0.5), 0, one, min_records_to_split=2)
    assert len(train) == 1 and list(evals) == []


def test_missing_train_names_the_key():
    with pytest.raises(DataError, match=r"^data.train: no pairs given$"):
        load_splits(DataConfig(), 0, fake_load, missing="no pairs given")
