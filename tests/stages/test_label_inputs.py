"""load_label_inputs reads every input kind the label stage takes; record selections apply to all of them."""

from __future__ import annotations

import json

import pytest

from alignloop.errors import DataError
from alignloop.stages.label import load_label_inputs


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _unranked(k):
    return {"prompt": f"question {k}", "completions": [f"a{k}", f"b{k}", f"c{k}"]}


def test_unranked_completions_honour_a_record_selection(tmp_path):
    path = _write(tmp_path / "unranked.jsonl", [_unranked(k) for k in range(20)])
    whole = load_label_inputs(str(path))
    assert len(whole) == 20 * 3 and all(p["reference"] is None for p in whole)
    some = load_label_inputs(f"{path}[1:3]")
    assert len(some) == 2 * 3
    assert sorted({p["a"][-1]["content"] for p in some}) == ["a1", "a2", "b1", "b2"]
    parts = [load_label_inputs(f"{path}[{k}/2]") for k in (1, 2)]
    assert sum(len(p) for p in parts) == len(whole)
    prompts = [{p["prompt"][0]["content"] for p in part} for part in parts]
    assert prompts[0] and prompts[1] and not prompts[0] & prompts[1]


def test_unranked_errors_name_the_file_and_line_also_inside_a_selection(tmp_path):
    path = tmp_path / "unranked.jsonl"
    path.write_text(json.dumps(_unranked(0)) + "\n{not json\n" + json.dumps(_unranked(2)) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"unranked\.jsonl:2: invalid JSON"):
        load_label_inputs(f"{path}[0:2]")
    assert len(load_label_inputs(f"{path}[2:3]")) == 3
    with pytest.raises(DataError, match=r"holds 3 records"):
        load_label_inputs(f"{path}[0:9]")
