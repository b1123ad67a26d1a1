"""Record loading: formats, normalisation, exact error messages, bundled paths, rankings and splits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from alignloop.data import (
    load_records,
    rankings_to_pairs,
    resolve_data_path,
    split_records,
    validate_record,
)
from alignloop.errors import DataError

USER_HI = [{"role": "user", "content": "hi"}]


def _write_jsonl(path: Path, lines: list) -> str:
    """Write objects as JSON lines (strings are written raw, to plant broken JSON); return the relative path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path.relative_to(Path.cwd()))


def _error(path: str, kind: str, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        load_records(path, kind, **kwargs)
    return str(err.value)


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # error messages name the path as given: "data/x.jsonl"
    return tmp_path / "data"


def test_sft_records_are_normalised_to_messages(data_dir):
    path = _write_jsonl(
        data_dir / "sft.jsonl",
        [
            {"messages": [*USER_HI, {"role": "assistant", "content": "hello"}], "id": 7},
            "",  # blank lines are skipped
            {"prompt": "hi", "completion": "hello", "source": "gold"},
        ],
    )
    records = load_records(path, "sft")
    expected_messages = [*USER_HI, {"role": "assistant", "content": "hello"}]
    assert list(records) == [
        {"messages": expected_messages, "id": 7},
        {"messages": expected_messages, "source": "gold"},
    ]
    assert (records.source, records.skipped) == (path, 0)


def test_pair_ranking_prompt_and_process_records_are_normalised(data_dir):
    pair = {"prompt": "hi", "chosen": "good", "rejected": "bad", "margin": 1.5, "criteria": {"helpful": 1}}
    pairs = load_records(_write_jsonl(data_dir / "p.jsonl", [pair]), "pair")
    assert pairs[0] == {
        "prompt": USER_HI,
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
        "margin": 1.5,
        "criteria": {"helpful": 1},
    }
    ranking = {"prompt": USER_HI, "completions": ["a", "b", "c"], "ranking": [[0, 2], 1]}
    rankings = load_records(_write_jsonl(data_dir / "r.jsonl", [ranking]), "ranking")
    assert rankings[0]["completions"][1] == [{"role": "assistant", "content": "b"}]
    assert rankings[0]["ranking"] == [[0, 2], 1]
    prompts = load_records(_write_jsonl(data_dir / "q.jsonl", [{"prompt": "2+2?", "answer": "4"}]), "prompt")
    assert prompts[0] == {"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"}
    process = {"prompt": "2+2?", "steps": ["2+2", "=4"], "labels": [1, -1]}
    assert load_records(_write_jsonl(data_dir / "s.jsonl", [process]), "process")[0]["labels"] == [1, -1]


def test_every_bad_pair_is_reported_with_file_and_line(data_dir):
    path = _write_jsonl(
        data_dir / "x.jsonl",
        [
            {"prompt": "hi", "chosen": "a", "rejected": "b"},
            '{"prompt": "hi", "chosen": ',
            {"prompt": "hi", "chosen": "", "rejected": "b"},
            {"prompt": "hi", "chosen": "same", "rejected": [{"role": "assistant", "content": "same"}]},
            {"prompt": "hi", "rejected": "b"},
            {"prompt": [{"role": "bot", "content": "x"}], "chosen": 3, "rejected": "b", "margin": "big"},
            [1, 2],
        ],
    )
    assert _error(path, "pair") == (
        "8 problems in the data:\n"
        "  data/x.jsonl:2: invalid JSON: Expecting value (column 28)\n"
        "  data/x.jsonl:3: chosen: must be a non-empty string or a list of messages\n"
        "  data/x.jsonl:4: rejected: is identical to chosen\n"
        "  data/x.jsonl:5: chosen: missing\n"
        "  data/x.jsonl:6: prompt[0].role: must be one of system, user, assistant (got 'bot')\n"
        "  data/x.jsonl:6: chosen: must be a non-empty string or a list of messages\n"
        "  data/x.jsonl:6: margin: must be a number (got string)\n"
        "  data/x.jsonl:7: record: must be a JSON object (got list)"
    )


def test_single_problem_is_one_line(data_dir):
    path = _write_jsonl(data_dir / "x.jsonl", [{"prompt": "hi", "chosen": "a", "rejected": "a"}])
    assert _error(path, "pair") == "data/x.jsonl:1: rejected: is identical to chosen"


def test_bad_sft_records(data_dir):
    path = _write_jsonl(
        data_dir / "s.jsonl",
        [
            {"messages": USER_HI},
            {"messages": [*USER_HI, {"role": "assistant", "content": "  "}]},
            {"prompt": "hi", "completion": ""},
            {"text": "hello"},
            {"messages": [{"content": "hi"}, {"role": "assistant", "content": 5}]},
        ],
    )
    assert _error(path, "sft").splitlines()[1:] == [
        "  data/s.jsonl:1: messages: must contain at least one assistant message",
        "  data/s.jsonl:2: messages[1].content: must be a non-empty string",
        "  data/s.jsonl:3: completion: must be a non-empty string or a list of messages",
        "  data/s.jsonl:4: messages: missing (give 'messages', or 'prompt' and 'completion')",
        "  data/s.jsonl:5: messages[0].role: missing",
        "  data/s.jsonl:5: messages[1].content: must be a string (got int)",
    ]


def test_bad_rankings(data_dir):
    completions = ["a", "b", "c"]
    path = _write_jsonl(
        data_dir / "r.jsonl",
        [
            {"prompt": "q", "completions": completions, "ranking": [0, 3, 1]},
            {"prompt": "q", "completions": completions, "ranking": [0, 0, 1]},
            {"prompt": "q", "completions": completions, "ranking": [[0, 1]]},
            {"prompt": "q", "completions": ["only one"], "ranking": [0]},
            {"prompt": "q", "completions": completions, "ranking": [0, True, 2]},
        ],
    )
    assert _error(path, "ranking").splitlines()[1:] == [
        "  data/r.jsonl:1: ranking[1]: index 3 is out of range for 3 completions",
        "  data/r.jsonl:2: ranking: must rank each of the 3 completions exactly once (0 repeated; 2 missing)",
        "  data/r.jsonl:3: ranking: must rank each of the 3 completions exactly once (2 missing)",
        "  data/r.jsonl:4: completions: must be a list of at least 2 completions",
        "  data/r.jsonl:5: ranking[1]: must be an index or a list of tied indices (got True)",
    ]


def test_bad_process_records(data_dir):
    path = _write_jsonl(
        data_dir / "p.jsonl",
        [
            {"prompt": "q", "steps": ["a", "b"], "labels": [1]},
            {"prompt": "q", "steps": ["a"], "labels": [2]},
            {"prompt": "q", "steps": [], "labels": []},
        ],
    )
    assert _error(path, "process").splitlines()[1:] == [
        "  data/p.jsonl:1: labels: must have one label per step (got 1 labels for 2 steps)",
        "  data/p.jsonl:2: labels[0]: must be 1, 0 or -1 (got 2)",
        "  data/p.jsonl:3: steps: must be a non-empty list of strings",
    ]


def test_max_errors_caps_the_list_but_counts_all(data_dir):
    path = _write_jsonl(data_dir / "y.jsonl", [{"prompt": ""}] * 5)
    assert _error(path, "prompt", max_errors=2) == (
        "5 problems in the data:\n"
        "  data/y.jsonl:1: prompt: must be a non-empty string or a list of messages\n"
        "  data/y.jsonl:2: prompt: must be a non-empty string or a list of messages\n"
        "  ... and 3 more"
    )


def test_skip_invalid_drops_and_counts(data_dir, caplog):
    path = _write_jsonl(data_dir / "x.jsonl", [{"prompt": "ok"}, {"prompt": ""}, "{oops", {"prompt": "fine"}])
    with caplog.at_level(logging.WARNING, logger="alignloop"):
        records = load_records(path, "prompt", skip_invalid=True)
    assert [r["prompt"][0]["content"] for r in records] == ["ok", "fine"]
    assert records.skipped == 2
    assert caplog.messages == [
        "skipped 2 invalid record(s) in data/x.jsonl; the first: "
        "data/x.jsonl:2: prompt: must be a non-empty string or a list of messages"
    ]


def test_skip_invalid_with_nothing_valid_still_fails(data_dir):
    path = _write_jsonl(data_dir / "x.jsonl", [{"prompt": ""}])
    assert _error(path, "prompt", skip_invalid=True) == (
        "data/x.jsonl:1: prompt: must be a non-empty string or a list of messages"
    )


def test_json_array_file(data_dir):
    path = data_dir / "a.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": 5}], indent=2))
    assert _error(str(path.relative_to(data_dir.parent)), "prompt") == (
        "data/a.json:item 2: prompt: must be a non-empty string or a list of messages"
    )


def test_parquet_rows_with_nested_messages_and_nulls(data_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data_dir.mkdir()
    rows = [
        {"prompt": USER_HI, "chosen": "a", "rejected": "b", "margin": 2.0},
        {"prompt": USER_HI, "chosen": "a", "rejected": "a", "margin": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), data_dir / "pairs.parquet")
    assert _error("data/pairs.parquet", "pair") == "data/pairs.parquet:row 2: rejected: is identical to chosen"
    records = load_records("data/pairs.parquet", "pair", skip_invalid=True)
    assert records[0]["margin"] == 2.0 and records[0]["prompt"] == USER_HI


def test_hf_dataset_directory(data_dir):
    import datasets

    dataset = datasets.Dataset.from_list([{"prompt": "hi", "answer": "x"}, {"prompt": "yo", "answer": None}])
    dataset.save_to_disk(str(data_dir / "prompts"))
    records = load_records("data/prompts", "prompt")
    assert list(records) == [
        {"prompt": USER_HI, "answer": "x"},
        {"prompt": [{"role": "user", "content": "yo"}]},  # a null column value counts as absent
    ]
    datasets.DatasetDict({"train": dataset, "test": dataset}).save_to_disk(str(data_dir / "dd"))
    assert _error("data/dd", "prompt") == (
        "data/dd: holds several splits (train, test); point to one split's folder, e.g. data/dd/train"
    )


def test_paths_and_kinds(data_dir):
    assert _error("data/missing.jsonl", "sft") == "data/missing.jsonl: no such file or directory"
    _write_jsonl(data_dir / "x.csv", ["a,b"])
    assert _error("data/x.csv", "sft") == (
        "data/x.csv: unsupported data file type '.csv'; use .jsonl, .json, .parquet or a folder written by "
        "datasets' save_to_disk"
    )
    _write_jsonl(data_dir / "empty.jsonl", [""])
    assert _error("data/empty.jsonl", "sft") == "data/empty.jsonl: no records"
    assert _error("data/empty.jsonl", "dialogue") == (
        "unknown record kind 'dialogue'; expected one of sft, pair, ranking, prompt, process, unpaired"
    )


def test_bundled_paths():
    path = resolve_data_path("bundled:sft_demo_train.jsonl")
    assert path.is_file() and path.parts[-3:] == ("resources", "data", "sft_demo_train.jsonl")
    with pytest.raises(DataError) as err:
        resolve_data_path("bundled:nope.jsonl")
    assert str(err.value).startswith("bundled:nope.jsonl: no such bundled data file (available: ")
    assert "sft_demo_train.jsonl" in str(err.value)


def test_bundled_demo_data_is_valid_and_disjoint():
    train = load_records("bundled:sft_demo_train.jsonl", "sft")
    evaluation = load_records("bundled:sft_demo_eval.jsonl", "sft")
    assert (len(train), len(evaluation)) == (300, 40)

    def first_user_turn(record: dict) -> str:
        return next(m["content"] for m in record["messages"] if m["role"] == "user")

    assert not {first_user_turn(r) for r in train} & {first_user_turn(r) for r in evaluation}
    prompts_train = load_records("bundled:prompts_train.jsonl", "prompt")
    prompts_eval = load_records("bundled:prompts_eval.jsonl", "prompt")
    assert (len(prompts_train), len(prompts_eval)) == (200, 128)
    texts_train = {r["prompt"][0]["content"] for r in prompts_train}
    texts_eval = [r["prompt"][0]["content"] for r in prompts_eval]
    assert len(texts_train) == 200 and len(set(texts_eval)) == 128 and not texts_train & set(texts_eval)
    # the last 64 (added for 96+ prompt evaluations) use topics no training prompt mentions
    train_words = " ".join(texts_train)
    assert not any(topic in train_words for topic in ("a sushi bar", "a robot vacuum", "podcasts", "a snowy weekend"))
    assert sum(topic in " ".join(texts_eval[64:]) for topic in ("a sushi bar", "a robot vacuum", "podcasts")) >= 2


def test_rankings_to_pairs_skips_ties():
    raw = {"prompt": "q", "completions": ["a", "b", "c", "d"], "ranking": [[0, 2], 1, 3]}
    record, _ = validate_record(raw, "ranking")
    record["source"] = "human:7"
    # Groups best first: {0, 2} > {1} > {3}. Pairs: 0>1, 2>1, 0>3, 2>3, 1>3; nothing between the tied 0 and 2.
    pairs = rankings_to_pairs(record)
    texts = [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs]
    assert texts == [("a", "b"), ("c", "b"), ("a", "d"), ("c", "d"), ("b", "d")]
    assert all(p["source"] == "human:7" and p["prompt"] == [{"role": "user", "content": "q"}] for p in pairs)
    assert rankings_to_pairs({"prompt": "q", "completions": ["a", "b"], "ranking": [[0, 1]]}) == []


def test_rankings_to_pairs_on_real_oasst_data():
    records = [*load_records("bundled:oasst-rankings-train.jsonl", "ranking"),
               *load_records("bundled:oasst-rankings-heldout.jsonl", "ranking")]
    # HUMAN_PREFERENCES.md: 212 ranked groups (152 train + 60 held out) that make 754 pairs.
    assert (len(records), sum(len(rankings_to_pairs(r)) for r in records)) == (212, 754)


def test_split_records_is_deterministic_and_disjoint():
    records = [{"i": i} for i in range(10)]
    train, evaluation = split_records(records, 0.3, seed=0)
    assert (len(train), len(evaluation)) == (7, 3)
    assert sorted(r["i"] for r in train + evaluation) == list(range(10))
    assert [r["i"] for r in train] == sorted(r["i"] for r in train)  # original order kept
    assert split_records(records, 0.3, seed=0) == (train, evaluation)
    assert split_records(records, 0.3, seed=1) != (train, evaluation)
    assert len(split_records(records, 0.01, seed=0)[1]) == 1  # a requested eval split is never empty
    with pytest.raises(DataError) as err:
        split_records(records, 1.0, seed=0)
    assert str(err.value) == "eval_fraction: must be in [0, 1) (got 1.0)"
