"""KTO's data: the unpaired record kind, pairs split in two, and the mismatched completions of the KL estimate."""

from __future__ import annotations

import json

import pytest

from alignloop.data import load_records, validate_record
from alignloop.errors import DataError
from alignloop.stages.kto.data import load_kto_records, mismatched, unpair


def test_unpaired_records_are_normalised_to_messages():
    record, problems = validate_record({"prompt": "Hi", "completion": "Hello!", "label": False, "source": "human:1"},
                                       "unpaired")
    assert problems == []
    assert record == {"prompt": [{"role": "user", "content": "Hi"}],
                      "completion": [{"role": "assistant", "content": "Hello!"}], "label": False, "source": "human:1"}


@pytest.mark.parametrize("record, problems", [
    ({"prompt": "Hi", "completion": "Hello", "label": 0}, ["label: must be true or false (got 0)"]),
    ({"prompt": "Hi", "completion": [{"role": "user", "content": "x"}], "label": True},
     ["completion[0].role: must be 'assistant' in a completion (got 'user')"]),
    ({"completion": "Hello", "label": True, "images": ["a.png"]},
     ["prompt: missing", "images: unpaired records take text only"]),
])
def test_bad_unpaired_records(record, problems):
    assert validate_record(record, "unpaired") == (None, problems)


def test_format_is_detected_from_the_first_record(tmp_path):
    unpaired = tmp_path / "u.jsonl"
    unpaired.write_text(json.dumps({"prompt": "Hi", "completion": "Hello", "label": True}) + "\n")
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}) + "\n")
    rankings = tmp_path / "r.jsonl"
    rankings.write_text(json.dumps({"prompt": "Hi", "completions": ["a", "b", "c"], "ranking": [2, [0, 1]]}) + "\n")
    assert load_kto_records(unpaired)[0]["label"] is True
    assert "chosen" in load_kto_records(pairs)[0]
    assert len(load_kto_records(rankings)) == 2  # c > a, c > b; a and b tie
    # a first record with 'completion' but no label reads as unpaired, so the error says what is missing
    unlabelled = tmp_path / "n.jsonl"
    unlabelled.write_text(json.dumps({"prompt": "Hi", "completion": "Hello"}) + "\n")
    with pytest.raises(DataError, match=r"n.jsonl:1: label: missing"):
        load_kto_records(unlabelled)


def test_pairs_are_unpaired_chosen_first():
    record, _ = validate_record({"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}, "pair")
    examples = unpair([record])
    assert [(e["label"], e["pair"], e["completion"][0]["content"]) for e in examples] == [
        (True, 0, "Hello"), (False, 0, "Go")]


def test_mismatched_completions_come_from_other_prompts_and_are_seeded():
    # 6 prompts, 2 examples each (a split pair): no example may take its own or its twin's completion
    examples = [{"prompt": f"p{i // 2}", "completion": f"c{i}"} for i in range(12)]
    other = mismatched(examples, seed=3)
    assert all(examples[j]["prompt"] != examples[i]["prompt"] for i, j in enumerate(other))
    assert other == mismatched(examples, seed=3) and other != mismatched(examples, seed=4)
    # one prompt only: nothing better than another example's completion exists, and never the example's own
    same = [{"prompt": "p", "completion": f"c{i}"} for i in range(3)]
    assert all(j != i for i, j in enumerate(mismatched(same, seed=0)))


def test_load_records_knows_the_kind(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "completion": "Hello", "label": "no"}) + "\n")
    with pytest.raises(DataError) as err:
        load_records(path, "unpaired")
    assert str(err.value) == f"{path}:1: label: must be true or false (got 'no')"
