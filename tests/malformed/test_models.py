"""Malformed model folders: one exact line that names the folder or file, never a transformers traceback."""

from __future__ import annotations

import json

import pytest

from alignloop.errors import ModelError
from alignloop.models import load_causal_lm
from alignloop.models.loading import load_tokenizer

CONFIG = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_attention_heads": 2,
          "num_hidden_layers": 1, "intermediate_size": 8}
BUNDLED = "smollm2-135m-instruct, smolvlm-tiny, tiny-llama"


def _folder(root, name, files):
    folder = root / name
    folder.mkdir()
    for file, content in files.items():
        (folder / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


CASES = [
    # (id, files in the folder, loader, expected message with {f} for the folder)
    ("empty_folder", {}, "model",
     "directory '{f}' holds no model: expected config.json, adapter_config.json, alignloop_head.json or a model/ "
     "folder"),
    ("broken_config_json_model", {"config.json": "{not json"}, "model",
     "{f}/config.json:1: invalid JSON: Expecting property name enclosed in double quotes (column 2)"),
    ("broken_config_json_tokenizer", {"config.json": "{not json"}, "tokenizer",
     "{f}/config.json:1: invalid JSON: Expecting property name enclosed in double quotes (column 2)"),
    ("config_json_not_utf8", {"config.json": b"{\"a\": \"\xe9\"}"}, "model", "{f}/config.json: not UTF-8 text"),
    ("no_weights", {"config.json": json.dumps(CONFIG)}, "model",
     "cannot load a causal LM from '{f}': Error no file named model.safetensors, or pytorch_model.bin, found in "
     "directory {f}."),
    ("no_tokenizer", {"config.json": json.dumps(CONFIG)}, "tokenizer",
     "'{f}' has no tokenizer (tokenizer.json or tokenizer_config.json): save the tokenizer with the model "
     "(tokenizer.save_pretrained)"),
    ("corrupt_safetensors", {"config.json": json.dumps(CONFIG), "model.safetensors": b"garbage"}, "model",
     "cannot load a causal LM from '{f}': a weights file is corrupt (Error while deserializing header: header too "
     "small)"),
    ("adapter_base_missing", {"adapter_config.json": json.dumps({"base_model_name_or_path": "/nonexistent/base",
                                                                 "peft_type": "LORA"})}, "model",
     "{f}: the adapter's base model: model '/nonexistent/base' is neither a bundled model (" + BUNDLED + ") nor a "
     "local directory"),
    ("adapter_base_missing_tokenizer", {"adapter_config.json": json.dumps(
        {"base_model_name_or_path": "/nonexistent/base", "peft_type": "LORA"})}, "tokenizer",
     "{f}: the adapter's base model: model '/nonexistent/base' is neither a bundled model (" + BUNDLED + ") nor a "
     "local directory"),
    ("adapter_without_base", {"adapter_config.json": json.dumps({"peft_type": "LORA"})}, "model",
     "{f}: LoRA adapter without a base model (no base_model_name_or_path)"),
]


@pytest.mark.parametrize("files,loader,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_model_folder_is_one_exact_line(tmp_path, files, loader, expected):
    folder = _folder(tmp_path, "m", files)
    with pytest.raises(ModelError) as err:
        (load_causal_lm if loader == "model" else load_tokenizer)(str(folder))
    assert str(err.value) == expected.format(f=folder)


def test_a_file_given_as_the_model(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_text("x")
    with pytest.raises(ModelError) as err:
        load_causal_lm(str(path))
    assert str(err.value) == f"model '{path}' is neither a bundled model ({BUNDLED}) nor a local directory"


def test_cli_broken_config_json_names_the_file_not_the_tokenizer(cli_error, tmp_path):
    folder = _folder(tmp_path, "m", {"config.json": "{not json"})
    message = cli_error("sft", "examples/sft.yaml", "-s", f"model={folder}", "-o", tmp_path / "out")
    assert message == f"{folder}/config.json:1: invalid JSON: Expecting property name enclosed in double quotes (column 2)"
