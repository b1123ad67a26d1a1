"""Malformed configs and command lines: each gets one line naming the file, the line and the key."""

from __future__ import annotations

import pytest

# (id, command, config text (bytes for non-UTF-8), extra argv, expected message with {cfg} for the config's path)
CASES = [
    ("yaml_syntax", "sft", "model: tiny-llama\ntrain:\n  lr: [1\n", [],
     "{cfg}:4: invalid YAML: expected ',' or ']', but got '<stream end>'"),
    ("yaml_tab", "sft", "model: tiny-llama\ntrain:\n\tlr: 1\n", [],
     "{cfg}:3: invalid YAML: found character '\\t' that cannot start any token"),
    ("top_level_list", "sft", "- a\n- b\n", [], "{cfg}: the top level must be a mapping of keys"),
    ("top_level_scalar", "sft", "just text\n", [], "{cfg}: the top level must be a mapping of keys"),
    ("duplicate_key", "sft", "model: tiny-llama\ntrain:\n  lr: 1\n  lr: 2\n", [],
     "{cfg}:4: lr: duplicate key (also on line 3)"),
    ("duplicate_section", "sft", "train:\n  lr: 1\nmodel: tiny-llama\ntrain:\n  lr: 2\n", [],
     "{cfg}:4: train: duplicate key (also on line 1)"),
    ("not_utf8", "sft", b"model: tiny-llama\n# caf\xe9\n", [],
     "{cfg}:2: not UTF-8 text (byte 0xe9); save the config as UTF-8"),
    ("unknown_key_typo", "sft", "model: tiny-llama\ntrain:\n  lrr: 1\n", [],
     "{cfg}:3: train.lrr: unknown key (did you mean 'train.lr'?)"),
    ("other_stage_section", "sft", "model: tiny-llama\ndpo:\n  beta: 0.1\n", [],
     "{cfg}:2: dpo: unknown key (a 'dpo' section: is this a config for `alignloop dpo`, not `sft`?)"),
    ("wrong_type", "sft", "model: tiny-llama\ntrain:\n  lr: fast\n", [],
     "{cfg}:3: train.lr: Input should be a valid number, unable to parse string as a number (got 'fast')"),
    ("negative_lr", "sft", "model: tiny-llama\ntrain:\n  lr: -1\n", [],
     "{cfg}:3: train.lr: Input should be greater than 0 (got -1)"),
    ("max_steps_below_minus_one", "sft", "model: tiny-llama\ntrain:\n  max_steps: -5\n", [],
     "{cfg}:3: train.max_steps: Input should be greater than or equal to -1 (got -5)"),
    ("batch_zero", "sft", "model: tiny-llama\ntrain:\n  batch_size: 0\n", [],
     "{cfg}:3: train.batch_size: Input should be greater than 0 (got 0)"),
    ("epochs_zero", "sft", "model: tiny-llama\ntrain:\n  max_steps: -1\n  epochs: 0\n", [],
     "{cfg}:4: train.epochs: Input should be greater than 0 (got 0)"),
    ("micro_not_dividing", "sft", "model: tiny-llama\ntrain:\n  batch_size: 8\n  micro_batch_size: 3\n", [],
     "{cfg}:2: train: batch_size (8) must be a multiple of micro_batch_size (3)"),
    ("precision_literal", "sft", "model: tiny-llama\ntrain:\n  precision: fp8\n", [],
     "{cfg}:3: train.precision: Input should be 'bf16' or 'fp32' (got 'fp8')"),
    ("lora_rank_zero", "sft", "model: tiny-llama\nlora:\n  r: 0\n", [],
     "{cfg}:3: lora.r: Input should be greater than 0 (got 0)"),
    ("dpo_beta_negative", "dpo", "model: tiny-llama\ndpo:\n  beta: -1\n", [],
     "{cfg}:3: dpo.beta: Input should be greater than 0 (got -1)"),
    ("dpo_loss_type", "dpo", "model: tiny-llama\ndpo:\n  loss_type: nope\n", [],
     "{cfg}:3: dpo.loss_type: Input should be 'sigmoid', 'robust', 'ipo', 'hinge' or 'simpo' (got 'nope')"),
    ("grpo_one_generation", "grpo", "model: tiny-llama\ngrpo:\n  num_generations: 0\n", [],
     "{cfg}:3: grpo.num_generations: Input should be greater than or equal to 2 (got 0)"),
    ("set_without_equals", "sft", "model: tiny-llama\n", ["-s", "train.lr"], "--set train.lr: expected dotted.key=value"),
    ("set_unknown_key", "sft", "model: tiny-llama\n", ["-s", "train.bogus=1"], "--set train.bogus: unknown key"),
    ("set_bad_value", "sft", "model: tiny-llama\n", ["-s", "train.lr=-3"],
     "--set train.lr: Input should be greater than 0 (got -3)"),
    ("unknown_model", "sft", "model: no-such-model\ndata:\n  train: bundled:sft_demo.jsonl\n", [],
     "model 'no-such-model' is neither a bundled model (smollm2-135m-instruct, smolvlm-tiny, tiny-llama) nor a "
     "local directory"),
    ("missing_data_file", "sft", "model: tiny-llama\ndata:\n  train: /nonexistent/x.jsonl\n", [],
     "/nonexistent/x.jsonl: no such file or directory"),
]


@pytest.mark.parametrize("command,text,extra,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_config_gets_one_exact_line(cli_error, tmp_path, command, text, extra, expected):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert cli_error(command, cfg, *extra, "-o", tmp_path / "out") == expected.format(cfg=cfg)


def test_config_is_a_directory(cli_error, tmp_path):
    assert cli_error("sft", tmp_path) == f"{tmp_path}: is a directory, not a config file (give a .yaml file)"


def test_config_file_missing(cli_error, tmp_path):
    assert cli_error("sft", tmp_path / "nope.yaml") == f"{tmp_path}/nope.yaml: config file not found"


def test_help_shows_no_type_after_flags():
    from typer.testing import CliRunner

    from alignloop.cli import app

    result = CliRunner().invoke(app, ["sft", "--help"], terminal_width=100)
    assert result.exit_code == 0
    assert "<bool>" not in result.output and "<list[str]>" not in result.output
    assert "KEY=VALUE" in result.output
