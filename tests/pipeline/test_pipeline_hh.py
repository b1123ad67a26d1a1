"""The real-data pipeline (examples/pipeline-hh.yaml) and what it relies on: a stage's own `set:` overrides, held-out
accuracy with its interval in the run report, and a proxy gold trained on pairs the policy side never saw."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alignloop.data import load_records
from alignloop.errors import ConfigError
from alignloop.pipeline.runner import _stage_figures, resolved_configs, wilson_interval
from alignloop.pipeline.spec import load_pipeline

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pipeline-hh.yaml"


def _write(tmp_path: Path, stages: list[dict]) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"model": "tiny-llama", "train": {"max_steps": 7, "lr": 0.1}}))
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "stages": stages}))
    return path


def test_a_stage_reuses_a_yaml_with_its_own_set_and_the_command_line_wins(tmp_path):
    path = _write(tmp_path, [{"name": "a", "stage": "sft", "config": "base.yaml", "set": ["train.max_steps=3"]},
                             {"name": "b", "stage": "sft", "config": "base.yaml",
                              "set": ["model=${a}", "data.train=x.jsonl[1/2]"]}])
    configs = {entry.name: cfg for entry, cfg in resolved_configs(load_pipeline(path, out=tmp_path / "run"))}
    assert configs["a"].train.max_steps == 3 and configs["a"].train.lr == 0.1
    assert configs["b"].model == str(tmp_path / "run" / "a") and configs["b"].data.train == "x.jsonl[1/2]"
    assert configs["b"].train.max_steps == 7
    # a --set on the command line (or in a variant) is applied after the stage's own set
    again = load_pipeline(path, ["a.train.max_steps=5", "b.train.lr=0.2"], out=tmp_path / "run")
    configs = {entry.name: cfg for entry, cfg in resolved_configs(again)}
    assert configs["a"].train.max_steps == 5 and configs["b"].train.lr == 0.2
    assert configs["b"].data.train == "x.jsonl[1/2]"


def test_a_bad_stage_set_names_the_stage(tmp_path):
    path = _write(tmp_path, [{"name": "a", "stage": "sft", "config": "base.yaml", "set": "train.max_steps=3"}])
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert str(err.value) == f"{path}: stages[0].set: expected a list of 'dotted.key=value' strings"
    path = _write(tmp_path, [{"name": "a", "stage": "sft", "config": "base.yaml", "set": ["train.max_steps"]}])
    with pytest.raises(ConfigError, match=r"stages\[0\].set: --set train.max_steps: expected dotted.key=value"):
        load_pipeline(path)


def test_wilson_interval_matches_the_textbook_value():
    assert wilson_interval(60, 100) == pytest.approx([0.5020, 0.6906], abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)


def test_dpo_summary_gives_heldout_implicit_reward_accuracy_with_an_interval():
    figures = _stage_figures({"steps": 113, "eval/rewards/accuracies": 0.6, "eval_pairs": 400,
                              "rewards/accuracies": 0.75})
    assert figures["heldout_accuracy"] == 0.6 and figures["heldout_pairs"] == 400
    assert figures["heldout_accuracy_ci95"] == pytest.approx(wilson_interval(240, 400))
    rm = _stage_figures({"eval_accuracy": 0.65, "eval_records": 400})
    assert rm["heldout_accuracy_ci95"] == pytest.approx(wilson_interval(260, 400))


def _records(path: str | list[str]) -> list[dict]:
    return list(load_records(path, "pair"))


def _opening(record: dict) -> str:
    return next(m["content"] for m in record["prompt"] if m["role"] == "user")


def test_the_hh_pipeline_keeps_its_proxy_gold_apart_from_everything_the_policy_learned_from():
    configs = {entry.name: cfg for entry, cfg in resolved_configs(load_pipeline(EXAMPLE, out="/tmp/unused"))}
    assert list(configs) == ["sft", "rm", "gold_rm", "dpo", "ppo", "eval"]
    evaluation = configs["eval"].eval
    assert evaluation.gold == "/tmp/unused/gold_rm"
    assert evaluation.gold_label == "proxy gold (RM trained on disjoint pairs)"
    assert configs["eval"].reward == "/tmp/unused/rm"
    gold_pairs = _records(configs["gold_rm"].data.train)
    gold_openings = {_opening(r) for r in gold_pairs}
    policy_side = {name: configs[name].data.train for name in ("sft", "rm", "dpo", "ppo")}
    for name, path in policy_side.items():  # no pair, and no opening question, is on both sides
        assert not {_opening(r) for r in _records(path)} & gold_openings, name
    heldout = {_opening(r) for r in _records(configs["eval"].data.eval)}
    assert not heldout & gold_openings and not heldout & {_opening(r) for r in _records(policy_side["rm"])}
    assert configs["rm"].data.eval == configs["gold_rm"].data.eval == "bundled:hh-harmless-heldout.jsonl"
    assert configs["gold_rm"].model == "smollm2-135m-instruct"  # not the SFT model, which saw the policy's data
