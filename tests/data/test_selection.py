"""A part of a data file chosen in its path (``FILE[START:END]``, ``FILE[K/N]``), and SFT on pair records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignloop.data import load_records, resolve_data_path
from alignloop.data.selection import part_of
from alignloop.errors import DataError


def _pairs(n: int, questions: int | None = None) -> list[dict]:
    """``n`` pairs; with ``questions``, record i opens with question i % questions (shared openings)."""
    return [{"prompt": [{"role": "user", "content": f"question {i % (questions or n)}"},
                        {"role": "assistant", "content": "ok"}, {"role": "user", "content": f"turn {i}"}],
             "chosen": f"good {i}", "rejected": f"bad {i}", "id": i} for i in range(n)]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # messages name the path as given
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def _write(path: Path, lines: list) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path.relative_to(Path.cwd()))


def _ids(path: str, kind: str = "pair") -> list[int]:
    return [r["id"] for r in load_records(path, kind)]


def test_a_range_keeps_those_record_positions_and_blank_lines_do_not_count(data_dir):
    path = _write(data_dir / "p.jsonl", _pairs(3)[:1] + [""] + _pairs(10)[1:])
    assert _ids(f"{path}[0:4]") == [0, 1, 2, 3]
    assert _ids(f"{path}[:2]") == [0, 1] and _ids(f"{path}[8:]") == [8, 9]
    assert _ids(f"{path}[0:10]") == list(range(10))
    records = load_records(f"{path}[2:5]", "pair")
    assert records.source == f"{path}[2:5]"
    assert resolve_data_path(f"{path}[2:5]") == Path(path)


def test_parts_are_disjoint_cover_the_file_and_keep_a_question_together(data_dir):
    path = _write(data_dir / "p.jsonl", _pairs(60, questions=25))
    parts = [_ids(f"{path}[{k}/3]") for k in (1, 2, 3)]
    assert sorted(sum(parts, [])) == list(range(60))  # every record in exactly one part, file order kept
    assert all(part == sorted(part) and part for part in parts)
    for part in parts:  # records opening with the same question are never split across parts
        questions = {i % 25 for i in part}
        assert not any(i % 25 in questions for other in parts if other is not part for i in other)
    assert parts == [_ids(f"{path}[{k}/3]") for k in (1, 2, 3)]  # deterministic


def test_part_follows_the_first_user_message_of_a_prompt_or_a_conversation():
    pair = {"prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hello"}]}
    sft = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]}
    assert part_of(pair, 7) == part_of(sft, 7) == part_of({"prompt": "hello"}, 7)
    assert {part_of({"prompt": f"q{i}"}, 2) for i in range(20)} == {1, 2}


def test_errors_in_a_selection_name_the_real_file_and_line(data_dir):
    path = _write(data_dir / "p.jsonl", [*_pairs(2), {"prompt": "hi", "chosen": "a"}, *_pairs(2)])
    with pytest.raises(DataError) as err:
        load_records(f"{path}[1:4]", "pair")
    assert str(err.value) == f"{path}:3: rejected: missing"
    assert _ids(f"{path}[3:]") == [0, 1]  # the bad record is outside this selection


@pytest.mark.parametrize("selector,message", [
    ("[0:99]", "{p}[0:99]: the file holds 4 records; [0:99] reaches past its end"),
    ("[4:]", "{p}[4:]: the file holds 4 records; [4:4] reaches past its end"),
    ("[3:3]", "{p}[3:3]: the selection [3:3] is empty (expected [START:END] (record positions, 0-based, END "
              "excluded) or [K/N] (part K of N, grouped by prompt))"),
    ("[0/2]", "{p}[0/2]: [0/2]: K/N needs N >= 2 and 1 <= K <= N"),
    ("[1/1]", "{p}[1/1]: [1/1]: K/N needs N >= 2 and 1 <= K <= N"),
    ("[half]", "{p}[half]: [half]: not a record selection; expected [START:END] (record positions, 0-based, END "
               "excluded) or [K/N] (part K of N, grouped by prompt)"),
])
def test_bad_selections_are_clear_errors(data_dir, selector, message):
    path = _write(data_dir / "p.jsonl", _pairs(4))
    with pytest.raises(DataError) as err:
        load_records(path + selector, "pair")
    assert str(err.value) == message.format(p=path)


def test_a_file_whose_name_ends_in_a_bracket_is_read_whole(data_dir):
    path = _write(data_dir / "p[0:1].jsonl", _pairs(3))
    assert _ids(path) == [0, 1, 2]
    assert _ids("data/p[0:1].jsonl[1:]") == [1, 2]


def test_bundled_files_take_a_selection_and_the_hh_halves_share_no_question():
    first, second = load_records("bundled:hh-harmless-train.jsonl[1/2]", "pair"), \
        load_records("bundled:hh-harmless-train.jsonl[2/2]", "pair")
    assert (len(first), len(second)) == (449, 455)  # the sizes docs/data-formats.md gives

    def opening(record):
        return next(m["content"] for m in record["prompt"] if m["role"] == "user")

    assert not {opening(r) for r in first} & {opening(r) for r in second}
    assert len(load_records("bundled:hh-harmless-train.jsonl[0:100]", "pair")) == 100


def test_sft_reads_pair_records_as_prompt_plus_chosen(data_dir):
    path = _write(data_dir / "p.jsonl", [
        {"prompt": "hi", "chosen": "hello!", "rejected": "go away", "source": "human:1"},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
         "rejected": "b"},
    ])
    records = load_records(path, "sft")
    assert list(records) == [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
         "source": "human:1"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    ]


def test_sft_on_a_pair_with_a_bad_chosen_names_the_field(data_dir):
    path = _write(data_dir / "p.jsonl", [{"prompt": "hi", "chosen": "", "rejected": "x"}])
    with pytest.raises(DataError) as err:
        load_records(path, "sft")
    assert str(err.value) == f"{path}:1: chosen: must be a non-empty string or a list of messages"
