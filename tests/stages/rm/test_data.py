"""Reward-model data: pair/ranking files, bad records named by file:line:field, counted skips and drops."""

from __future__ import annotations

import json
import logging

import pytest

from alignloop.config import load_config
from alignloop.data import tokenize_prompt
from alignloop.errors import DataError
from alignloop.models import TINY_MODEL
from alignloop.stages.rm.data import record_kind, tokenize_preferences, truncate_pair
from alignloop.stages.rm.stage import RMConfig, load_rm_examples

GOOD_PAIR = {"prompt": "Hi?", "chosen": "Hello there, friend.", "rejected": "Go away."}
GOOD_RANKING = {"prompt": "Name a fruit.", "completions": ["Apple.", "A chair.", "Pear."], "ranking": [[0, 2], 1]}


def _write(path, records: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def _config(train: str, *extra: str) -> RMConfig:
    return load_config(RMConfig, None, [f"model={TINY_MODEL}", f"data.train={train}", "data.eval_fraction=0", *extra])


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({**GOOD_PAIR, "rejected": GOOD_PAIR["chosen"]}, "2: rejected: is identical to chosen"),
        ({**GOOD_PAIR, "chosen": ""}, "2: chosen: must be a non-empty string or a list of messages"),
        ({k: v for k, v in GOOD_PAIR.items() if k != "chosen"}, "2: chosen: missing"),
        ({k: v for k, v in GOOD_PAIR.items() if k != "prompt"}, "2: prompt: missing"),
    ],
)
def test_bad_pair_is_a_data_error_naming_file_line_field(tmp_path, tokenizer, record, problem):
    path = _write(tmp_path / "pairs.jsonl", [GOOD_PAIR, record])
    with pytest.raises(DataError) as err:
        load_rm_examples(_config(path), tokenizer)
    assert err.value.problems == [f"{path}:{problem}"]
    assert str(err.value) == f"{path}:{problem}"


def test_ranking_index_out_of_range(tmp_path, tokenizer):
    path = _write(tmp_path / "ranks.jsonl", [{**GOOD_RANKING, "ranking": [0, 5, 1]}])
    with pytest.raises(DataError) as err:
        load_rm_examples(_config(path), tokenizer)
    assert err.value.problems == [f"{path}:1: ranking[1]: index 5 is out of range for 3 completions"]


def test_skipping_invalid_records_is_counted_and_logged(tmp_path, tokenizer, caplog):
    path = _write(tmp_path / "pairs.jsonl", [GOOD_PAIR, {**GOOD_PAIR, "chosen": ""}, "not json", GOOD_PAIR])
    with caplog.at_level(logging.WARNING, logger="alignloop"):
        train, evals, counts = load_rm_examples(_config(path, "data.skip_invalid=true"), tokenizer)
    assert len(train) == 2 and evals == []
    assert counts["skipped_records"] == 2
    assert "skipped 2 invalid record(s)" in caplog.text


def test_pairs_and_rankings_load_together_and_kinds_are_detected(tmp_path, tokenizer):
    pairs = _write(tmp_path / "pairs.jsonl", [GOOD_PAIR])
    ranks = _write(tmp_path / "ranks.jsonl", [GOOD_RANKING])
    assert record_kind(pairs) == "pair" and record_kind(ranks) == "ranking"
    train, _, _ = load_rm_examples(_config(pairs, f"rm.more_train=[{ranks}]"), tokenizer)
    assert [ex.is_pair for ex in train] == [True, False]
    assert train[0].ranking == [[0], [1]] and train[1].ranking == [[0, 2], [1]]
    # one prompt, three completions: the prompt tokens are the same for each
    assert len(train[1].completions) == 3
    other = _write(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(DataError, match=r"sft.jsonl:1: record: neither a preference pair"):
        record_kind(other)


def test_unusable_records_are_dropped_with_a_count(tmp_path, tokenizer, caplog):
    tied = {**GOOD_RANKING, "ranking": [[0, 1, 2]]}
    same_start = {"prompt": "Hi?", "chosen": "Same words here and then A.", "rejected": "Same words here and then B."}
    path = _write(tmp_path / "mixed.jsonl", [GOOD_PAIR, same_start])
    ranks = _write(tmp_path / "ranks.jsonl", [tied, GOOD_RANKING])
    prompt_tokens = len(tokenize_prompt(tokenizer, [{"role": "user", "content": "Hi?"}]))
    # room for 3 completion tokens: "Same words here" is all that is left of both completions of `same_start`
    limits = [f"data.max_length={prompt_tokens + 3}", f"rm.max_prompt_length={prompt_tokens}"]
    records_cfg = _config(path, f"rm.more_train=[{ranks}]", *limits)
    with caplog.at_level(logging.INFO, logger="alignloop"):
        train, _, counts = load_rm_examples(records_cfg, tokenizer)
    assert counts["dropped_records"] == 2 and len(train) == 2
    assert "dropped 1 record(s): every completion is tied" in caplog.text
    assert "dropped 1 record(s): completions ranked apart are identical after truncation" in caplog.text


def test_truncation_rule_by_hand():
    # prompt cut from the left to max_prompt_length, then the completion from the right to fit max_length
    assert truncate_pair([1, 2, 3, 4], [5, 6, 7], 6, 3) == ([2, 3, 4], [5, 6, 7])
    assert truncate_pair([1, 2, 3, 4], [5, 6, 7], 5, None) == ([1, 2, 3, 4], [5])
    assert truncate_pair([1, 2, 3, 4], [5], 3, None) == ([2, 3, 4], [])


def test_criteria_labels_keep_only_plus_and_minus_one(tokenizer):
    record = {**GOOD_PAIR, "_kind": "pair", "criteria": {"helpful": 1, "harmless": 0, "honest": -1}}
    record["prompt"] = [{"role": "user", "content": "Hi?"}]
    record["chosen"] = [{"role": "assistant", "content": "Hello."}]
    record["rejected"] = [{"role": "assistant", "content": "Bye."}]
    examples, report = tokenize_preferences([record], tokenizer, 64, 32, ["helpful", "harmless", "honest"])
    assert examples[0].criteria == {"helpful": 1, "honest": -1} and report.kept == 1


def test_split_by_prompt_keeps_each_prompts_pairs_on_one_side(tmp_path, tokenizer):
    records = [{"prompt": f"Question {q}?", "chosen": f"Good answer {k}.", "rejected": f"Bad {k}."}
               for q in range(8) for k in range(3)]
    path = _write(tmp_path / "pairs.jsonl", records)
    train, evals, _ = load_rm_examples(_config(path, "data.eval_fraction=0.25", "data.split_by=prompt"), tokenizer)
    assert len(evals) == 6 and len(train) == 18  # 2 of 8 prompts, with their 3 pairs each
    assert not {tuple(ex.prompt_ids) for ex in train} & {tuple(ex.prompt_ids) for ex in evals}
    train, evals, _ = load_rm_examples(_config(path, "data.eval_fraction=0.25"), tokenizer)  # per record
    assert {tuple(ex.prompt_ids) for ex in train} & {tuple(ex.prompt_ids) for ex in evals}
