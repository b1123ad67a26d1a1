"""The modules that moved keep working at their old paths for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "alignloop"
FILES = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}
SHIMS = sorted(name for name, path in FILES.items() if "Deprecated re-export" in path.read_text()[:400])


def test_every_moved_module_has_a_short_shim():
    assert len(SHIMS) >= 28  # 27 moved modules and train.registry
    for name in SHIMS:
        assert len(Path(FILES[name]).read_text().splitlines()) < 20, name


@pytest.mark.parametrize("old", SHIMS)
def test_old_path_imports_the_new_module_and_warns(old):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and old in str(w.message) for w in caught)
    if old != "alignloop.train.registry":
        assert module.__name__ != old  # the old name is the new module itself
    assert module is sys.modules[old]


def test_names_users_import_still_resolve():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from alignloop.train.ppo import PPOConfig, PPOStage
        from alignloop.train.registry import run_stage
        from alignloop.train.sft import SFTStage
    from alignloop.pipeline.launch import run_stage as new_run_stage
    from alignloop.stages.rl.ppo import PPOConfig as NewPPOConfig
    from alignloop.stages.rl.stage import RLStage
    from alignloop.stages.sft import SFTStage as NewSFTStage

    assert (SFTStage, PPOConfig, run_stage) == (NewSFTStage, NewPPOConfig, new_run_stage)
    assert PPOStage is RLStage
