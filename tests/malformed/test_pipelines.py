"""Malformed pipeline files and overrides (`alignloop run`): one exact line naming the file and the stage."""

from __future__ import annotations

import pytest

from alignloop.stages.registry import STAGES as REGISTERED

STAGES = ", ".join(sorted(REGISTERED))
OK = "name: x\nstages:\n  - {name: a, stage: sft, config: {model: tiny-llama}}\n"
CASES = [
    ("no_stages", "name: x\n", [], "{p}: stages: expected a non-empty list of {{name, stage, config}}"),
    ("stages_not_a_list", "name: x\nstages: 3\n", [],
     "{p}: stages: expected a non-empty list of {{name, stage, config}}"),
    ("stage_not_a_mapping", "name: x\nstages:\n  - sft\n", [],
     "{p}: stages[0]: expected a mapping with name, stage and config"),
    ("unknown_stage_key", "name: x\nstages:\n  - {name: a, stage: sft, config: {}, bogus: 1}\n", [],
     "{p}: stages[0]: unknown keys ['bogus']; allowed: config, estimate_seconds, name, set, stage"),
    ("unknown_stage", "name: x\nstages:\n  - {name: a, stage: nope, config: {}}\n", [],
     "{p}: stages[0].stage: unknown stage 'nope'; known: " + STAGES),
    ("duplicate_stage_name",
     "name: x\nstages:\n  - {name: a, stage: sft, config: {}}\n  - {name: a, stage: sft, config: {}}\n", [],
     "{p}: stages[1].name: stage 'a' appears twice"),
    ("folder_name_escapes", "name: x\nstages:\n  - {name: ../a, stage: sft, config: {}}\n", [],
     "{p}: stages[0].name: '../a' is not a valid stage folder name"),
    ("forward_reference",
     "name: x\nstages:\n  - {name: a, stage: sft, config: {model: '${b}'}}\n  - {name: b, stage: sft, config: {}}\n",
     [], "{p}: stages[0] (a).config.model: ${{b}} names no earlier stage (available: run)"),
    ("config_not_a_mapping", "name: x\nstages:\n  - {name: a, stage: sft, config: 3}\n", [],
     "{p}: stages[0].config: expected a mapping or a path to a YAML file, got int"),
    ("config_file_missing", "name: x\nstages:\n  - {name: a, stage: sft, config: nope.yaml}\n", [],
     "{p}: stages[0].config: {d}/nope.yaml: config file not found"),
    ("defaults_not_a_mapping", "name: x\ndefaults: 3\nstages:\n  - {name: a, stage: sft, config: {}}\n", [],
     "{p}: defaults: expected a mapping"),
    ("stage_config_unknown_key", "name: x\nstages:\n  - {name: a, stage: sft, config: {train: {lrr: 1}}}\n", [],
     "{p}: stages[0] (a).config: train.lrr: unknown key (did you mean 'train.lr'?)"),
    ("duplicate_top_key", "name: x\nname: y\nstages:\n  - {name: a, stage: sft, config: {}}\n", [],
     "{p}:2: name: duplicate key (also on line 1)"),
    ("set_unknown_stage", OK, ["-s", "nostage.train.lr=1"], "--set nostage.train.lr=1: no stage named 'nostage'; stages: a"),
    ("set_without_stage", OK, ["-s", "badformat"], "--set badformat: expected STAGE.dotted.key=value (or defaults.key=value)"),
    ("set_unknown_key", OK, ["-s", "a.train.lrr=1"],
     "{p}: stages[0] (a).config: train.lrr: unknown key (did you mean 'train.lr'?)"),
]


@pytest.mark.parametrize("text,extra,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_pipeline_gets_one_exact_line(cli_error, tmp_path, text, extra, expected):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    message = cli_error("run", path, *extra, "-o", tmp_path / "out")
    assert message == expected.format(p=path, d=tmp_path)
