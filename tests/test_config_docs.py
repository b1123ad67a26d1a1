"""docs/configuration.md is generated from the pydantic models; this fails when it drifts."""

from pathlib import Path

from alignloop.config_docs import config_reference
from alignloop.stages.registry import STAGES, stage_classes


def test_configuration_reference_is_current():
    expected = config_reference({name: stage_classes(name)[0] for name in STAGES})
    doc = Path(__file__).parent.parent / "docs" / "configuration.md"
    assert doc.read_text() == expected, "regenerate: python -m alignloop.config_docs > docs/configuration.md"


def test_every_stage_config_has_laptop_defaults():
    for name in STAGES:
        cfg_cls = stage_classes(name)[0]
        cfg = cfg_cls()  # defaults must validate without any YAML
        assert cfg.train.batch_size <= 64, name
