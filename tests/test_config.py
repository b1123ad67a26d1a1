"""Configs: YAML + --set overrides, and one friendly line per problem naming the file and the key."""

from __future__ import annotations

import pytest

from alignloop.config import SFTConfig, load_config
from alignloop.errors import ConfigError


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_are_laptop_sized():
    cfg = SFTConfig()
    assert cfg.model == "smollm2-135m-instruct"
    assert cfg.train.precision == "bf16" and cfg.train.batch_size <= 16
    assert cfg.data.train.startswith("bundled:")


def test_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "model: tiny-llama\ntrain:\n  lr: 0.001\n  max_steps: 5\nlora:\n  r: 4\n")
    cfg = load_config(SFTConfig, p, ["train.lr=3e-4", "sft.packing=false", "lora.target_modules=[q_proj,v_proj]"])
    assert cfg.model == "tiny-llama"
    assert cfg.train.lr == 3e-4 and cfg.train.max_steps == 5
    assert cfg.sft.packing is False
    assert cfg.lora.r == 4 and cfg.lora.target_modules == ["q_proj", "v_proj"]


def test_unknown_key_names_file_and_suggests(tmp_path):
    p = write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, p)
    assert str(e.value) == f"{p}:2: train.lrr: unknown key (did you mean 'train.lr'?)"


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, "train:\n  max_steps: lots\n")
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, p)
    assert str(e.value) == (
        f"{p}:2: train.max_steps: Input should be a valid integer, unable to parse string as an integer (got 'lots')"
    )


def test_all_problems_reported_at_once(tmp_path):
    p = write(tmp_path, "train:\n  lr: -1\n  batch_size: 6\n  micro_batch_size: 4\nbogus: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, p)
    lines = str(e.value).splitlines()
    assert f"{p}:5: bogus: unknown key" in lines
    assert f"{p}:2: train.lr: Input should be greater than 0 (got -1)" in lines


def test_cross_field_check(tmp_path):
    p = write(tmp_path, "train:\n  batch_size: 6\n  micro_batch_size: 4\n")
    with pytest.raises(ConfigError, match=r"train: batch_size \(6\) must be a multiple of micro_batch_size \(4\)"):
        load_config(SFTConfig, p)


def test_bad_yaml_names_line(tmp_path):
    p = write(tmp_path, "train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"^{p}:\d+: invalid YAML"):
        load_config(SFTConfig, p)


def test_missing_file():
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(SFTConfig, "nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="--set train.lr: expected dotted.key=value"):
        load_config(SFTConfig, None, ["train.lr"])
