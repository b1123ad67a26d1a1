"""Pipeline YAML parsing (references, defaults, overrides, variants, errors) and the runner's bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alignloop.errors import ConfigError
from alignloop.pipeline.runner import human_seconds, resolved_configs, stage_status
from alignloop.pipeline.spec import (
    apply_variant,
    load_pipeline,
    merge_defaults,
    parse_pipeline,
    resolve_references,
)

TINY = {
    "name": "tiny",
    "defaults": {"model": "tiny-llama", "lora": {"r": 4, "alpha": 8}, "train": {"seed": 3}},
    "stages": [
        {"name": "sft", "stage": "sft", "config": {"train": {"max_steps": 2}}},
        {"name": "prefs", "stage": "collect", "config": {"model": "${sft}", "collect": {"n_prompts": 4}}},
        {"name": "eval", "stage": "eval", "config": {"model": "${sft}", "eval": {"policies": {"again": "${sft}/model"}}}},
    ],
    "variants": {"small": {"set": ["sft.train.max_steps=1"], "estimates": {"sft": 5}}},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_references_defaults_and_out(tmp_path):
    pipe = load_pipeline(write(tmp_path, TINY))
    assert pipe.out == Path("runs/tiny") and [s.name for s in pipe.stages] == ["sft", "prefs", "eval"]
    pipe = load_pipeline(write(tmp_path, TINY), out=tmp_path / "run")
    configs = dict((entry.name, cfg) for entry, cfg in resolved_configs(pipe))
    assert configs["sft"].model == "tiny-llama" and configs["sft"].train.seed == 3
    assert configs["sft"].train.max_steps == 2 and configs["sft"].lora.r == 4
    assert configs["prefs"].model == str(tmp_path / "run" / "sft")
    assert configs["eval"].eval.policies["again"] == str(tmp_path / "run" / "sft" / "model")
    assert configs["sft"].out is None  # the pipeline, not the stage config, decides the folder


def test_overrides_and_variants(tmp_path):
    path = write(tmp_path, TINY)
    pipe = load_pipeline(path, ["sft.train.lr=0.5", "defaults.train.seed=9"], out=tmp_path)
    configs = dict((entry.name, cfg) for entry, cfg in resolved_configs(pipe))
    assert configs["sft"].train.lr == 0.5 and configs["sft"].train.seed == 9
    small = load_pipeline(path, variant="small", out=tmp_path)
    assert small.stages[0].config["train"]["max_steps"] == 1 and small.stages[0].estimate_seconds == 5
    with pytest.raises(ConfigError, match=r"--set nope.x=1: no stage named 'nope'; stages: sft, prefs, eval"):
        load_pipeline(path, ["nope.x=1"])
    with pytest.raises(ConfigError, match=r"pipe.yaml: no variant 'huge'; known: small"):
        apply_variant(TINY, "huge", "pipe.yaml")


def test_pipeline_errors_name_the_key(tmp_path):
    bad_ref = {**TINY, "stages": [{"name": "a", "stage": "collect", "config": {"model": "${later}"}},
                                  {"name": "later", "stage": "sft"}]}
    with pytest.raises(ConfigError, match=r"stages\[0\] \(a\).config.model: \$\{later\} names no earlier stage \(available: run\)"):
        resolved_configs(parse_pipeline(bad_ref, "p.yaml"))
    twice = {"stages": [{"stage": "sft"}, {"stage": "sft"}]}
    with pytest.raises(ConfigError, match=r"p.yaml: stages\[1\].name: stage 'sft' appears twice"):
        parse_pipeline(twice, "p.yaml")
    with pytest.raises(ConfigError, match=r"p.yaml: stages\[0\]: unknown keys \['confg'\]"):
        parse_pipeline({"stages": [{"stage": "sft", "confg": {}}]}, "p.yaml")
    typo = {"stages": [{"stage": "sft", "config": {"train": {"max_step": 3}}}]}
    with pytest.raises(ConfigError, match=r"stages\[\d\] \(sft\).config: train.max_step: unknown key \(did you mean 'train.max_steps'\?\)"):
        resolved_configs(parse_pipeline(typo, "p.yaml"))
    with pytest.raises(Exception, match="unknown stage 'sfft'"):
        resolved_configs(parse_pipeline({"stages": [{"stage": "sfft"}]}, "p.yaml"))


def test_merge_defaults_keeps_only_accepted_keys_and_stage_wins():
    merged = merge_defaults({"model": "m", "lora": {"r": 4}, "train": {"seed": 1, "lr": 1.0}},
                            {"train": {"lr": 2.0}}, accepted={"model", "train"})
    assert merged == {"model": "m", "train": {"seed": 1, "lr": 2.0}}
    assert resolve_references({"a": ["${x}/f", 3]}, {"x": Path("/r/x")}, "w") == {"a": ["/r/x/f", 3]}


def test_stage_status(tmp_path):
    assert stage_status(tmp_path / "missing") == "new"
    (tmp_path / "s").mkdir()
    assert stage_status(tmp_path / "s") == "new"
    (tmp_path / "s" / "config.yaml").write_text("x: 1")
    assert stage_status(tmp_path / "s") == "partial"
    (tmp_path / "s" / "summary.json").write_text("{}")
    assert stage_status(tmp_path / "s") == "finished"
    assert human_seconds(42) == "42 s" and human_seconds(150) == "2.5 min" and human_seconds(None) == "?"


def test_example_files_validate():
    from alignloop.config import load_config
    from alignloop.stages.evaluate.stage import EvalConfig

    pipe = load_pipeline("examples/pipeline.yaml")
    kinds = [entry.stage for entry, _ in resolved_configs(pipe)]
    assert kinds == ["sft", "collect", "rm", "dpo", "eval"]
    cfg = load_config(EvalConfig, "examples/eval.yaml")
    assert cfg.eval.best_of_n == [4, 16] and cfg.eval.policies["ppo"].checkpoints
