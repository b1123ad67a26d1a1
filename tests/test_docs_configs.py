"""Every shipped example config and every config block in docs/ validates with the stage it is written for.

The examples and docs are what users paste; a renamed or removed option must fail here, not in their hands.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from alignloop.config import load_config
from alignloop.stages.registry import STAGES, stage_classes

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# an example whose stage is not its file name
EXAMPLE_STAGE = {"rsft": "sft", "vlm-sft": "sft", "vlm-grpo": "grpo", "vlm-dpo": "dpo", "dpo-online": "dpo", "dpo-bon": "dpo", "grpo-tools": "grpo", "vlm-rm": "rm", "rm-oasst": "rm", "vlm-bon": "bon"}
# docs/<page>: the stage each ```yaml block is for, in order (None: not a stage config, checked elsewhere)
DOC_BLOCKS = {
    "constitutional-ai.md": ["constitution-file"],
    "distributed.md": ["ppo"],
    "kto.md": ["kto"],
    "dpo.md": ["dpo"],
    "multi-objective.md": ["ppo", "ppo"],
    "orpo.md": ["orpo"],
    "pipeline.md": ["pipeline"],
    "ppo.md": ["ppo", "ppo"],
    "reward-models.md": ["rm", "rm"],
    "rewards.md": [None, None],  # reward entries inside a stage section (tests/rewards/test_base.py)
    "sft.md": ["sft"],
    "tools.md": ["grpo"],
}


def _validate(kind: str, path: Path) -> None:
    if kind == "pipeline":
        from alignloop.pipeline.spec import load_pipeline

        load_pipeline(str(path))
    elif kind == "constitution-file":
        from alignloop.stages.constitution import load_constitution

        assert load_constitution(str(path))
    else:
        load_config(stage_classes(kind)[0], path, [])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_validate(path):
    stem = path.stem
    kind = "pipeline" if stem.startswith("pipeline") else EXAMPLE_STAGE.get(stem, stem)
    assert kind == "pipeline" or kind in STAGES, f"{path.name}: which stage is it for? (add it to EXAMPLE_STAGE)"
    _validate(kind, path)


def _doc_blocks(page: str) -> list[str]:
    return re.findall(r"```ya?ml\n(.*?)```", (ROOT / "docs" / page).read_text(), re.S)


def test_every_doc_with_yaml_is_listed():
    pages = {p.name for p in (ROOT / "docs").glob("*.md") if _doc_blocks(p.name)}
    assert pages == set(DOC_BLOCKS), "a docs page gained or lost ```yaml blocks: update DOC_BLOCKS"
    for page, kinds in DOC_BLOCKS.items():
        assert len(_doc_blocks(page)) == len(kinds), page


@pytest.mark.parametrize("page,index", [(p, i) for p, kinds in DOC_BLOCKS.items() for i, k in enumerate(kinds) if k])
def test_doc_config_blocks_validate(page, index, tmp_path):
    if DOC_BLOCKS[page][index] == "pipeline":  # its stage files are relative to it, as beside examples/
        for example in EXAMPLES:
            (tmp_path / example.name).write_text(example.read_text())
    path = tmp_path / f"{Path(page).stem}-{index}.yaml"
    path.write_text(_doc_blocks(page)[index])
    _validate(DOC_BLOCKS[page][index], path)
