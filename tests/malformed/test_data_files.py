"""Malformed data files: every one is refused with the exact message naming the file, line and field.

Checked at load (``load_records``), which is what every stage calls before it touches a model."""

from __future__ import annotations


import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from alignloop.data.records import load_records
from alignloop.errors import DataError

CASES = [
    ('sft_empty_file', 'sft', 'd.jsonl',
     '',
     '{d}/d.jsonl: no records'),
    ('sft_blank_lines', 'sft', 'd.jsonl',
     '\n\n  \n',
     '{d}/d.jsonl: no records'),
    ('sft_bad_json', 'sft', 'd.jsonl',
     '{"messages": [\n',
     '{d}/d.jsonl:1: invalid JSON: Expecting value (column 15)'),
    ('sft_not_object', 'sft', 'd.jsonl',
     '[1, 2]\n',
     '{d}/d.jsonl:1: record: must be a JSON object (got list)'),
    ('sft_missing_messages', 'sft', 'd.jsonl',
     '{"text": "hi"}\n',
     "{d}/d.jsonl:1: messages: missing (give 'messages', or 'prompt' and 'completion')"),
    ('sft_messages_not_list', 'sft', 'd.jsonl',
     '{"messages": "hi"}\n',
     '{d}/d.jsonl:1: messages: must be a non-empty list of messages'),
    ('sft_messages_empty', 'sft', 'd.jsonl',
     '{"messages": []}\n',
     '{d}/d.jsonl:1: messages: must be a non-empty list of messages'),
    ('sft_message_not_object', 'sft', 'd.jsonl',
     '{"messages": ["hi"]}\n',
     "{d}/d.jsonl:1: messages[0]: must be an object with 'role' and 'content' (got string)"),
    ('sft_bad_role', 'sft', 'd.jsonl',
     '{"messages": [{"role": "bot", "content": "hi"}]}\n',
     "{d}/d.jsonl:1: messages[0].role: must be one of system, user, assistant (got 'bot')"),
    ('sft_missing_role', 'sft', 'd.jsonl',
     '{"messages": [{"content": "hi"}]}\n',
     '{d}/d.jsonl:1: messages[0].role: missing'),
    ('sft_missing_content', 'sft', 'd.jsonl',
     '{"messages": [{"role": "user"}]}\n',
     '{d}/d.jsonl:1: messages[0].content: missing'),
    ('sft_content_number', 'sft', 'd.jsonl',
     '{"messages": [{"role": "user", "content": 3}]}\n',
     '{d}/d.jsonl:1: messages[0].content: must be a string (got int)'),
    ('sft_no_assistant', 'sft', 'd.jsonl',
     '{"messages": [{"role": "user", "content": "hi"}]}\n',
     '{d}/d.jsonl:1: messages: must contain at least one assistant message'),
    ('sft_empty_assistant', 'sft', 'd.jsonl',
     '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}\n',
     '{d}/d.jsonl:1: messages[1].content: must be a non-empty string'),
    ('sft_second_line_bad', 'sft', 'd.jsonl',
     '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"messages": [{"role": "user", "content": "hi"}]}\n',
     '{d}/d.jsonl:2: messages: must contain at least one assistant message'),
    ('sft_nan', 'sft', 'd.jsonl',
     '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "weight": NaN}\n',
     '{d}/d.jsonl:1: invalid JSON: NaN is not a valid number (JSON has no NaN or Infinity)'),
    ('sft_infinity', 'sft', 'd.jsonl',
     '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "weight": Infinity}\n',
     '{d}/d.jsonl:1: invalid JSON: Infinity is not a valid number (JSON has no NaN or Infinity)'),
    ('sft_overflow', 'sft', 'd.jsonl',
     '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "weight": 1e999}\n',
     '{d}/d.jsonl:1: invalid JSON: 1e999 overflows to infinity'),
    ('sft_latin1', 'sft', 'd.jsonl',
     b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n',
     '{d}/d.jsonl:1: not UTF-8 text (byte 0xe9); save the file as UTF-8'),
    ('sft_latin1_line3', 'sft', 'd.jsonl',
     b'\n\n{"messages": [{"role": "user", "content": "caf\xe9"}]}\n',
     '{d}/d.jsonl:3: not UTF-8 text (byte 0xe9); save the file as UTF-8'),
    ('sft_json_array_bad_item', 'sft', 'd.json',
     '[{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, {"messages": 1}]',
     '{d}/d.json:item 2: messages: must be a non-empty list of messages'),
    ('sft_json_array_broken', 'sft', 'd.json',
     '[{"messages": ]',
     '{d}/d.json:1: invalid JSON: Expecting value (column 15)'),
    ('sft_unsupported_ext', 'sft', 'd.csv',
     'a,b\n',
     "{d}/d.csv: unsupported data file type '.csv'; use .jsonl, .json, .parquet or a folder written by datasets' save_to_disk"),
    ('sft_no_ext', 'sft', 'data',
     'x\n',
     "{d}/data: unsupported data file type '(none)'; use .jsonl, .json, .parquet or a folder written by datasets' save_to_disk"),
    ('pair_missing_prompt', 'pair', 'd.jsonl',
     '{"chosen": "a", "rejected": "b"}\n',
     '{d}/d.jsonl:1: prompt: missing'),
    ('pair_missing_chosen', 'pair', 'd.jsonl',
     '{"prompt": "p", "rejected": "b"}\n',
     '{d}/d.jsonl:1: chosen: missing'),
    ('pair_missing_rejected', 'pair', 'd.jsonl',
     '{"prompt": "p", "chosen": "a"}\n',
     '{d}/d.jsonl:1: rejected: missing'),
    ('pair_empty_prompt', 'pair', 'd.jsonl',
     '{"prompt": "", "chosen": "a", "rejected": "b"}\n',
     '{d}/d.jsonl:1: prompt: must be a non-empty string or a list of messages'),
    ('pair_chosen_number', 'pair', 'd.jsonl',
     '{"prompt": "p", "chosen": 1, "rejected": "b"}\n',
     '{d}/d.jsonl:1: chosen: must be a non-empty string or a list of messages'),
    ('pair_rejected_null', 'pair', 'd.jsonl',
     '{"prompt": "p", "chosen": "a", "rejected": null}\n',
     '{d}/d.jsonl:1: rejected: must be a non-empty string or a list of messages'),
    ('pair_identical', 'pair', 'd.jsonl',
     '{"prompt": "p", "chosen": "a", "rejected": "a"}\n',
     '{d}/d.jsonl:1: rejected: is identical to chosen'),
    ('pair_chosen_user_role', 'pair', 'd.jsonl',
     '{"prompt": "p", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}\n',
     "{d}/d.jsonl:1: chosen[0].role: must be 'assistant' in a completion (got 'user')"),
    ('pair_margin_string', 'pair', 'd.jsonl',
     '{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}\n',
     '{d}/d.jsonl:1: margin: must be a number (got string)'),
    ('pair_margin_nan', 'pair', 'd.jsonl',
     '{"prompt": "p", "chosen": "a", "rejected": "b", "margin": NaN}\n',
     '{d}/d.jsonl:1: invalid JSON: NaN is not a valid number (JSON has no NaN or Infinity)'),
    ('pair_margin_neg_inf', 'pair', 'd.jsonl',
     '{"prompt": "p", "chosen": "a", "rejected": "b", "margin": -Infinity}\n',
     '{d}/d.jsonl:1: invalid JSON: -Infinity is not a valid number (JSON has no NaN or Infinity)'),
    ('pair_prompt_list_empty', 'pair', 'd.jsonl',
     '{"prompt": [], "chosen": "a", "rejected": "b"}\n',
     '{d}/d.jsonl:1: prompt: must be a non-empty string or a list of messages'),
    ('ranking_one_response', 'ranking', 'd.jsonl',
     '{"prompt": "p", "completions": ["a"], "ranking": [0]}\n',
     '{d}/d.jsonl:1: completions: must be a list of at least 2 completions'),
    ('ranking_missing_ranking', 'ranking', 'd.jsonl',
     '{"prompt": "p", "completions": ["a", "b"]}\n',
     '{d}/d.jsonl:1: ranking: missing'),
    ('ranking_bad_index', 'ranking', 'd.jsonl',
     '{"prompt": "p", "completions": ["a", "b"], "ranking": [0, 5]}\n',
     '{d}/d.jsonl:1: ranking[1]: index 5 is out of range for 2 completions'),
    ('ranking_duplicate_index', 'ranking', 'd.jsonl',
     '{"prompt": "p", "completions": ["a", "b"], "ranking": [0, 0]}\n',
     '{d}/d.jsonl:1: ranking: must rank each of the 2 completions exactly once (0 repeated; 1 missing)'),
    ('ranking_bool_index', 'ranking', 'd.jsonl',
     '{"prompt": "p", "completions": ["a", "b"], "ranking": [true, 0]}\n',
     '{d}/d.jsonl:1: ranking[0]: must be an index or a list of tied indices (got True)'),
    ('ranking_responses_not_list', 'ranking', 'd.jsonl',
     '{"prompt": "p", "completions": "a", "ranking": [0]}\n',
     '{d}/d.jsonl:1: completions: must be a list of at least 2 completions'),
    ('prompt_missing', 'prompt', 'd.jsonl',
     '{"answer": "4"}\n',
     '{d}/d.jsonl:1: prompt: missing'),
    ('prompt_number', 'prompt', 'd.jsonl',
     '{"prompt": 4}\n',
     '{d}/d.jsonl:1: prompt: must be a non-empty string or a list of messages'),
    ('prompt_nan_field', 'prompt', 'd.jsonl',
     '{"prompt": "p", "target": NaN}\n',
     '{d}/d.jsonl:1: invalid JSON: NaN is not a valid number (JSON has no NaN or Infinity)'),
    ('process_missing_steps', 'process', 'd.jsonl',
     '{"prompt": "p"}\n',
     '2 problems in the data:\n  {d}/d.jsonl:1: steps: missing\n  {d}/d.jsonl:1: labels: missing'),
    ('process_bad_label', 'process', 'd.jsonl',
     '{"prompt": "p", "steps": ["a", "b"], "labels": [1, 7]}\n',
     '{d}/d.jsonl:1: labels[1]: must be 1, 0 or -1 (got 7)'),
    ('process_label_count', 'process', 'd.jsonl',
     '{"prompt": "p", "steps": ["a", "b"], "labels": [1]}\n',
     '{d}/d.jsonl:1: labels: must have one label per step (got 1 labels for 2 steps)'),
    ('image_missing_file', 'prompt', 'd.jsonl',
     '{"prompt": [{"role": "user", "content": "<image>what?"}], "images": ["nope.png"]}\n',
     "{d}/d.jsonl:1: images[0]: no such file '{d}/nope.png'"),
    ('image_count_mismatch', 'prompt', 'd.jsonl',
     '{"prompt": [{"role": "user", "content": "<image><image>what?"}], "images": ["x.png"]}\n',
     '{d}/d.jsonl:1: images: 1 image(s) but 2 <image> placeholder(s) in prompt'),
    ('image_not_list', 'prompt', 'd.jsonl',
     '{"prompt": [{"role": "user", "content": "<image>what?"}], "images": "x.png"}\n',
     '{d}/d.jsonl:1: images: must be a list of image paths or base64 strings'),
    ('image_unreadable', 'prompt', 'd.jsonl',
     '{"prompt": [{"role": "user", "content": "<image>what?"}], "images": ["bad.png"]}\n',
     "{d}/d.jsonl:1: images[0]: cannot read the image '{d}/bad.png': not an image file PIL can open"),
    ('image_bad_base64', 'prompt', 'd.jsonl',
     '{"prompt": [{"role": "user", "content": "<image>what?"}], "images": ["data:image/png;base64,!!!"]}\n',
     "{d}/d.jsonl:1: images[0]: cannot read the image 'data:image/png;base64,!!!': not an image file PIL can open"),
    ('image_in_response', 'sft', 'd.jsonl',
     '{"messages": [{"role": "user", "content": "<image>a"}, {"role": "assistant", "content": "<image>b"}], "images": ["x.png"]}\n',
     '{d}/d.jsonl:1: images: 1 image(s) but 2 <image> placeholder(s) in messages'),
]


@pytest.mark.parametrize("kind,name,content,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_record_file_is_refused_with_one_exact_message(tmp_path, kind, name, content, expected):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as err:
        load_records(path, kind)
    assert str(err.value) == expected.format(d=tmp_path)


def _table(**columns):
    import pyarrow as pa

    return pa.table(columns)


def _parquet(rows=None, raw=None):
    def write(path):
        path = path.with_suffix(".parquet")
        if raw is not None:
            path.write_bytes(raw)
        else:
            pq.write_table(_table(**rows), path)
        return path
    return write


def _dataset(records=None, splits=None, junk=False):
    def write(path):
        if junk:
            path.mkdir()
            (path / "x.txt").write_text("x")
        elif splits:
            datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path))
        else:
            datasets.Dataset.from_list(records).save_to_disk(str(path))
        return path
    return write


NAN, INF = float("nan"), float("inf")
COLUMNAR_CASES = [
    ("parquet_corrupt", "pair", _parquet(raw=b"PAR1garbage"),
     "{p}: not a readable Parquet file (Could not open Parquet input source '{p}': Parquet magic bytes not found in "
     "footer. Either the file is corrupted or this is not a parquet file.)"),
    ("parquet_empty_file", "pair", _parquet(raw=b""),
     "{p}: not a readable Parquet file (Could not open Parquet input source '{p}': Parquet file size is 0 bytes)"),
    ("parquet_nan_margin", "pair", _parquet({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"], "margin": [NAN]}),
     "{p}:row 1: margin: NaN or infinite number"),
    ("parquet_inf_margin", "pair", _parquet({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"], "margin": [INF]}),
     "{p}:row 1: margin: NaN or infinite number"),
    ("parquet_null_chosen", "pair", _parquet({"prompt": ["p", "q"], "chosen": ["a", None], "rejected": ["b", "c"]}),
     "{p}:row 2: chosen: missing"),
    ("parquet_int_prompt", "pair", _parquet({"prompt": [1], "chosen": ["a"], "rejected": ["b"]}),
     "{p}:row 1: prompt: must be a non-empty string or a list of messages"),
    ("parquet_no_messages_column", "sft", _parquet({"text": ["x"]}),
     "{p}:row 1: messages: missing (give 'messages', or 'prompt' and 'completion')"),
    ("parquet_no_rows", "prompt", _parquet({"prompt": []}), "{p}: no records"),
    ("dataset_dict_not_a_split", "prompt", _dataset(splits={"train": [{"prompt": "p"}], "test": [{"prompt": "q"}]}),
     "{p}: holds several splits (train, test); point to one split's folder, e.g. {p}/train"),
    ("folder_not_a_dataset", "prompt", _dataset(junk=True),
     "{p}: not a dataset saved with datasets' save_to_disk (Directory {p} is neither a `Dataset` directory nor a "
     "`DatasetDict` directory.)"),
    ("dataset_missing_rejected", "pair", _dataset([{"prompt": "p", "chosen": "a"}]), "{p}:row 1: rejected: missing"),
    ("dataset_nan_margin", "pair", _dataset([{"prompt": "p", "chosen": "a", "rejected": "b", "margin": NAN}]),
     "{p}:row 1: margin: NaN or infinite number"),
]


@pytest.mark.parametrize("kind,write,expected", [c[1:] for c in COLUMNAR_CASES], ids=[c[0] for c in COLUMNAR_CASES])
def test_malformed_parquet_or_dataset_is_refused_with_one_exact_message(tmp_path, kind, write, expected):
    path = write(tmp_path / "data")
    with pytest.raises(DataError) as err:
        load_records(path, kind)
    assert str(err.value) == expected.format(p=path)
