"""data.splits.load_splits: the train / held-out choice every training stage makes."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from alignloop.config import DataConfig
from alignloop.data.records import split_records
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


def pairs_by_prompt(path: str) -> list[dict]:
    """6 pairs for each of 10 prompts, as `collect` with 4 samples and `pairing: all` writes them."""
    return [{"prompt": [{"role": "user", "content": f"q{q}"}], "chosen": f"a{q}{k}", "rejected": f"b{q}{k}"}
            for q in range(10) for k in range(6)]


def test_split_by_prompt_holds_out_whole_prompts():
    train, evals = load_splits(DataConfig(train="a", eval_fraction=0.2, split_by="prompt"), 0, pairs_by_prompt)
    train_prompts = {r["prompt"][0]["content"] for r in train}
    eval_prompts = {r["prompt"][0]["content"] for r in evals}
    assert len(eval_prompts) == 2 and len(evals) == 12 and len(train) == 48  # 2 of 10 prompts, all their pairs
    assert not train_prompts & eval_prompts
    assert list(evals) == list(load_splits(DataConfig(train="a", eval_fraction=0.2, split_by="prompt"), 0,
                                           pairs_by_prompt)[1])  # deterministic


def test_the_record_split_holds_out_prompts_that_training_has():
    train, evals = split_records(pairs_by_prompt("a"), 0.2, seed=0)
    assert {r["prompt"][0]["content"] for r in evals} & {r["prompt"][0]["content"] for r in train}


def test_with_distinct_prompts_both_splits_hold_out_the_same_records():
    records = [{"prompt": f"q{i}", "chosen": "x", "rejected": "y"} for i in range(30)]
    assert split_records(records, 0.3, seed=5) == split_records(records, 0.3, seed=5, by="prompt")
    no_prompt = [{"messages": [], "i": i} for i in range(30)]  # records without a prompt: one prompt each
    assert split_records(no_prompt, 0.3, seed=5) == split_records(no_prompt, 0.3, seed=5, by="prompt")


def test_the_default_split_warns_when_held_out_prompts_are_in_training(caplog):
    with caplog.at_level(logging.WARNING, logger="alignloop"):
        load_splits(DataConfig(train="a", eval_fraction=0.2), 0, pairs_by_prompt)
    assert any("12 of 12 held-out records share their prompt" in m and "split_by: prompt" in m
               for m in caplog.messages), caplog.messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="alignloop"):
        load_splits(DataConfig(train="a", eval_fraction=0.2, split_by="prompt"), 0, pairs_by_prompt)
        load_splits(DataConfig(train="a", eval_fraction=0.2, split_by="record"), 0, pairs_by_prompt)  # chosen
        load_splits(DataConfig(train="a", eval_fraction=0.2), 0, fake_load)  # no prompts shared
    assert not caplog.messages


def test_a_bad_split_by_is_a_config_error():
    with pytest.raises(ValidationError, match="split_by"):
        DataConfig(train="a", eval_fraction=0.2, split_by="answer")
    with pytest.raises(DataError, match="split_by"):
        split_records([{"prompt": "q"}] * 4, 0.5, seed=0, by="answer")


def test_the_same_question_about_different_images_is_a_different_prompt():
    records = [{"prompt": "How many shapes?", "images": [f"img{i}.png"], "chosen": "2", "rejected": "3"}
               for i in range(20)]
    assert split_records(records, 0.25, seed=1, by="prompt") == split_records(records, 0.25, seed=1)
